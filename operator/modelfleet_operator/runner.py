"""Running the operator: `run(config)` for `modelfleet-operator run`, `operate(...)` for an event loop.

Both build a fresh kopf registry with ModelFleet's handlers, so several
operators can run one after another in one process (the integration tests kill
and restart it). The cluster comes from the in-cluster service account when
running in a pod, else from KUBECONFIG (or ~/.kube/config).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

import kopf

from modelfleet_operator.config import OperatorConfig
from modelfleet_operator.shell import handlers, metrics

# How long a stopping operator lets the reconciles that run finish.
STOP_TIMEOUT_SECONDS = 10.0


def build_registry(context: handlers.Context) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    handlers.register(registry, context)
    return registry


def scope(config: OperatorConfig) -> dict[str, Any]:
    """kopf's namespace arguments: the listed namespaces, else the whole cluster."""
    if config.namespaces and not config.all_namespaces:
        return {"namespaces": list(config.namespaces)}
    return {"clusterwide": True}


async def operate(
    config: OperatorConfig,
    *,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
    liveness_endpoint: str | None = None,
    metrics_host: str = "127.0.0.1",
) -> None:
    """Run the operator in the current event loop until `stop_flag` is set, SIGTERM/SIGINT arrive
    (in the main thread), or the task is cancelled. Metrics listen on `metrics_host`:`metrics-port`."""
    context = handlers.open_context(config)
    try:
        await context.discover()
    except BaseException:
        await handlers.close_context(context)
        raise
    exporter = await metrics.serve(context.metrics, config.metrics_port, metrics_host) if config.metrics_port else None
    # Started before kopf, which cancels the tasks it finds at its end as its own; the queue
    # stops after kopf, so no reconcile is cut off while kopf still runs.
    queue = asyncio.create_task(context.queue.run(), name="modelfleet work queue")
    resync = asyncio.create_task(context.resync(), name="modelfleet resync")
    try:
        await kopf.operator(
            registry=build_registry(context),
            standalone=config.standalone,
            liveness_endpoint=liveness_endpoint,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
            memo=kopf.Memo(context=context),
            **scope(config),
            **peering(config),
        )
    finally:
        resync.cancel()
        context.queue.stop()
        try:
            await asyncio.wait_for(queue, timeout=STOP_TIMEOUT_SECONDS)
        except (TimeoutError, asyncio.CancelledError):
            queue.cancel()
        if exporter is not None:
            await exporter.cleanup()
        await handlers.close_context(context)


def configure_logging(config: OperatorConfig) -> None:
    kopf.configure(
        debug=config.log_level == "debug",
        verbose=config.log_level in ("debug", "info"),
        log_format=kopf.LogFormat.JSON if config.log_format == "json" else kopf.LogFormat.FULL,
    )
    logging.getLogger().setLevel(config.log_level.upper())


def peering(config: OperatorConfig) -> dict[str, Any]:
    """kopf's peering arguments: the configured peering object, and a priority of this replica's own.

    kopf pauses every operator that sees a live peer of the same priority, so replicas
    of one Deployment must not share one: a random priority makes one replica the leader
    and the others wait until it is gone.
    """
    if config.standalone or not config.peering:
        return {}
    return {"peering_name": config.peering, "priority": secrets.randbelow(1_000_000) + 1}


def run(config: OperatorConfig) -> None:
    """The blocking entry point: kopf with its liveness endpoint, stopping on SIGTERM/SIGINT."""
    configure_logging(config)
    liveness = f"http://0.0.0.0:{config.liveness_port}/healthz"
    asyncio.run(operate(config, liveness_endpoint=liveness, metrics_host="0.0.0.0"))


__all__ = ["build_registry", "configure_logging", "operate", "peering", "run", "scope"]
