"""The inference endpoints as plain ASGI callables, in front of FastAPI.

`POST /predict`, `POST /v1/models/{name}:predict` and `POST /v2/models/{name}[/versions/{v}]/infer`
are matched here by their path and answered without Starlette's Request, routing,
exception middleware or response objects, which cost most of a small prediction's
event-loop time (bench/README.md). Everything else, and every other method on these
paths, goes on to FastAPI, which also keeps documenting these routes in /openapi.json.

A route here answers exactly what it answered as a FastAPI route: the same matching
(a path parameter is one non-empty segment, as Starlette's `{name}`), the same error
bodies (http_io.problem_answer, the mapping app.py uses too) and the same metrics
(counted here, as MetricsMiddleware counts every other request).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from starlette.types import Receive, Scope, Send

from .errors import RuntimeProblem
from .http_io import Answer, Call, problem_answer, unexpected_answer
from .metrics import TIMED_OUT_KEY, TIMED_OUT_STATUS, RuntimeMetrics

log = logging.getLogger("modelfleet.app")

Handler = Callable[[Call], Awaitable[Answer]]

PREDICT = "/predict"
V1_PREDICT = "/v1/models/{name}:predict"
V2_INFER = "/v2/models/{name}/infer"
V2_VERSION_INFER = "/v2/models/{name}/versions/{version}/infer"
_V1_PREFIX, _V1_SUFFIX = "/v1/models/", ":predict"
_V2_PREFIX = "/v2/models/"


def route_path(scope: Scope) -> str:
    """The path routes match against: the request path without the app's root_path (as Starlette's)."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    if path == root:
        return ""
    return path[len(root) :] if path[len(root)] == "/" else path


def match(path: str) -> tuple[str, dict[str, str]] | None:
    """(route template, path parameters) of an inference path, None for any other path."""
    if path == PREDICT:
        return PREDICT, {}
    if path.startswith(_V2_PREFIX):
        parts = path[len(_V2_PREFIX) :].split("/")
        if len(parts) == 2 and parts[1] == "infer" and parts[0]:
            return V2_INFER, {"name": parts[0]}
        if len(parts) == 4 and parts[1] == "versions" and parts[3] == "infer" and parts[0] and parts[2]:
            return V2_VERSION_INFER, {"name": parts[0], "version": parts[2]}
        return None
    if path.startswith(_V1_PREFIX) and path.endswith(_V1_SUFFIX):
        name = path[len(_V1_PREFIX) : -len(_V1_SUFFIX)]
        if name and "/" not in name:
            return V1_PREDICT, {"name": name}
    return None


def _headers(answer: Answer) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"content-length", str(len(answer.body)).encode()),
        (b"content-type", answer.media_type.encode()),
    ]
    headers += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers]
    return headers


class InferenceRoutes:
    """Answers the inference POSTs: `find` says whether a request is one, `serve` answers it."""

    def __init__(self, metrics: RuntimeMetrics, handlers: dict[str, Handler]) -> None:
        self.metrics = metrics
        self.handlers = handlers

    @staticmethod
    def find(scope: Scope) -> tuple[str, dict[str, str]] | None:
        if scope["type"] == "http" and scope["method"] == "POST":
            return match(route_path(scope))
        return None

    async def serve(self, endpoint: str, params: dict[str, str], scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        metrics = self.metrics
        metrics.in_flight.inc()
        status, rejected = 500, None
        try:
            try:
                answer = await self.handlers[endpoint](Call(scope, receive, params))
            except RuntimeProblem as problem:
                answer, rejected = problem_answer(problem), problem.rejected
            except Exception as exc:
                log.error("unexpected error on %s %s", scope["method"], scope["path"], exc_info=exc)
                answer = unexpected_answer(exc)
            status = answer.status
            await send({"type": "http.response.start", "status": status, "headers": _headers(answer)})
            await send({"type": "http.response.body", "body": answer.body})
        finally:
            metrics.in_flight.dec()
            if TIMED_OUT_KEY in scope:  # the connection answered 408 itself, whatever the handler then tried
                status = TIMED_OUT_STATUS
            metrics.observe_request(endpoint, status, time.perf_counter() - started, True)
            if rejected is not None:
                metrics.observe_rejection(endpoint, rejected)
