"""Prometheus metrics and the seed's /stats numbers of one process, fed from one ASGI middleware.

Every server owns its own CollectorRegistry, so several apps in one process
(tests, benchmarks) never share counters. The request, latency, queue, batch
and model series carry the labels `model` and `version` (fixed per process, so
the cardinality stays that of the endpoints and codes), as Triton's and
KServe's do; the registry also carries the standard `process_*` and
`python_info` collectors.

Answers are counted by endpoint and code in `modelfleet_requests_total`. The
503s of backpressure (a full queue, the concurrency cap) are in it too, and
also in `modelfleet_requests_rejected_total{reason}`, so that an error rate
(the operator's canary analysis) can leave out the answers that say "busy,
retry" rather than "broken". Connections closed by their header or body
deadline are counted in `modelfleet_connections_timed_out_total{phase}`.

With several workers (runner.py, pod.py) each worker's values live in files
of the pod's folder (prometheus-client's multiprocess mode): the gauges say how
the workers' values add up (`multiprocess_mode`), and `LatencyWindow` keeps the
/stats numbers in a file that the other workers read.
"""

from __future__ import annotations

import mmap
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .batching import BatchRecord

# The *_created series double the output and no dashboard reads them.
disable_created_metrics()

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
SERIES_LABELS = ("model", "version")
# Keys an inner layer sets in the ASGI scope for the middleware: why a request was refused
# (errors.RuntimeProblem.rejected), or which deadline cut it off (connections.py).
REJECTED_KEY = "modelfleet.rejected"
TIMED_OUT_KEY = "modelfleet.timed_out"
TIMED_OUT_STATUS = 408
# The pod-wide series the multiprocess files cannot sum (pod.py computes them instead).
READY_METRIC = "modelfleet_model_ready"


class LatencyWindow:
    """The seed's /stats numbers of one process: counts and a ring of recent latencies, in one flat buffer.

    Anonymous memory for a lone process; a file in the pod's folder for a worker, so that any
    worker can read every worker's window (a restarted worker reopens its file and goes on
    counting). A float64 slot is written whole, so a reader never sees half a number.
    """

    COUNT, ERRORS, BATCHES, BATCHED_ROWS, QUEUE_DEPTH, WRITTEN = range(6)
    _HEADER = 8

    def __init__(self, size: int = 10000, path: Path | None = None, *, readonly: bool = False) -> None:
        self.size = size
        length = (self._HEADER + size) * 8
        if path is None:
            self._map = mmap.mmap(-1, length)
        else:
            flags = os.O_RDONLY if readonly else os.O_RDWR | os.O_CREAT
            fd = os.open(path, flags, 0o600)
            try:
                if not readonly and os.fstat(fd).st_size != length:
                    os.ftruncate(fd, length)
                access = mmap.ACCESS_READ if readonly else mmap.ACCESS_WRITE
                self._map = mmap.mmap(fd, length, access=access)
            finally:
                os.close(fd)
        self._values = memoryview(self._map).cast("d")

    def record_request(self, milliseconds: float, error: bool) -> None:
        values = self._values
        values[self.COUNT] += 1
        if error:
            values[self.ERRORS] += 1
            return
        written = int(values[self.WRITTEN])
        values[self._HEADER + written % self.size] = milliseconds
        values[self.WRITTEN] = written + 1

    def record_batch(self, rows: int) -> None:
        values = self._values
        values[self.BATCHES] += 1
        values[self.BATCHED_ROWS] += rows

    def set_queue_depth(self, rows: int) -> None:
        self._values[self.QUEUE_DEPTH] = rows

    def count(self, field: int) -> int:
        return int(self._values[field])

    def recent(self) -> np.ndarray:
        """A copy of the latencies in the window (milliseconds), oldest first or in ring order."""
        written = int(self._values[self.WRITTEN])
        ring = np.frombuffer(self._map, dtype=np.float64, offset=self._HEADER * 8, count=self.size)
        return ring[: min(written, self.size)].copy()


def summarize(windows: Sequence[LatencyWindow]) -> dict[str, Any]:
    """The seed's /stats summary over one or several processes' windows: counts summed, percentiles over all."""
    recent = np.concatenate([w.recent() for w in windows]) if windows else np.empty(0)
    count = sum(w.count(LatencyWindow.COUNT) for w in windows)
    errors = sum(w.count(LatencyWindow.ERRORS) for w in windows)
    batches = sum(w.count(LatencyWindow.BATCHES) for w in windows)
    batched_rows = sum(w.count(LatencyWindow.BATCHED_ROWS) for w in windows)
    latency: dict[str, float | None]
    if recent.size:
        p50, p90, p95, p99 = np.percentile(recent, [50, 90, 95, 99])
        stats = {"p50": p50, "p90": p90, "p95": p95, "p99": p99, "mean": recent.mean(), "max": recent.max()}
        latency = {k: round(float(v), 3) for k, v in stats.items()}
    else:
        latency = dict.fromkeys(("p50", "p90", "p95", "p99", "mean", "max"))
    return {
        "count": count,
        "errors": errors,
        "error_rate": round(errors / count, 6) if count else 0.0,
        "latency_ms": latency,
        "latency_window": int(recent.size),
        "batches": batches,
        "mean_batch_size": round(batched_rows / batches, 3) if batches else None,
        "queue_depth": sum(w.count(LatencyWindow.QUEUE_DEPTH) for w in windows),
    }


class RuntimeMetrics:
    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        window: int = 10000,
        *,
        model: str = "model",
        version: str = "1",
        window_path: Path | None = None,
    ) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.model, self.version = model, version
        r = self.registry
        labels = (model, version)
        self.requests = Counter(
            "modelfleet_requests_total",
            "HTTP requests by endpoint and status code",
            [*SERIES_LABELS, "endpoint", "code"],
            registry=r,
        )
        self.rejected = Counter(
            "modelfleet_requests_rejected_total",
            "requests answered 503 for backpressure (queue full, concurrency cap), by reason; also in requests_total",
            [*SERIES_LABELS, "endpoint", "reason"],
            registry=r,
        )
        self.timed_out = Counter(
            "modelfleet_connections_timed_out_total",
            "connections closed because a request's headers or body did not arrive in time",
            [*SERIES_LABELS, "phase"],
            registry=r,
        )
        self.latency = Histogram(
            "modelfleet_request_latency_seconds",
            "HTTP request latency by endpoint",
            [*SERIES_LABELS, "endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "modelfleet_queue_wait_seconds",
            "time a request waited before its batch ran",
            SERIES_LABELS,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        ).labels(*labels)
        self.batch_size = Histogram(
            "modelfleet_batch_size_rows", "rows per model run", SERIES_LABELS, buckets=_BATCH_BUCKETS, registry=r
        ).labels(*labels)
        self.batch_seconds = Histogram(
            "modelfleet_batch_inference_seconds",
            "time of one model run",
            SERIES_LABELS,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        ).labels(*labels)
        self.rows = Counter(
            "modelfleet_inference_rows_total", "rows run through the model", SERIES_LABELS, registry=r
        ).labels(*labels)
        # How each gauge adds up over a pod's workers (ignored by a lone process).
        self.queue_depth = self._gauge("modelfleet_queue_depth_rows", "rows waiting for a batch", "livesum")
        self.in_flight = self._gauge("modelfleet_requests_in_flight", "HTTP requests being handled", "livesum")
        self.load_seconds = self._gauge("modelfleet_model_load_seconds", "time to fetch and load the model", "livemax")
        self.warmup_seconds = self._gauge("modelfleet_model_warmup_seconds", "time of the warmup inferences", "livemax")
        self.ready = self._gauge(
            READY_METRIC, "1 when the model is loaded, warmed up and serving (in every worker)", "livemin"
        )
        self.info = self._gauge("modelfleet_model_info", "the served model", "livemax")
        self.info.set(1)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        # The seed's /stats: a window of recent prediction latencies and error counts.
        self.window = LatencyWindow(window, window_path)
        self._request_children: dict[tuple[str, int], Any] = {}
        self._latency_children: dict[str, Any] = {}

    def _gauge(self, name: str, documentation: str, mode: Any) -> Any:
        gauge = Gauge(name, documentation, SERIES_LABELS, registry=self.registry, multiprocess_mode=mode)
        return gauge.labels(self.model, self.version)

    def gauge(self, name: str, documentation: str, mode: Any) -> Any:
        """A gauge of this server with its model and version labels; `mode` says how workers' values add up."""
        return self._gauge(name, documentation, mode)

    def counter(self, name: str, documentation: str) -> Any:
        """A counter of this server with its model and version labels (workers' counts add up)."""
        return Counter(name, documentation, SERIES_LABELS, registry=self.registry).labels(self.model, self.version)

    def observe_batch(self, record: BatchRecord, waits: list[float]) -> None:
        self.batch_size.observe(record.rows)
        self.batch_seconds.observe(record.finished - record.dispatched)
        self.rows.inc(record.rows)
        for wait in waits:
            self.queue_wait.observe(wait)
        self.window.record_batch(record.rows)

    def set_queue_depth(self, rows: int) -> None:
        self.queue_depth.set(rows)
        self.window.set_queue_depth(rows)

    def observe_request(self, endpoint: str, code: int, seconds: float, inference: bool) -> None:
        # labels() takes a lock and builds a key on every call; the children are few, so keep them.
        counter = self._request_children.get((endpoint, code))
        if counter is None:
            counter = self._request_children[(endpoint, code)] = self.requests.labels(
                self.model, self.version, endpoint, str(code)
            )
        histogram = self._latency_children.get(endpoint)
        if histogram is None:
            histogram = self._latency_children[endpoint] = self.latency.labels(self.model, self.version, endpoint)
        counter.inc()
        histogram.observe(seconds)
        if inference:
            self.window.record_request(seconds * 1000.0, code >= 400)

    def observe_rejection(self, endpoint: str, reason: str) -> None:
        self.rejected.labels(self.model, self.version, endpoint, reason).inc()

    def observe_timeout(self, phase: str) -> None:
        self.timed_out.labels(self.model, self.version, phase).inc()

    def summary(self) -> dict[str, Any]:
        return summarize([self.window])


INFERENCE_PATHS = (
    "/predict",
    "/v1/models/{name}:predict",
    "/v2/models/{name}/infer",
    "/v2/models/{name}/versions/{version}/infer",
    # gRPC ModelInfer, recorded by grpc_api under its method name.
    "/inference.GRPCInferenceService/ModelInfer",
)


def endpoint_of(scope: Scope) -> str:
    """The route template a request matched (bounded label values), or "unmatched"."""
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


class MetricsMiddleware:
    """Pure ASGI middleware (no per-request task or body copy, unlike BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp, metrics: RuntimeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        metrics = self.metrics

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            metrics.in_flight.dec()
            endpoint = endpoint_of(scope)
            if TIMED_OUT_KEY in scope:  # the connection answered 408 itself, whatever the app then tried
                status = TIMED_OUT_STATUS
            metrics.observe_request(endpoint, status, time.perf_counter() - started, endpoint in INFERENCE_PATHS)
            reason = scope.get(REJECTED_KEY)
            if reason is not None:
                metrics.observe_rejection(endpoint, reason)
