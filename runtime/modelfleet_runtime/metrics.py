"""Prometheus metrics and the seed's /stats summary, both fed from one ASGI middleware.

Every server owns its own CollectorRegistry, so several apps in one process
(tests, benchmarks) never share counters.
"""

from __future__ import annotations

import collections
import time
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .batching import BatchRecord

# The *_created series double the output and no dashboard reads them.
disable_created_metrics()

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class RuntimeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, window: int = 10000) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "modelfleet_requests_total", "HTTP requests by endpoint and status code", ["endpoint", "code"], registry=r
        )
        self.latency = Histogram(
            "modelfleet_request_latency_seconds",
            "HTTP request latency by endpoint",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "modelfleet_queue_wait_seconds",
            "time a request waited before its batch ran",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "modelfleet_batch_size_rows", "rows per model run", buckets=_BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "modelfleet_batch_inference_seconds", "time of one model run", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.rows = Counter("modelfleet_inference_rows_total", "rows run through the model", registry=r)
        self.queue_depth = Gauge("modelfleet_queue_depth_rows", "rows waiting for a batch", registry=r)
        self.in_flight = Gauge("modelfleet_requests_in_flight", "HTTP requests being handled", registry=r)
        self.load_seconds = Gauge("modelfleet_model_load_seconds", "time to fetch and load the model", registry=r)
        self.warmup_seconds = Gauge("modelfleet_model_warmup_seconds", "time of the warmup inferences", registry=r)
        self.ready = Gauge("modelfleet_model_ready", "1 when the model is loaded, warmed up and serving", registry=r)
        self.info = Gauge("modelfleet_model_info", "the served model", ["model", "version"], registry=r)
        # The seed's /stats: a window of recent prediction latencies and error counts.
        self._recent_ms: collections.deque[float] = collections.deque(maxlen=window)
        self.count = 0
        self.errors = 0
        self.batches = 0
        self.batched_rows = 0
        self._request_children: dict[tuple[str, int], Any] = {}
        self._latency_children: dict[str, Any] = {}

    def observe_batch(self, record: BatchRecord, waits: list[float]) -> None:
        self.batch_size.observe(record.rows)
        self.batch_seconds.observe(record.finished - record.dispatched)
        self.rows.inc(record.rows)
        for wait in waits:
            self.queue_wait.observe(wait)
        self.batches += 1
        self.batched_rows += record.rows

    def observe_request(self, endpoint: str, code: int, seconds: float, inference: bool) -> None:
        # labels() takes a lock and builds a key on every call; the children are few, so keep them.
        counter = self._request_children.get((endpoint, code))
        if counter is None:
            counter = self._request_children[(endpoint, code)] = self.requests.labels(endpoint, str(code))
        histogram = self._latency_children.get(endpoint)
        if histogram is None:
            histogram = self._latency_children[endpoint] = self.latency.labels(endpoint)
        counter.inc()
        histogram.observe(seconds)
        if inference:
            self.count += 1
            if code >= 400:
                self.errors += 1
            else:
                self._recent_ms.append(seconds * 1000.0)

    def summary(self) -> dict[str, Any]:
        recent = np.fromiter(self._recent_ms, dtype=np.float64)
        latency: dict[str, float | None]
        if recent.size:
            p50, p90, p95, p99 = np.percentile(recent, [50, 90, 95, 99])
            stats = {"p50": p50, "p90": p90, "p95": p95, "p99": p99, "mean": recent.mean(), "max": recent.max()}
            latency = {k: round(float(v), 3) for k, v in stats.items()}
        else:
            latency = dict.fromkeys(("p50", "p90", "p95", "p99", "mean", "max"))
        return {
            "count": self.count,
            "errors": self.errors,
            "error_rate": round(self.errors / self.count, 6) if self.count else 0.0,
            "latency_ms": latency,
            "latency_window": int(recent.size),
            "batches": self.batches,
            "mean_batch_size": round(self.batched_rows / self.batches, 3) if self.batches else None,
        }


INFERENCE_PATHS = ("/predict", "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer")


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
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            metrics.observe_request(endpoint, status, time.perf_counter() - started, endpoint in INFERENCE_PATHS)
