"""The decision for one model, as a pure function: from one snapshot of its versions and children
to every object, status and finalizer to write.

`decide(snapshot, observations, config, now)` is the whole reconcile of a model
(namespace, spec.model) minus the I/O:

1. which versions take part: a spec the operator will not serve, a duplicate
   (model, version) and a name taken by an object someone else owns make a
   version Failed, with no children (`ownership`);
2. the canary analysis of the versions that are not the stable one (`rollout`),
   from the counters the shell read from their pods;
3. which versions may take traffic now (Ready, not rolled back, not being
   deleted), from the live Deployment and pods;
4. the traffic transition (`transitions`): every version's share and replicas,
   and the deadlines to persist;
5. the children of each version with those replicas, the shared objects of the
   model (`model_objects`), each stamped for the drift check (`drift`);
6. every version's status, and whether it carries the finalizer that lets a
   serving version hand its traffic over before it goes.

The shell reads the snapshot from its cache, asks the pods, calls this, and
writes only what differs from the live objects.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from modelfleet_operator.config import OperatorConfig
from modelfleet_operator.core import drift, manifests, ownership, status
from modelfleet_operator.core.model_objects import ModelObjects, build_model_objects, endpoint, shared_kinds
from modelfleet_operator.core.rollout import Counts, Judgement, Window, judge, parse_time, rfc3339
from modelfleet_operator.core.traffic import Scale, needed
from modelfleet_operator.core.transitions import TransitionPlan, VersionPlan, VersionTraffic, plan_transition
from modelfleet_operator.spec import API_VERSION, KIND, ModelVersionSpec

FINALIZER = "serving.modelfleet.dev/finalizer"
ROLLED_BACK = "RolledBack"
TRAFFIC_ASSIGNED = "TrafficAssigned"
COMPONENT = "modelfleet-operator"
# How often the canary analysis reads the pods' counters while a candidate serves.
ANALYSIS_INTERVAL_SECONDS = 5.0
# How often pods that are not ready are asked for their runtime's reason (loading, failed).
POD_POLL_SECONDS = 2.0
# How soon to look again when a taker's pods are Ready but its EndpointSlices do not list them yet
# (the operator does not watch EndpointSlices).
ENDPOINTS_POLL_SECONDS = 0.5
# A version being deleted waits at most this long for the others to take its traffic.
HANDOVER_TIMEOUT_SECONDS = 600.0


# --- inputs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSnapshot:
    """One consistent view of a model, read from the cache in one go.

    `versions`: every ModelVersion of the model (those being deleted included).
    `deployments`, `services`, `hpas`, `pdbs`: the live objects named like the versions, by
    name, whoever owns them; `shared`: the live objects named like the model, by kind (the
    operator's cache holds what it labelled, and what a GET found that it did not).
    `pods`: the model's pods that are not terminating, with their labels.
    """

    namespace: str
    model: str
    versions: Sequence[Mapping[str, Any]]
    deployments: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    services: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    hpas: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    pdbs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    shared: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    pods: Sequence[Mapping[str, Any]] = ()


@dataclass(frozen=True)
class Observations:
    """What the shell learnt from the pods for this reconcile.

    `readiness`: the runtime's (state, reason) by pod name, for pods that are not ready.
    `counts`: inference requests and errors by version name, summed over every ready pod
    (absent when a pod did not answer, or when the analysis was not due).
    `endpoints`: ready endpoints of the version's own Service, by version name, for the versions
    about to take a share (`takers`): what the Gateway and kube-proxy can send to.
    """

    readiness: Mapping[str, tuple[str | None, str | None]] = field(default_factory=dict)
    counts: Mapping[str, Counts] = field(default_factory=dict)
    endpoints: Mapping[str, int] = field(default_factory=dict)


# --- outputs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionDecision:
    """Everything to write for one version.

    `children`: its Deployment, Service, HPA, PDB, stamped (empty for a version that cannot serve).
    `remove`: (kind, name) of optional children it owns and no longer needs (an HPA, a PDB).
    `status`: the status keys the operator owns, as they should be.
    `finalizer`: whether it should carry FINALIZER (a version being deleted keeps it until False).
    `events`: Events to post (a rollback).
    `promotable`: its canary analysis passed (for an automatic promotion).
    """

    name: str
    status: Mapping[str, Any]
    children: Sequence[Mapping[str, Any]] = ()
    remove: Sequence[tuple[str, str]] = ()
    finalizer: bool = False
    events: Sequence[Mapping[str, Any]] = ()
    promotable: bool = False


@dataclass(frozen=True)
class ModelDecision:
    namespace: str
    model: str
    versions: Mapping[str, VersionDecision]
    shared: Sequence[Mapping[str, Any]]
    requeue_after: float | None
    stable: str | None = None
    candidates: tuple[str, ...] = ()


# --- reading objects ----------------------------------------------------------------------------


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _name(obj: Mapping[str, Any]) -> str:
    return str(_meta(obj)["name"])


def _status(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("status") or {}


def _generation(mv: Mapping[str, Any]) -> int:
    return int(_meta(mv).get("generation") or 1)


def _condition(mv: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    return next((c for c in _status(mv).get("conditions") or [] if c.get("type") == kind), None)


def pod_ready(pod: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in _status(pod).get("conditions") or [])


def _terminated_message(pod: Mapping[str, Any]) -> str | None:
    for cs in _status(pod).get("containerStatuses") or []:
        for state in (cs.get("state") or {}, cs.get("lastState") or {}):
            terminated = state.get("terminated")
            if terminated and (terminated.get("message") or terminated.get("reason")):
                return str(terminated.get("message") or terminated.get("reason")).strip()
    return None


def _waiting(pod: Mapping[str, Any]) -> tuple[str | None, str | None]:
    for cs in _status(pod).get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason"):
            return str(waiting["reason"]), (str(waiting["message"]) if waiting.get("message") else None)
    return None, None


def pod_report(pod: Mapping[str, Any], readiness: Mapping[str, tuple[str | None, str | None]]) -> status.PodReport:
    ready = pod_ready(pod)
    state, reason = (status.READY.lower(), None) if ready else readiness.get(_name(pod), (None, None))
    waiting, waiting_message = _waiting(pod)
    return status.PodReport(
        name=_name(pod),
        ready=ready,
        state=state,
        reason=reason,
        terminated=_terminated_message(pod),
        waiting=waiting,
        waiting_message=waiting_message,
    )


def pod_port(pod: Mapping[str, Any]) -> int:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == manifests.PORT_NAME:
                return int(port["containerPort"])
    return manifests.CONTAINER_PORT


def pod_url(pod: Mapping[str, Any]) -> str | None:
    """The base URL of a pod's runtime on its own address (DESIGN.md section 7), None without one."""
    ip = _status(pod).get("podIP")
    return f"http://{ip}:{pod_port(pod)}" if ip else None


# --- one version, as the decision sees it ------------------------------------------------------------


@dataclass(frozen=True)
class Version:
    """A ModelVersion with its spec (None when rejected), live children and pods."""

    mv: Mapping[str, Any]
    spec: ModelVersionSpec | None
    failure: Exception | None
    deployment: Mapping[str, Any] | None = None
    hpa: Mapping[str, Any] | None = None
    pdb: Mapping[str, Any] | None = None
    pods: Sequence[Mapping[str, Any]] = ()

    @property
    def name(self) -> str:
        return _name(self.mv)

    @property
    def deleting(self) -> bool:
        return bool(_meta(self.mv).get("deletionTimestamp"))

    @property
    def serving(self) -> int:
        return int(_status(self.mv).get("servingTraffic") or 0)

    @property
    def takes_part(self) -> bool:
        """Valid, not a duplicate, no conflict: it has children and a place in the model's traffic."""
        return self.spec is not None and self.failure is None

    def live_scale(self) -> Scale | None:
        if self.deployment is None:
            return None
        replicas = int((self.deployment.get("spec") or {}).get("replicas", 1))
        if self.hpa is not None:
            hpa_spec = self.hpa.get("spec") or {}
            low = int(hpa_spec.get("minReplicas") or 1)
            return Scale(replicas=replicas, autoscaling=(low, int(hpa_spec.get("maxReplicas") or low)))
        return Scale(replicas=replicas)

    def available(self) -> int:
        dep = _status(self.deployment or {})
        return int(dep.get("availableReplicas", dep.get("readyReplicas")) or 0)

    def reports(self, observations: Observations) -> list[status.PodReport]:
        return [pod_report(p, observations.readiness) for p in self.pods]

    def current(self, config: OperatorConfig) -> bool:
        """Whether its Deployment runs the template of its current spec."""
        return self.spec is not None and manifests.runs_current_spec(self.deployment, self.mv, config)


def _controlled(obj: Mapping[str, Any] | None, mv: Mapping[str, Any]) -> Mapping[str, Any] | None:
    if obj is None or not ownership.controlled_by(obj, str(_meta(mv).get("uid") or "")):
        return None
    return obj


def versions_of(snapshot: ModelSnapshot, config: OperatorConfig) -> list[Version]:
    """The snapshot's ModelVersions with their specs, failures and children, sorted by name."""
    dups = ownership.duplicates(v for v in snapshot.versions if _valid(v, config))
    model_conflict = _hostname_problem(snapshot, config) or _model_conflict(snapshot, config)
    out: list[Version] = []
    for mv in sorted(snapshot.versions, key=_name):
        name = _name(mv)
        spec: ModelVersionSpec | None = None
        failure: Exception | None = None
        try:
            spec = manifests.validated(mv, config)
        except manifests.SpecRejected as rejected:
            failure = rejected
        if failure is None and name in dups:
            failure = ownership.duplicate_error(dups[name], snapshot.model)
        if failure is None:
            failure = model_conflict or _version_conflict(snapshot, mv)
        pods = [] if spec is None or failure else _pods_of(snapshot, spec.version)
        out.append(
            Version(
                mv=mv,
                spec=spec,
                failure=failure,
                deployment=_controlled(snapshot.deployments.get(name), mv),
                hpa=_controlled(snapshot.hpas.get(name), mv),
                pdb=_controlled(snapshot.pdbs.get(name), mv),
                pods=pods,
            )
        )
    return out


def _valid(mv: Mapping[str, Any], config: OperatorConfig) -> bool:
    try:
        manifests.validated(mv, config)
    except manifests.SpecRejected:
        return False
    return True


def _pods_of(snapshot: ModelSnapshot, version: str) -> list[Mapping[str, Any]]:
    return sorted(
        (
            p
            for p in snapshot.pods
            if (_meta(p).get("labels") or {}).get(manifests.LABEL_VERSION) == version
            and not _meta(p).get("deletionTimestamp")
        ),
        key=_name,
    )


def _version_conflict(snapshot: ModelSnapshot, mv: Mapping[str, Any]) -> ownership.Conflict | None:
    name = _name(mv)
    for kind, objects in (
        ("Deployment", snapshot.deployments),
        ("Service", snapshot.services),
        ("HorizontalPodAutoscaler", snapshot.hpas),
        ("PodDisruptionBudget", snapshot.pdbs),
    ):
        found = ownership.version_object_conflict(kind, objects.get(name), mv)
        if found is not None:
            return found
    return None


class InvalidHostname(manifests.SpecRejected):
    reason = "InvalidHostname"


def _hostname_problem(snapshot: ModelSnapshot, config: OperatorConfig) -> InvalidHostname | None:
    """Gateway mode: the model's hostname must be a DNS name (labels of at most 63 characters)."""
    if config.routing != "gateway":
        return None
    host = config.gateway_hostname(snapshot.model, snapshot.namespace)
    labels = host.split(".")
    if len(host) <= 253 and all(0 < len(label) <= 63 for label in labels):
        return None
    return InvalidHostname(
        f"the model's hostname {host!r} (gateway-hostname-template {config.gateway_hostname_template!r}) is not a "
        "DNS name: a label has more than 63 characters; shorten the model or namespace name, or change the template"
    )


def _model_conflict(snapshot: ModelSnapshot, config: OperatorConfig) -> ownership.Conflict | None:
    for kind in shared_kinds(config):
        found = ownership.model_object_conflict(kind, snapshot.shared.get(kind), snapshot.model, snapshot.namespace)
        if found is not None:
            return found
    return None


# --- the canary analysis -----------------------------------------------------------------------------


def rolled_back_for_spec(mv: Mapping[str, Any]) -> bool:
    """Rolled back for its current spec: it takes no traffic until a person changes the spec."""
    if not (_status(mv).get("rollout") or {}).get("rolledBack"):
        return False
    cond = _condition(mv, ROLLED_BACK)
    return cond is not None and cond.get("status") == "True" and cond.get("observedGeneration") == _generation(mv)


def stable_version(versions: Iterable[Version]) -> str | None:
    """The model's stable version: the one serving the largest share now (the oldest on a tie)."""
    serving = [v for v in versions if v.takes_part and v.serving > 0]
    if not serving:
        return None
    best = min(serving, key=lambda v: (-v.serving, str(_meta(v.mv).get("creationTimestamp") or ""), v.name))
    return best.name


def candidates(versions: Iterable[Version]) -> list[str]:
    """The versions the canary analysis judges: with spec.rollout, serving, not the stable one."""
    versions = list(versions)
    stable = stable_version(versions)
    return [
        v.name
        for v in versions
        if v.takes_part
        and v.spec is not None
        and v.spec.rollout is not None
        and v.serving > 0
        and v.name != stable
        and not v.deleting
        and not rolled_back_for_spec(v.mv)
    ]


def analysis_targets(snapshot: ModelSnapshot, config: OperatorConfig) -> list[str]:
    """The versions whose pods' counters the shell reads for this reconcile: candidates and the stable."""
    versions = versions_of(snapshot, config)
    judged = candidates(versions)
    stable = stable_version(versions)
    return sorted({*judged, stable} if judged and stable else set(judged))


def takers(snapshot: ModelSnapshot, config: OperatorConfig, now: datetime.datetime) -> list[str]:
    """The versions about to take a larger share whose Deployments report Available replicas: the
    shell confirms those against their Service's ready endpoints (`Observations.endpoints`)."""
    versions = [v for v in versions_of(snapshot, config) if v.takes_part]
    inputs = [_traffic_input(v, _can_serve(v, Observations(), config)[0], rolled_back_for_spec(v.mv)) for v in versions]
    plan = plan_transition(
        inputs,
        mode="gateway" if config.routing == "gateway" else "service",
        now=now,
        scale_down_delay=config.scale_down_delay_seconds,
        retire_after=config.retire_after_seconds,
    )
    return sorted(i.name for i in inputs if plan.versions[i.name].target > i.serving and i.available > 0)


@dataclass(frozen=True)
class Verdict:
    """The canary analysis of one version: rolled back or not, and what to write about it."""

    rolled_back: bool = False
    message: str = ""
    rollout: Mapping[str, Any] | None = None  # status.rollout to write (None: leave it)
    conditions: tuple[Mapping[str, str], ...] = ()
    event: Mapping[str, Any] | None = None
    promotable: bool = False
    judged: bool = False


def _verdict(
    v: Version,
    observations: Observations,
    *,
    stable: str | None,
    judged: bool,
    has_fallback: bool,
    ready_now: bool,
    now: datetime.datetime,
) -> Verdict:
    """The canary analysis of `v` (see `rollout`); a rollback also gets its Event."""
    if rolled_back_for_spec(v.mv):
        cond = _condition(v.mv, ROLLED_BACK) or {}
        return Verdict(rolled_back=True, message=str(cond.get("message") or "rolled back"))
    previous = dict(_status(v.mv).get("rollout") or {})
    reset: dict[str, Any] | None = None
    conditions: tuple[Mapping[str, str], ...] = ()
    if previous.get("rolledBack"):
        if not ready_now:
            return Verdict()  # rolled back for an older spec: back in traffic once Ready with the new one
        reset = Window(error_rate=Window.from_status(previous).error_rate).to_status()
        previous = {}
        conditions = (
            {
                "type": ROLLED_BACK,
                "status": "False",
                "reason": "SpecChanged",
                "message": f"the spec changed (generation {_generation(v.mv)}); the version is judged again",
            },
        )
    policy = v.spec.rollout if v.spec else None
    counts = observations.counts.get(v.name)
    if not judged or policy is None or counts is None:
        return Verdict(rollout=reset, conditions=conditions)
    verdict: Judgement = judge(
        Window.from_status(previous or None),
        counts,
        observations.counts.get(stable) if stable else None,
        policy,
        now=now,
        stable_version=stable,
        has_fallback=has_fallback,
    )
    if not verdict.rollback:
        return Verdict(rollout=verdict.status, conditions=conditions, promotable=verdict.promotable, judged=True)
    message = f"rolled back: {verdict.message}; its traffic is set to 0 until its spec changes"
    return Verdict(
        rolled_back=True,
        message=message,
        rollout=verdict.status,
        conditions=({"type": ROLLED_BACK, "status": "True", "reason": verdict.reason, "message": message},),
        event=rollback_event(v.mv, message, now),
        judged=True,
    )


def rollback_event(mv: Mapping[str, Any], message: str, moment: datetime.datetime) -> dict[str, Any]:
    """A core v1 Warning Event on the ModelVersion, as `kubectl describe mv` shows them."""
    meta = _meta(mv)
    stamp = rfc3339(moment)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        # One per rolled-back spec: posted again after a failed status write, it answers 409.
        "metadata": {"name": f"{meta['name']}.rolled-back.g{_generation(mv)}", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": mv.get("apiVersion", API_VERSION),
            "kind": mv.get("kind", KIND),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid", ""),
        },
        "type": "Warning",
        "reason": ROLLED_BACK,
        "message": message,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
        "action": "SetTrafficToZero",
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


# --- traffic ----------------------------------------------------------------------------------------


def _can_serve(v: Version, observations: Observations, config: OperatorConfig) -> tuple[bool, bool]:
    """(may take traffic, Ready with its current spec at its current replicas), from the live
    Deployment and pods."""
    live = v.live_scale()
    if v.deployment is None or live is None:
        return False, False
    obs = status.observe(
        v.deployment, v.reports(observations), desired_replicas=live.floor, current_template=v.current(config)
    )
    ready = obs.phase == status.READY
    serving = ready or (obs.phase == status.DEGRADED and obs.ready_replicas > 0)
    if (_status(v.mv).get("rollout") or {}).get("rolledBack"):
        serving = ready  # the old pods, still serving during its rollout, are the ones that failed
    return serving and not v.deleting, ready


def _traffic_input(
    v: Version, eligible: bool, rolled_back: bool, endpoints: Mapping[str, int] | None = None
) -> VersionTraffic:
    """The transition planner's view of a version. Its Available replicas count only as far as its
    Service's ready endpoints reach, when the shell looked them up (a taker's pods may be Ready a
    moment before the EndpointSlice lists them, and the traffic goes where the endpoints are)."""
    assert v.spec is not None
    available = v.available()
    if endpoints is not None and v.name in endpoints:
        available = min(available, endpoints[v.name])
    return VersionTraffic(
        name=v.name,
        weight=v.spec.traffic,
        full=manifests.default_scale(v.spec),
        eligible=eligible and not rolled_back,
        serving=v.serving,
        live=v.live_scale(),
        available=available,
        scale_down_at=parse_time(_status(v.mv).get("scaleDownAt")),
        rolled_back=rolled_back,
        deleting=v.deleting,
        served_before=_status(v.mv).get("phase") == status.RETIRED,
    )


def traffic_condition(
    plan: VersionPlan, *, desired: int, eligible: bool, rolled_back: bool, held: bool
) -> dict[str, str]:
    """TrafficAssigned: the share the version serves, and why it differs from the desired one."""
    share, target = plan.share, plan.target
    moving = f" (moving to {target}%: {plan.waiting})" if plan.waiting and target != share else ""
    if rolled_back:
        row = ("False", "RolledBack", f"serving 0% (desired {desired}%): the version was rolled back")
    elif plan.retired:
        row = ("False", "Retired", f"serving 0%: {status.RETIRED_MESSAGE}")
    elif share > 0 and held:
        row = ("True", "Held", f"serving {share}%: no Ready version of the model wants traffic, so the split is kept")
    elif share > 0:
        row = (
            "True",
            "Assigned",
            f"serving {share}% of the model's traffic (desired {desired}%, normalised over the Ready versions){moving}",
        )
    elif target > 0 and plan.waiting:
        row = ("False", "Waiting", f"will serve {target}%: {plan.waiting}")
    elif plan.scale_down_at is not None:
        until = rfc3339(plan.scale_down_at)
        row = ("False", "Draining", f"serving 0%; keeps {plan.scale.floor} replica(s) until {until}, then scales down")
    elif desired == 0:
        row = ("False", "NoTrafficWanted", "spec.traffic is 0")
    elif not eligible:
        row = ("False", "NotReady", f"desired {desired}%: a version takes traffic only once it is Ready")
    else:
        row = ("False", "NoShare", f"desired {desired}%, but the model's traffic is held by the serving versions")
    return {"type": TRAFFIC_ASSIGNED, "status": row[0], "reason": row[1], "message": row[2]}


# --- the decision -------------------------------------------------------------------------------------


def decide(
    snapshot: ModelSnapshot, observations: Observations, config: OperatorConfig, now: datetime.datetime
) -> ModelDecision:
    """Everything one reconcile of the model writes (see the module docstring)."""
    versions = versions_of(snapshot, config)
    taking_part = [v for v in versions if v.takes_part]
    stable = stable_version(taking_part)
    judged = set(candidates(taking_part))
    can_serve = {v.name: _can_serve(v, observations, config) for v in taking_part}
    verdicts: dict[str, Verdict] = {}
    for v in taking_part:
        others = [o for o in taking_part if o.name != v.name and can_serve[o.name][0] and o.spec and o.spec.traffic > 0]
        verdicts[v.name] = _verdict(
            v,
            observations,
            stable=stable,
            judged=v.name in judged,
            has_fallback=bool(others),
            ready_now=can_serve[v.name][1],
            now=now,
        )
    plan = plan_transition(
        [
            _traffic_input(v, can_serve[v.name][0], verdicts[v.name].rolled_back, observations.endpoints)
            for v in taking_part
        ],
        mode="gateway" if config.routing == "gateway" else "service",
        now=now,
        scale_down_delay=config.scale_down_delay_seconds,
        retire_after=config.retire_after_seconds,
    )
    shared = _shared_objects(snapshot, taking_part, plan, config)
    decisions = {
        v.name: _version_decision(v, observations, plan, verdicts.get(v.name), can_serve.get(v.name), config, now)
        for v in versions
    }
    decisions = _with_finalizers(versions, decisions, plan, now)
    return ModelDecision(
        namespace=snapshot.namespace,
        model=snapshot.model,
        versions=decisions,
        shared=shared,
        requeue_after=_requeue_after(versions, plan, judged, now, _endpoints_lag(taking_part, observations)),
        stable=stable,
        candidates=tuple(sorted(judged)),
    )


def _shared_objects(
    snapshot: ModelSnapshot, taking_part: Sequence[Version], plan: TransitionPlan, config: OperatorConfig
) -> list[dict[str, Any]]:
    objects = ModelObjects(
        model=snapshot.model,
        namespace=snapshot.namespace,
        versions=[v.mv for v in taking_part],
        owners_of=[v.mv for v in taking_part if not v.deleting],
        shares={v.name: plan.share(v.name) for v in taking_part},
        version_of={v.name: v.spec.version for v in taking_part if v.spec},
        config=config,
    )
    return [drift.stamped(m) for m in build_model_objects(objects)]


def _version_decision(
    v: Version,
    observations: Observations,
    plan: TransitionPlan,
    verdict: Verdict | None,
    can_serve: tuple[bool, bool] | None,
    config: OperatorConfig,
    now: datetime.datetime,
) -> VersionDecision:
    generation = _generation(v.mv)
    if not v.takes_part or v.spec is None:
        failure = v.failure or manifests.SpecRejected("the spec is not valid")
        obs = status.observe(None, [], desired_replicas=0, rejected=failure, rejected_reason=_reason(failure))
        traffic = {"type": TRAFFIC_ASSIGNED, "status": "False", "reason": _reason(failure), "message": str(failure)}
        return VersionDecision(name=v.name, status=_status_of(v, obs, [traffic], generation, config, now, share=0))
    verdict = verdict or Verdict()
    vplan = plan.versions[v.name]
    scale = vplan.scale
    children = [] if vplan.released else [drift.stamped(c) for c in manifests.build_children(v.mv, config, scale)]
    built = {c["kind"] for c in children}
    remove = [
        (kind, v.name)
        for kind, live in (("HorizontalPodAutoscaler", v.hpa), ("PodDisruptionBudget", v.pdb))
        if live is not None and kind not in built and not vplan.released
    ]
    obs = status.observe(
        v.deployment,
        v.reports(observations),
        desired_replicas=scale.floor,
        retired=vplan.retired,
        current_template=v.current(config),
    )
    if verdict.rolled_back:
        obs = replace(obs, phase=status.DEGRADED, reason=ROLLED_BACK, message=verdict.message)
    traffic = traffic_condition(
        vplan,
        desired=v.spec.traffic,
        eligible=bool(can_serve and can_serve[0]),
        rolled_back=verdict.rolled_back,
        held=plan.held,
    )
    extra: dict[str, Any] = {
        "servingTraffic": vplan.share,
        "scaleDownAt": rfc3339(vplan.scale_down_at) if vplan.scale_down_at else None,
        "fullShareReplicas": _full_share_replicas(v, scale, obs.replicas),
    }
    if verdict.rollout is not None:
        extra["rollout"] = dict(verdict.rollout)
    new = _status_of(v, obs, [traffic, *verdict.conditions], generation, config, now, share=vplan.share, extra=extra)
    return VersionDecision(
        name=v.name,
        status=new,
        children=children,
        remove=remove,
        events=[verdict.event] if verdict.event else [],
        promotable=verdict.promotable,
    )


def _reason(failure: Exception) -> str:
    return str(getattr(failure, "reason", "InvalidSpec"))


def _full_share_replicas(v: Version, scale: Scale, replicas: int) -> int:
    """The pods the version runs, expressed at a share of 100 (what spec.replicas means)."""
    assert v.spec is not None
    full = manifests.default_scale(v.spec).floor
    if scale.floor <= 0:
        return 0
    return math.ceil(full * replicas / scale.floor - 1e-9)


def _status_of(
    v: Version,
    obs: status.Observation,
    conditions: Sequence[Mapping[str, str]],
    generation: int,
    config: OperatorConfig,
    now: datetime.datetime,
    *,
    share: int,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    old = _status(v.mv)
    stamp = rfc3339(now)
    serving = v.takes_part
    new = status.build_status(
        old,
        obs,
        generation=generation,
        endpoint=endpoint(str(v.mv["spec"]["model"]), manifests.namespace_of(v.mv), config) if serving else None,
        version_endpoint=manifests.version_endpoint(v.mv, config) if serving else None,
        selector=manifests.label_selector(v.mv) if serving else None,
        timestamp=stamp,
    )
    new["conditions"] = status.merge_conditions(new["conditions"], conditions, generation, stamp)
    new["servingTraffic"] = share
    if not serving:
        new.update({"scaleDownAt": None, "fullShareReplicas": 0})
    new.update(extra or {})
    return new


def _with_finalizers(
    versions: Sequence[Version],
    decisions: dict[str, VersionDecision],
    plan: TransitionPlan,
    now: datetime.datetime,
) -> dict[str, VersionDecision]:
    """Who carries the finalizer: a version that serves (or holds replicas for) a share while another
    version of the model stays; a version being deleted keeps it until it has handed over."""
    staying = [v for v in versions if v.takes_part and not v.deleting]
    out = dict(decisions)
    for v in versions:
        vplan = plan.versions.get(v.name)
        if v.deleting:
            started = parse_time(_meta(v.mv).get("deletionTimestamp"))
            timed_out = started is not None and now - started >= datetime.timedelta(seconds=HANDOVER_TIMEOUT_SECONDS)
            keep = vplan is not None and not vplan.released and not timed_out
        else:
            protects = vplan is not None and (vplan.share > 0 or vplan.scale_down_at is not None)
            keep = protects and any(o.name != v.name for o in staying)
        out[v.name] = replace(out[v.name], finalizer=keep)
    return out


def _endpoints_lag(versions: Sequence[Version], observations: Observations) -> bool:
    """Whether a taker's Service lists fewer ready endpoints than its Deployment has Available pods."""
    return any(v.name in observations.endpoints and observations.endpoints[v.name] < v.available() for v in versions)


def _requeue_after(
    versions: Sequence[Version],
    plan: TransitionPlan,
    judged: set[str],
    now: datetime.datetime,
    endpoints_lag: bool = False,
) -> float | None:
    """When to look at the model again without an event: a hold that ends, a due analysis, pods loading,
    endpoints that trail the pods."""
    waits: list[float] = [ENDPOINTS_POLL_SECONDS] if endpoints_lag else []
    deadline = plan.next_deadline()
    if deadline is not None:
        waits.append((deadline - now).total_seconds())
    if judged:
        waits.append(ANALYSIS_INTERVAL_SECONDS)
    if any(not pod_ready(p) for v in versions for p in v.pods):
        waits.append(POD_POLL_SECONDS)
    for v in versions:
        started = parse_time(_meta(v.mv).get("deletionTimestamp")) if v.deleting else None
        if started is not None:
            waits.append((started + datetime.timedelta(seconds=HANDOVER_TIMEOUT_SECONDS) - now).total_seconds())
    return max(min(waits), 0.0) if waits else None


# --- `modelfleet-operator render` ---------------------------------------------------------------------


def render_manifests(objects: Iterable[Mapping[str, Any]], config: OperatorConfig) -> list[dict[str, Any]]:
    """Every manifest the operator creates for these ModelVersions once all of them are Ready.

    Per model (sorted by namespace and name): the shared objects, then each version's
    children. Raises SpecRejected, naming the object.
    """
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for mv in objects:
        try:
            spec = manifests.validated(mv, config)
        except manifests.SpecRejected as err:
            raise type(err)(f"ModelVersion {_meta(mv).get('name')!r}: {err}") from None
        groups.setdefault((manifests.namespace_of(mv), spec.model), []).append(mv)
    out: list[dict[str, Any]] = []
    for (namespace, model), members in sorted(groups.items()):
        settled = []
        for mv in sorted(members, key=_name):
            spec = manifests.validated(mv, config)
            full = manifests.default_scale(spec)
            settled.append(VersionTraffic(_name(mv), spec.traffic, full, eligible=True, available=full.floor))
        plan = plan_transition(
            settled,
            mode="gateway" if config.routing == "gateway" else "service",
            now=datetime.datetime.now(datetime.UTC),
            scale_down_delay=0,
            retire_after=0,
        )
        versions = sorted(members, key=_name)
        objects_ = ModelObjects(
            model=model,
            namespace=namespace,
            versions=versions,
            owners_of=versions,
            shares={n: p.share for n, p in plan.versions.items()},
            version_of={_name(mv): str(mv["spec"]["version"]) for mv in versions},
            config=config,
        )
        out.extend(drift.stamped(m) for m in build_model_objects(objects_))
        for mv in versions:
            out.extend(drift.stamped(c) for c in manifests.build_children(mv, config, plan.versions[_name(mv)].scale))
    return out


__all__ = [
    "ANALYSIS_INTERVAL_SECONDS",
    "FINALIZER",
    "HANDOVER_TIMEOUT_SECONDS",
    "POD_POLL_SECONDS",
    "ModelDecision",
    "ModelSnapshot",
    "Observations",
    "Version",
    "VersionDecision",
    "analysis_targets",
    "candidates",
    "decide",
    "needed",
    "pod_ready",
    "pod_report",
    "pod_url",
    "render_manifests",
    "rolled_back_for_spec",
    "stable_version",
    "takers",
    "traffic_condition",
    "versions_of",
]
