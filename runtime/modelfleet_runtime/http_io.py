"""Reading request bodies within limits, writing JSON answers, checking bearer tokens.

Shared by the protocol modules so that every endpoint bounds its input the
same way (DESIGN.md section 9): the size is checked before the body is read,
and JSON is parsed only from a body within the limit.

A large body (`large-body-bytes` and more) is parsed in a process of its own
(`ParsingProcess`): JSON parsers hold the GIL for a whole body, so a thread
would still stop the event loop for as long; the other process hands back
numpy arrays, which cross in one copy. Large bodies are parsed one at a time,
so the Python objects of at most one of them exist at once. The parsers bound
nesting themselves (orjson at 1024 levels, pydantic's JSON parser lower); the
endpoints check row counts before they build arrays.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, TypeVar

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from .errors import ClientGone, InvalidInput, PayloadTooLarge, Unauthorized, Unavailable
from .inputs import parse_json_object
from .metrics import RuntimeMetrics

log = logging.getLogger("modelfleet.http")

JSON = "application/json"
# The response header naming the model version that answered (and, in gateway routing, the
# request header that pins a version).
VERSION_HEADER = "x-model-version"


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused past `limit` bytes; ClientGone (499) when the client leaves midway."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidInput("Content-Length is not a number") from None
        if size > limit:
            raise PayloadTooLarge(f"request body is {size} bytes; the limit is {limit}")
    try:
        if declared is not None:
            return await request.body()
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    except ClientDisconnect:
        raise client_gone(request) from None


def client_gone(request: Request) -> ClientGone:
    """The 499 for a client that left before its request was read, logged in one line (no traceback)."""
    client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
    log.info(
        "%s closed the connection before sending the whole body of %s %s", client, request.method, request.url.path
    )
    return ClientGone("the client closed the connection before sending the whole request body")


T = TypeVar("T")


class ParsingProcess:
    """Runs `parse(body)` for large bodies in one child process, in arrival order.

    The child is started on the first large body (spawned: it imports only what the
    parse function needs, never the model) and started again if it dies; the body
    that was being parsed then gets a 503. `parse` must be a module-level function
    (or a functools.partial of one) and return something picklable.
    """

    def __init__(self, metrics: RuntimeMetrics) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self.waiting = 0
        # Counted up and down, not read at scrape time: a pod's workers add up their files.
        self._waiting = metrics.gauge(
            "modelfleet_large_bodies_parsing",
            "Large request bodies queued for or being parsed in the parsing process",
            "livesum",
        )
        self._parsed = metrics.counter("modelfleet_large_bodies", "Large request bodies handed to the parsing process")

    async def run(self, parse: Callable[[bytes], T], body: bytes) -> T:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        pool = self._pool
        self._parsed.inc()
        self.waiting += 1
        self._waiting.inc()
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, parse, body)
        except BrokenProcessPool:
            log.error("the parsing process died (out of memory?); starting another for the next large body")
            if self._pool is pool:
                self._pool = None
            raise Unavailable("the server could not parse this request body now; retry") from None
        finally:
            self.waiting -= 1
            self._waiting.dec()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def parsing_process(request: Request) -> ParsingProcess:
    """The app's ParsingProcess, for bodies of `large-body-bytes` and more.

    Callers compare the size themselves, so that a small body costs no extra await.
    """
    parsing = request.app.state.parsing
    assert isinstance(parsing, ParsingProcess), "create_app puts the ParsingProcess in app.state"
    return parsing


async def read_json_object_and_body(request: Request, limit: int) -> tuple[dict[str, Any], bytes]:
    body = await read_body(request, limit)
    return parse_json_object(body), body


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    return (await read_json_object_and_body(request, limit))[0]


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status, headers=headers, media_type=JSON
    )


class TokenFile:
    """A bearer token kept in a file, read again when the file changes (a rotated Secret).

    The file is looked at (one stat) at most once every `recheck_seconds`. A Secret
    volume swaps its files atomically, so a change is a new file; should the new file
    be empty or unreadable, the previous token stays in force and the log says so.
    """

    def __init__(self, path: str, recheck_seconds: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._recheck = recheck_seconds
        self._clock = clock
        self._stamp = self._stat()
        token = self._read()
        if token is None:
            raise ValueError(f"token file {path} is empty or unreadable")
        self._token = token
        self._checked = clock()

    @property
    def token(self) -> str:
        now = self._clock()
        if now - self._checked >= self._recheck:
            self._checked = now
            self._refresh()
        return self._token

    def _stat(self) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)

    def _read(self) -> str | None:
        try:
            return Path(self.path).read_text().strip() or None
        except OSError:
            return None

    def _refresh(self) -> None:
        stamp = self._stat()
        if stamp == self._stamp:
            return
        token = self._read()
        if token is None:
            log.warning("token file %s changed but is empty or unreadable; the previous token stays", self.path)
            return
        self._stamp = stamp
        if token != self._token:
            self._token = token
            log.info("token file %s changed; the new token is in force", self.path)


def read_token(path: str) -> TokenFile | None:
    """The token file at `path` (read again when it changes), or None when no path is configured."""
    return TokenFile(path) if path else None


def require_bearer(request: Request, token: TokenFile | None) -> None:
    if token is None:
        return
    supplied = request.headers.get("authorization", "")
    scheme, _, value = supplied.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.token.encode()):
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
