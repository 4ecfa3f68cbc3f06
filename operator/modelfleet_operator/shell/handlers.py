"""The kopf shell around the pure core: read the cluster, call the builders, write the differences.

For one ModelVersion, `reconcile` reads the versions of its model, plans the
model's traffic (`manifests.plan_model`), builds the version's children
(`manifests.build_children`), creates what is missing and merge-patches what
drifted, then observes the Deployment and the runtime of each pod
(GET /v2/health/ready on the pod's own address, DESIGN.md section 7) and writes
the status (`status.observe`). Nothing is written when nothing differs, so
re-running it — on resume after a restart, on every timer tick — is safe.

A spec the operator will not serve (`SpecRejected`) gets phase Failed with the
reason and no children; it is retried only when the spec changes or the timer
ticks, never in a crash loop. API errors that may pass (409, 429, 5xx) become
`kopf.TemporaryError` with the server's Retry-After.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf

from modelfleet_operator.config import OperatorConfig
from modelfleet_operator.core import manifests, status
from modelfleet_operator.shell import canary, learning
from modelfleet_operator.shell import kube as k8s
from modelfleet_operator.shell.kube import ApiError, Kube

FINALIZER = "serving.modelfleet.dev/finalizer"
ANNOTATION_PREFIX = "serving.modelfleet.dev"
DEFAULT_RESYNC_SECONDS = 10.0
# How long the operator waits for one pod's ready endpoint.
POD_PROBE_TIMEOUT_SECONDS = 2.0
# Children a version may own or not depending on its spec: deleted when no longer built.
OPTIONAL_CHILDREN = (k8s.HPAS, k8s.PDBS)


@dataclass
class Context:
    """What the handlers share, kept in kopf's memo (one per running operator)."""

    config: OperatorConfig
    kube: Kube
    http: aiohttp.ClientSession


# --- pure helpers ---------------------------------------------------------------


def contains(actual: Any, desired: Any) -> bool:
    """Whether `actual` already has everything `desired` asks for.

    Dicts may have more keys (the API server adds defaults and status); lists
    must match element by element, as a merge patch replaces lists whole.
    """
    if isinstance(desired, Mapping):
        return isinstance(actual, Mapping) and all(k in actual and contains(actual[k], v) for k, v in desired.items())
    if isinstance(desired, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(desired)
            and all(contains(a, d) for a, d in zip(actual, desired, strict=True))
        )
    return bool(actual == desired)


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])


def _name(obj: Mapping[str, Any]) -> str:
    return str(obj["metadata"]["name"])


def _valid(mv: Mapping[str, Any], config: OperatorConfig) -> bool:
    try:
        manifests.validated(mv, config)
    except manifests.SpecRejected:
        return False
    return True


def _container_port(pod: Mapping[str, Any]) -> int:
    containers = (pod.get("spec") or {}).get("containers") or []
    for container in containers:
        for port in container.get("ports") or []:
            if port.get("name") == manifests.PORT_NAME:
                return int(port["containerPort"])
    return manifests.CONTAINER_PORT


def _terminated_message(pod: Mapping[str, Any]) -> str | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        for state in (cs.get("state") or {}, cs.get("lastState") or {}):
            terminated = state.get("terminated")
            if terminated and (terminated.get("message") or terminated.get("reason")):
                return str(terminated.get("message") or terminated.get("reason")).strip()
    return None


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


# --- I/O ------------------------------------------------------------------------------


async def apply(kube: Kube, desired: Mapping[str, Any], logger: kopf.Logger) -> dict[str, Any]:
    """Create `desired`, or merge-patch the existing object when it lacks some of it."""
    kind = k8s.kind_of(desired)
    namespace = desired["metadata"].get("namespace")
    name = desired["metadata"]["name"]
    actual = await kube.get(kind, namespace, name)
    if actual is None:
        try:
            created = await kube.create(kind, namespace, desired)
            logger.info(f"Created {desired['kind']} {name}")
            return created
        except ApiError as exc:
            if exc.status != 409:
                raise
            # Created meanwhile (another handler, or before a restart): compare with it instead.
            actual = await kube.get(kind, namespace, name)
            if actual is None:
                raise
    if contains(actual, desired):
        return actual
    patch = {k: v for k, v in desired.items() if k not in ("apiVersion", "kind")}
    patched = await kube.merge_patch(kind, namespace, name, patch)
    logger.info(f"Updated {desired['kind']} {name}")
    return patched


async def _runtime_readiness(http: aiohttp.ClientSession, pod: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The runtime's own account of itself: (state, reason) from its ready endpoint, or (None, None)."""
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return None, None
    url = f"http://{ip}:{_container_port(pod)}{manifests.READY_PATH}"
    try:
        timeout = aiohttp.ClientTimeout(total=POD_PROBE_TIMEOUT_SECONDS)
        async with http.get(url, timeout=timeout) as response:
            body = await response.json(content_type=None)
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return None, None
    if not isinstance(body, dict):
        return None, None
    return body.get("state"), body.get("reason")


async def version_pods(kube: Kube, mv: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The version's pods that are not being deleted."""
    spec = mv["spec"]
    wanted = manifests.selector_labels(spec["model"], str(spec["version"]))
    return [
        p
        for p in await kube.list(k8s.PODS, mv["metadata"]["namespace"])
        if all(((p.get("metadata") or {}).get("labels") or {}).get(k) == v for k, v in wanted.items())
        and not (p.get("metadata") or {}).get("deletionTimestamp")
    ]


async def ready_pod_urls(kube: Kube, mv: Mapping[str, Any]) -> list[str]:
    """Base URLs of the version's ready pods, each on its own address (DESIGN.md section 7)."""
    return [
        f"http://{p['status']['podIP']}:{_container_port(p)}"
        for p in await version_pods(kube, mv)
        if _pod_ready(p) and (p.get("status") or {}).get("podIP")
    ]


async def pod_reports(ctx: Context, mv: Mapping[str, Any]) -> list[status.PodReport]:
    pods = await version_pods(ctx.kube, mv)

    async def report(pod: Mapping[str, Any]) -> status.PodReport:
        ready = _pod_ready(pod)
        state, reason = (status.READY.lower(), None) if ready else await _runtime_readiness(ctx.http, pod)
        return status.PodReport(
            name=_name(pod), ready=ready, state=state, reason=reason, terminated=_terminated_message(pod)
        )

    return list(await asyncio.gather(*(report(p) for p in pods)))


async def model_versions(kube: Kube, namespace: str, model: str) -> list[dict[str, Any]]:
    return [v for v in await kube.list(k8s.MODELVERSIONS, namespace) if (v.get("spec") or {}).get("model") == model]


async def write_status(
    kube: Kube, mv: Mapping[str, Any], build: Callable[[Mapping[str, Any] | None], dict[str, Any]]
) -> None:
    """Patch the status keys that differ from the stored status; nothing when none does.

    kopf's copy of the object may trail our own last write, so a difference is
    checked again against a fresh read before anything is written.
    """
    if not status.status_patch(mv.get("status"), build(mv.get("status"))):
        return
    stored = await kube.get(k8s.MODELVERSIONS, mv["metadata"]["namespace"], _name(mv))
    if stored is None:
        return
    patch = status.status_patch(stored.get("status"), build(stored.get("status")))
    if patch:
        await kube.merge_patch(
            k8s.MODELVERSIONS, mv["metadata"]["namespace"], _name(mv), {"status": patch}, subresource="status"
        )


async def reconcile(ctx: Context, mv: Mapping[str, Any], logger: kopf.Logger) -> None:
    """Bring one version's children and status in line with its spec (see the module docstring)."""
    config = ctx.config
    name = _name(mv)
    namespace = mv["metadata"]["namespace"]
    generation = int(mv["metadata"].get("generation") or 1)
    selector = None
    endpoint = version_endpoint = None
    try:
        spec = manifests.validated(mv, config)
    except manifests.SpecRejected as rejected:
        logger.warning(f"Not serving {name}: {rejected}")
        obs = status.observe(None, [], desired_replicas=0, rejected=rejected, rejected_reason=rejected.reason)
        await write_status(
            ctx.kube,
            mv,
            lambda old: status.build_status(
                old, obs, generation=generation, endpoint=None, version_endpoint=None, selector=None
            ),
        )
        return

    endpoint, version_endpoint = manifests.endpoints(mv, config)
    selector = manifests.label_selector(mv)
    siblings = [v for v in await model_versions(ctx.kube, namespace, spec.model) if _valid(v, config)]
    if not any(_name(v) == name for v in siblings):
        siblings.append(dict(mv))
    current = next(v for v in siblings if _name(v) == name)
    verdict = await canary.judge(
        ctx.kube, ctx.http, current, spec.rollout, siblings, lambda: ready_pod_urls(ctx.kube, mv), logger
    )
    # A rolled-back version takes no traffic, whichever of its model's versions plans it.
    ready = {_name(v): canary.takes_traffic(v) for v in siblings}
    ready[name] = ready[name] and not verdict.rolled_back
    plan = manifests.plan_model(siblings, ready, config)
    scale = plan.scales.get(name) or manifests.default_scale(spec)

    await learning.ensure_feedback_token(ctx.kube, mv, spec, logger)  # before the Deployment mounts it
    for model_manifest in plan.manifests:
        await apply(ctx.kube, model_manifest, logger)
    children = manifests.build_children(mv, config, scale)
    applied = {(c["kind"], _name(c)): await apply(ctx.kube, c, logger) for c in children}
    await _delete_unwanted(ctx.kube, mv, {kind for kind, _ in applied}, logger)

    deployment = applied.get(("Deployment", name))
    obs = canary.observed(
        status.observe(deployment, await pod_reports(ctx, mv), desired_replicas=scale.desired), verdict
    )
    share = plan.split.share(name)
    traffic = status.traffic_condition(
        share, desired=spec.traffic, ready=ready[name], rolled_back=verdict.rolled_back, held=plan.split.held
    )

    def build(old: Mapping[str, Any] | None) -> dict[str, Any]:
        new = status.build_status(
            old, obs, generation=generation, endpoint=endpoint, version_endpoint=version_endpoint, selector=selector
        )
        new["conditions"] = status.merge_conditions(
            new["conditions"], [traffic, *verdict.conditions], generation, status.now()
        )
        if verdict.rollout is not None:
            new["rollout"] = dict(verdict.rollout)
        return {**new, "servingTraffic": share}

    await write_status(ctx.kube, mv, build)
    await learning.reconcile_learning(ctx, mv, siblings, logger)


async def _delete_unwanted(kube: Kube, mv: Mapping[str, Any], built_kinds: set[str], logger: kopf.Logger) -> None:
    """An HPA or PDB the spec no longer asks for (autoscaling removed, one replica) goes away."""
    uid = mv["metadata"].get("uid", "")
    for kind, kind_name in ((k8s.HPAS, "HorizontalPodAutoscaler"), (k8s.PDBS, "PodDisruptionBudget")):
        if kind_name in built_kinds:
            continue
        existing = await kube.get(kind, mv["metadata"]["namespace"], _name(mv))
        if existing is not None and owned_by(existing, uid):
            await kube.delete(kind, mv["metadata"]["namespace"], _name(mv))
            logger.info(f"Deleted {kind_name} {_name(mv)}: the spec no longer needs it")


async def release(ctx: Context, mv: Mapping[str, Any], logger: kopf.Logger) -> None:
    """On deletion: hand the model's shared objects to the remaining versions.

    The version's own children are owned by it and go with it (garbage collection).
    """
    spec = mv.get("spec") or {}
    namespace = mv["metadata"]["namespace"]
    others = [
        v
        for v in await model_versions(ctx.kube, namespace, str(spec.get("model", "")))
        if _name(v) != _name(mv) and not v["metadata"].get("deletionTimestamp") and _valid(v, ctx.config)
    ]
    if not others:
        return  # the shared Service goes with its last owner
    plan = manifests.plan_model(others, {_name(v): canary.takes_traffic(v) for v in others}, ctx.config)
    for model_manifest in plan.manifests:
        await apply(ctx.kube, model_manifest, logger)


# --- kopf registration ---------------------------------------------------------------------


def open_context(config: OperatorConfig) -> Context:
    """The clients the handlers share; call in the operator's event loop, close with `close_context`.

    The runner owns it, not kopf's startup/cleanup handlers: kopf runs cleanup
    while timers may still be finishing, and they must not find closed clients.
    """
    return Context(config=config, kube=Kube.from_environment(), http=aiohttp.ClientSession())


async def close_context(ctx: Context) -> None:
    await ctx.http.close()
    ctx.kube.close()


def _temporary(exc: ApiError) -> kopf.TemporaryError:
    delay = exc.retry_after if exc.retry_after is not None else (2.0 if exc.transient else 10.0)
    return kopf.TemporaryError(f"the API server answered {exc}", delay=delay)


def register(
    registry: kopf.OperatorRegistry, config: OperatorConfig, *, resync_seconds: float = DEFAULT_RESYNC_SECONDS
) -> None:
    """Add ModelFleet's handlers to `registry` (one registry per running operator)."""
    group, version, plural = k8s.MODELVERSIONS.group, k8s.MODELVERSIONS.version, k8s.MODELVERSIONS.plural

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
        )
        settings.posting.level = logging.WARNING
        if getattr(memo, "context", None) is None:
            raise kopf.PermanentError("start the operator through modelfleet_operator.runner (it opens the context)")

    @kopf.on.login(registry=registry)
    def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
        # The same source as the handlers' client: in-cluster, else KUBECONFIG as it is now.
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

    @kopf.on.resume(group, version, plural, registry=registry)
    @kopf.on.create(group, version, plural, registry=registry)
    @kopf.on.update(group, version, plural, registry=registry)
    async def reconcile_on_change(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
        try:
            await reconcile(memo.context, _fresh(body), logger)
        except ApiError as exc:
            raise _temporary(exc) from None

    @kopf.timer(group, version, plural, interval=resync_seconds, registry=registry)
    async def resync(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
        if body.metadata.get("deletionTimestamp"):
            return
        try:
            await reconcile(memo.context, _fresh(body), logger)
        except ApiError as exc:
            raise _temporary(exc) from None

    @kopf.on.delete(group, version, plural, registry=registry)
    async def released(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
        try:
            await release(memo.context, _fresh(body), logger)
        except ApiError as exc:
            raise _temporary(exc) from None


def _fresh(body: kopf.Body) -> dict[str, Any]:
    """A plain-dict copy of the object as kopf last saw it."""
    return copy.deepcopy(dict(body))


__all__ = [
    "FINALIZER",
    "Context",
    "apply",
    "close_context",
    "contains",
    "open_context",
    "reconcile",
    "register",
    "release",
]
