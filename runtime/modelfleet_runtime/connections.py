"""HTTP connections within bounds: header and body deadlines, a header size cap, a concurrency cap.

uvicorn's httptools protocol (uvicorn 0.30 to 0.54 alike) has a keep-alive
timeout, armed only once a response is complete, and nothing else: a
connection that never sends a byte, a request head sent one byte at a time and
a body that trickles in are all kept open for as long as the client likes, and
the request line and headers are buffered without a size limit. Its
`limit_concurrency` answers a plain-text 503 that no metric counts.

`DeadlineHttpProtocol` is that protocol with the missing bounds:

- the request line and headers must arrive within `header_timeout` of the
  connection opening, or of the first byte of a later request on a kept-alive
  connection (between requests the keep-alive timeout applies, as before);
  when it expires a partial head gets `408` and the connection is closed, an
  idle new connection is just closed;
- a request's body must arrive within `body_timeout` of its head: past it the
  request is answered `408` (when no answer has started), the application sees
  the client as gone, and the connection is closed;
- a head larger than `max_header_bytes` gets `431` and the connection closed;
- over `limit_concurrency` (uvicorn's: open connections or running requests of
  this worker), the request is answered by `OverCapacity`: a JSON 503 with
  Retry-After and `connection: close`, counted in the metrics as a rejection.

No timer is set for a request whose head and body arrive in one read (the usual
small prediction): deadlines are armed only when a read leaves a head or a
body unfinished, so the hot path pays a few attribute checks per read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
import uvicorn
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from .metrics import INFERENCE_PATHS, TIMED_OUT_KEY, RuntimeMetrics

HEADER, BODY = "header", "body"
# After a refusal the connection is half-closed and what the client still sends is read and dropped
# for this long: closing at once with unread bytes would make the kernel reset the connection,
# and a reset can discard the answer before the client reads it.
LINGER_SECONDS = 2.0


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_header_bytes: int = 64 * 1024
    keep_alive_timeout: int = 5
    limit_concurrency: int = 1024


class OverCapacity:
    """The answer to a request over the concurrency cap: 503 JSON with Retry-After, counted as a rejection."""

    def __init__(self, routes: Sequence[BaseRoute], metrics: RuntimeMetrics, limit: int) -> None:
        self.routes = routes
        self.metrics = metrics
        self.body = orjson.dumps(
            {"error": f"this server is at its limit of {limit} concurrent connections and requests; retry shortly"}
        )

    def _endpoint(self, scope: Scope) -> str:
        # Only refused requests pay for this lookup; the label stays a route template.
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return str(getattr(route, "path", "unmatched"))
        return "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self.body)).encode()),
            (b"retry-after", b"1"),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})
        endpoint = self._endpoint(scope)
        self.metrics.observe_request(endpoint, 503, 0.0, endpoint in INFERENCE_PATHS)
        self.metrics.observe_rejection(endpoint, "concurrency")


class RuntimeConfig(uvicorn.Config):
    """uvicorn's Config with the runtime's connection bounds and its protocol."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        limits: ConnectionLimits,
        over_capacity: ASGIApp,
        on_timeout: Callable[[str], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(
            app,
            http=DeadlineHttpProtocol,
            # No route speaks WebSocket: an Upgrade request is plain HTTP here, bounded like any other.
            ws="none",
            timeout_keep_alive=limits.keep_alive_timeout,
            limit_concurrency=limits.limit_concurrency,
            **kwargs,
        )
        self.limits = limits
        self.over_capacity = over_capacity
        self.on_timeout = on_timeout


def _refusal(status: int, phrase: str, message: str, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    body = orjson.dumps({"error": message})
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, phrase.encode())]
    for name, value in default_headers:
        parts += [name, b": ", value, b"\r\n"]
    parts += [b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body), body]
    return b"".join(parts)


class DeadlineHttpProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        if not isinstance(config, RuntimeConfig):
            raise TypeError("DeadlineHttpProtocol needs a RuntimeConfig")
        self.limits = config.limits
        self._over_capacity = config.over_capacity
        self._on_timeout = config.on_timeout
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_phase = HEADER
        self._reading_head = False  # a request's first bytes arrived, its head is not complete
        self._head_bytes = 0
        self._body_pending = False  # a request's head is complete, its body is not
        self._lingering = False  # refused: what still arrives is dropped until the connection closes

    # -- deadlines ---------------------------------------------------------------------------------

    def _arm(self, phase: str) -> None:
        seconds = self.limits.header_timeout if phase == HEADER else self.limits.body_timeout
        self._deadline_phase = phase
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        phase = self._deadline_phase
        self._on_timeout(phase)
        limit = self.limits.header_timeout if phase == HEADER else self.limits.body_timeout
        if phase == HEADER:
            if self._reading_head:
                self._refuse(408, "Request Timeout", f"the request head did not arrive within {limit:g}s")
            else:
                self.transport.close()  # it never sent a byte: nothing to answer
            return
        cycle: RequestResponseCycle | None = self.cycle
        if cycle is not None:
            cast("dict[str, Any]", cycle.scope)[TIMED_OUT_KEY] = phase
            answered = cycle.response_started
            cycle.disconnected = True  # the application sees the client as gone
            cycle.message_event.set()
            if not answered:
                self._refuse(
                    408, "Request Timeout", f"the request body did not arrive within {limit:g}s of its headers"
                )
                return
        self.transport.close()

    def _refuse(self, status: int, phrase: str, message: str) -> None:
        """Answer `status` with a JSON error, then close without losing the answer to a reset (LINGER_SECONDS)."""
        self._disarm()
        self.transport.write(_refusal(status, phrase, message, self.server_state.default_headers))
        self._lingering = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._deadline = self.loop.call_later(LINGER_SECONDS, self.transport.close)

    # -- uvicorn's protocol, with the deadlines --------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(HEADER)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        super().data_received(data)
        if self._reading_head:
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                limit = self.limits.max_header_bytes
                self._refuse(431, "Request Header Fields Too Large", f"the request head exceeds {limit} bytes")
            elif self._deadline is None or self._deadline_phase == BODY:  # a pipelined request began
                self._disarm()
                self._arm(HEADER)
        elif self._body_pending:
            if self._deadline is None:
                self._arm(BODY)
        elif self._deadline is not None and self._deadline_phase == BODY:
            self._disarm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._disarm()
        super().on_headers_complete()
        self._body_pending = True

    def on_message_complete(self) -> None:
        self._body_pending = False
        super().on_message_complete()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        if app is service_unavailable:  # uvicorn's concurrency cap picked its plain-text answer
            app = self._over_capacity
            cycle.keep_alive = False
        super()._start_asgi_task(cycle, app)


__all__ = ["ConnectionLimits", "DeadlineHttpProtocol", "OverCapacity", "RuntimeConfig"]
