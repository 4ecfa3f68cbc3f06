"""The kopf shell: watches feed the cache, events queue model reconciles; nothing else runs in kopf.

For ModelVersions and every kind of object the operator creates, two handlers:

- an index handler, which kopf calls for each object (listed or changed) before
  it lets any other handler run, so the cache holds every object before the
  first reconcile reads it (a reconcile that saw a Deployment as missing would
  try to create it; one that did not see a Service would not notice whose it is);
- an event handler, which takes deleted objects out of the cache and queues
  the models the object belongs to (`Cache.models_of`).

GRPCRoutes are an optional kind: in gateway mode the operator asks the API's
discovery once at start whether the cluster serves them (`discover`); without
the GRPCRoute CRD it says so in one log line and neither watches nor makes them.

The owned kinds are watched with the server-side label selector
`app.kubernetes.io/managed-by=modelfleet-operator`, so the operator receives
only its own objects. The reconcile itself (`reconciler.ModelReconciler`) runs in
the work queue, one per model at a time; kopf never writes to a ModelVersion
(no kopf finalizer, progress or diff-base annotation: the operator's finalizer
is its own, on the versions where it protects something).

`resync-seconds` re-queues every model from the cache: a safety net that sends
no request for a model that is as it should be.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import kopf

from modelfleet_operator.config import OperatorConfig, label_requirement
from modelfleet_operator.core.manifests import MANAGED_BY
from modelfleet_operator.shell import kube as k8s
from modelfleet_operator.shell.cache import Cache, ModelKey
from modelfleet_operator.shell.kube import Kind, Kube
from modelfleet_operator.shell.metrics import OperatorMetrics
from modelfleet_operator.shell.queue import WorkQueue
from modelfleet_operator.shell.reconciler import ModelReconciler
from modelfleet_operator.shell.writer import Writer

MANAGED_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"
# Models reconciled at once; each may wait on the API server and on its pods.
RECONCILE_WORKERS = 8

logger = logging.getLogger("modelfleet_operator")


# Shared kinds the cluster may not serve, by the name the core knows them by (`OPTIONAL_KINDS`).
OPTIONAL_KINDS: dict[str, Kind] = {"GRPCRoute": k8s.GRPCROUTES}


def owned_kinds(config: OperatorConfig, served: frozenset[str] = frozenset()) -> tuple[Kind, ...]:
    """The kinds the operator creates and therefore watches: HTTPRoutes only in gateway mode (and
    GRPCRoutes only there when the cluster serves them, `served`), NetworkPolicies only with network-policy."""
    kinds: tuple[Kind, ...] = (k8s.DEPLOYMENTS, k8s.SERVICES, k8s.HPAS, k8s.PDBS, k8s.PODS, k8s.JOBS)
    if config.routing == "gateway":
        kinds = (*kinds, k8s.HTTPROUTES, *(kind for name, kind in OPTIONAL_KINDS.items() if name in served))
    return (*kinds, k8s.NETWORKPOLICIES) if config.network_policy else kinds


@dataclass
class Context:
    """What the operator shares across handlers and reconciles (one per running operator)."""

    config: OperatorConfig
    kube: Kube
    http: aiohttp.ClientSession
    cache: Cache = field(default_factory=Cache)
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    queue: WorkQueue[ModelKey] = field(init=False)
    writer: Writer = field(init=False)
    reconciler: ModelReconciler = field(init=False)
    cache_complete: asyncio.Event = field(default_factory=asyncio.Event)
    # The optional kinds the cluster serves (`discover`).
    served: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self.writer = Writer(self.kube, self.cache, logger, self.metrics)
        self.reconciler = ModelReconciler(self.config, self.cache, self.writer, self.http, logger)
        self.queue = WorkQueue(self.reconciler.reconcile, workers=RECONCILE_WORKERS)
        self.metrics.watch_queue(self.queue.pending)

    async def discover(self) -> None:
        """Which optional kinds the cluster serves (gateway mode: GRPCRoute); once, before kopf starts,
        so the watches and every reconcile agree. A missing one is logged here, once."""
        served: set[str] = set()
        if self.config.routing == "gateway":
            for name, kind in OPTIONAL_KINDS.items():
                if await self.kube.served(kind):
                    served.add(name)
                else:
                    logger.warning(
                        f"The cluster does not serve {name} ({kind.group}/{kind.version} {kind.plural}): models get "
                        f"no {name}. Install the Gateway API's {name} CRD and restart the operator to have them."
                    )
        self.served = frozenset(served)
        self.reconciler.served = self.served

    async def resync(self) -> None:
        """Every resync-seconds, queue every model the cache knows; from the first event on (the cache
        is complete then). Run it as a task of its own beside the queue."""
        await self.cache_complete.wait()
        while True:
            await asyncio.sleep(self.config.resync_seconds)
            self.queue.enqueue_all(self.cache.models())


def open_context(config: OperatorConfig) -> Context:
    """The clients the operator shares; call in the operator's event loop, close with `close_context`.

    The runner owns it, not kopf's startup/cleanup handlers: kopf runs cleanup
    while reconciles may still be finishing, and they must not find closed clients.
    """
    return Context(config=config, kube=Kube.from_environment(), http=aiohttp.ClientSession())


async def close_context(ctx: Context) -> None:
    await ctx.http.close()
    ctx.kube.close()


def _watch(registry: kopf.OperatorRegistry, ctx: Context, kind: Kind, *, owned: bool) -> None:
    """The index handler (feeds the cache) and the event handler (queues models) of one kind."""
    labels = {"app.kubernetes.io/managed-by": MANAGED_BY} if owned else None

    @kopf.index(kind.group, kind.version, kind.plural, id=f"cache-{kind.plural}", labels=labels, registry=registry)
    async def feed(body: kopf.Body, **_: Any) -> None:
        ctx.cache.observe(kind, body)

    @kopf.on.event(kind.group, kind.version, kind.plural, id=f"queue-{kind.plural}", labels=labels, registry=registry)
    async def queue(type: str | None, body: kopf.Body, **_: Any) -> None:
        ctx.cache_complete.set()
        keys = ctx.cache.models_of(kind, body)
        if type == "DELETED":
            ctx.cache.forget(kind, body)
        ctx.queue.enqueue_all(keys)


def register(registry: kopf.OperatorRegistry, ctx: Context) -> None:
    """Add ModelFleet's handlers to `registry` (one registry per running operator), after `ctx.discover()`."""

    ctx.metrics.watch_cache({k.plural: functools.partial(ctx.cache.count, k) for k in watched(ctx.config, ctx.served)})

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.WARNING
        for kind in owned_kinds(ctx.config, ctx.served):
            settings.watching.label_selectors[kind.group, kind.version, kind.plural] = MANAGED_SELECTOR
        if ctx.config.consumable_secret_label:
            secrets = k8s.SECRETS
            settings.watching.label_selectors[secrets.group, secrets.version, secrets.plural] = (
                ctx.config.consumable_secret_label
            )

    @kopf.on.login(registry=registry)
    def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
        # The same source as the operator's client: in-cluster, else KUBECONFIG as it is now.
        configuration = k8s.load_client_configuration()
        scheme, token = k8s.bearer_token(configuration)
        return kopf.ConnectionInfo(
            server=configuration.host,
            ca_path=configuration.ssl_ca_cert,
            insecure=not configuration.verify_ssl,
            username=configuration.username or None,
            password=configuration.password or None,
            scheme=scheme,
            token=token,
            certificate_path=configuration.cert_file,
            private_key_path=configuration.key_file,
            trust_env=settings.networking.trust_env,
        )

    _watch(registry, ctx, k8s.MODELVERSIONS, owned=False)
    for kind in owned_kinds(ctx.config, ctx.served):
        _watch(registry, ctx, kind, owned=True)
    if label_requirement(ctx.config.consumable_secret_label):
        _watch_consumable_secrets(registry, ctx)


def _watch_consumable_secrets(registry: kopf.OperatorRegistry, ctx: Context) -> None:
    """Secrets that carry the opt-in label (server-side selector): their names go into the cache, their
    data never does; a label added or removed reconciles the models that reference the Secret."""
    kind = k8s.SECRETS
    requirement = label_requirement(ctx.config.consumable_secret_label)
    assert requirement is not None
    labels = {requirement[0]: requirement[1]}

    @kopf.index(kind.group, kind.version, kind.plural, id="cache-secrets", labels=labels, registry=registry)
    async def feed(body: kopf.Body, **_: Any) -> None:
        ctx.cache.observe_consumable_secret(body)

    @kopf.on.event(kind.group, kind.version, kind.plural, id="queue-secrets", labels=labels, registry=registry)
    async def queue(type: str | None, body: kopf.Body, **_: Any) -> None:
        ctx.cache_complete.set()
        meta = body.get("metadata") or {}
        keys = ctx.cache.models_naming_secret(str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if type == "DELETED":
            ctx.cache.forget(kind, body)
        ctx.queue.enqueue_all(keys)


def watched(config: OperatorConfig, served: frozenset[str] = frozenset()) -> Iterable[Kind]:
    return (k8s.MODELVERSIONS, *owned_kinds(config, served))


__all__ = ["MANAGED_SELECTOR", "Context", "close_context", "open_context", "owned_kinds", "register", "watched"]
