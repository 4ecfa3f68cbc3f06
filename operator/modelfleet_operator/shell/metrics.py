"""The operator's own Prometheus metrics, served on `metrics-port` at /metrics.

What an operator's users watch: how often models are reconciled and how long a
reconcile takes, what it writes (an unchanged cluster writes nothing), how many
models wait in the queue, and how many objects the cache holds. One registry per
running operator, so several can run in one process (the integration tests).
"""

from __future__ import annotations

from collections.abc import Callable

import aiohttp.web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PATH = "/metrics"


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.reconciles = Counter(
            "modelfleet_operator_reconciles",
            "Model reconciles by outcome (ok, retry: an API error that may pass, error).",
            ["outcome"],
            registry=self.registry,
        )
        self.reconcile_seconds = Histogram(
            "modelfleet_operator_reconcile_duration_seconds",
            "Time one reconcile of a model takes, pod questions and API writes included.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.writes = Counter(
            "modelfleet_operator_api_writes",
            "Requests that change the cluster, by kind and verb (apply, create, patch, delete).",
            ["kind", "verb"],
            registry=self.registry,
        )
        self.pending = Gauge(
            "modelfleet_operator_queue_models",
            "Models waiting for or in a reconcile.",
            registry=self.registry,
        )
        self.cached = Gauge(
            "modelfleet_operator_cached_objects",
            "Objects in the operator's cache, by resource.",
            ["resource"],
            registry=self.registry,
        )

    def watch_queue(self, pending: Callable[[], int]) -> None:
        self.pending.set_function(lambda: float(pending()))

    def watch_cache(self, resources: dict[str, Callable[[], int]]) -> None:
        for resource, count in resources.items():
            self.cached.labels(resource=resource).set_function(_as_float(count))

    def text(self) -> bytes:
        return generate_latest(self.registry)


def _as_float(count: Callable[[], int]) -> Callable[[], float]:
    return lambda: float(count())


async def serve(metrics: OperatorMetrics, port: int, host: str = "0.0.0.0") -> aiohttp.web.AppRunner:
    """Serve /metrics on `port` in the running loop; `await runner.cleanup()` stops it."""

    async def handle(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.Response(body=metrics.text(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = aiohttp.web.Application()
    app.router.add_get(PATH, handle)
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, host, port).start()
    return runner


__all__ = ["PATH", "OperatorMetrics", "serve"]
