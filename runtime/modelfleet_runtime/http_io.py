"""Reading request bodies within limits, writing JSON answers, checking bearer tokens.

Shared by the protocol modules so that every endpoint bounds its input the
same way (DESIGN.md section 9): the size is checked before the body is read,
and JSON is parsed only from a body within the limit.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .errors import InvalidInput, PayloadTooLarge, Unauthorized

JSON = "application/json"
# The response header naming the model version that answered (and, in gateway routing, the
# request header that pins a version).
VERSION_HEADER = "x-model-version"


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidInput("Content-Length is not a number") from None
        if size > limit:
            raise PayloadTooLarge(f"request body is {size} bytes; the limit is {limit}")
        return await request.body()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    if not body:
        raise InvalidInput("empty request body: send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        hint = " (NaN and Infinity are not valid JSON numbers)" if b"NaN" in body or b"Infinity" in body else ""
        raise InvalidInput(f"malformed JSON: {exc}{hint}") from None


async def read_json_object_and_body(request: Request, limit: int) -> tuple[dict[str, Any], bytes]:
    body = await read_body(request, limit)
    payload = parse_json(body)
    if not isinstance(payload, dict):
        raise InvalidInput(f"the body must be a JSON object, got {type(payload).__name__}")
    return payload, body


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    return (await read_json_object_and_body(request, limit))[0]


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status, headers=headers, media_type=JSON
    )


def read_token(path: str) -> str | None:
    """The token in `path`, or None when no path is configured."""
    if not path:
        return None
    token = Path(path).read_text().strip()
    if not token:
        raise ValueError(f"token file {path} is empty")
    return token


def require_bearer(request: Request, token: str | None) -> None:
    if token is None:
        return
    supplied = request.headers.get("authorization", "")
    scheme, _, value = supplied.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
        raise Unauthorized("missing or wrong bearer token: send 'Authorization: Bearer <token>'")


class PlainRoute(Route):
    """A Starlette route that names itself in the scope, as FastAPI's routes do, for the metrics' labels.

    The hot endpoints (predict, infer) take only the Request, so they are served by a plain route
    placed ahead of their FastAPI route: FastAPI's per-request dependency machinery cost about a
    quarter of a small prediction's event-loop time (bench/README.md). The FastAPI route stays
    for the OpenAPI schema.
    """

    async def handle(self, scope: Any, receive: Any, send: Any) -> None:
        scope["route"] = self
        await super().handle(scope, receive, send)
