"""The decision for one model, as a pure function: from one snapshot of its versions and children
to every object, status and finalizer to write.

`decide(snapshot, observations, config, now)` is the whole reconcile of a model
(namespace, spec.model) minus the I/O:

1. which versions take part (`snapshot.versions_of`): a spec the operator will
   not serve, a duplicate (model, version) and a name taken by an object someone
   else owns make a version Failed, with no children (`ownership`);
2. the canary analysis of the versions that are not the stable one (`canary`,
   `rollout`), from the counters the shell read from their pods;
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from modelfleet_operator.config import OperatorConfig
from modelfleet_operator.core import canary, drift, manifests, status
from modelfleet_operator.core.canary import ROLLED_BACK
from modelfleet_operator.core.model_objects import ModelObjects, build_model_objects, endpoint
from modelfleet_operator.core.snapshot import (
    ModelSnapshot,
    Observations,
    Version,
    generation_of,
    meta_of,
    pod_ready,
    status_of,
    versions_of,
)
from modelfleet_operator.core.timestamps import parse_time, rfc3339
from modelfleet_operator.core.traffic import Scale
from modelfleet_operator.core.transitions import TransitionPlan, VersionPlan, VersionTraffic, plan_transition

FINALIZER = "serving.modelfleet.dev/finalizer"
TRAFFIC_ASSIGNED = "TrafficAssigned"
# How often pods that are not ready are asked for their runtime's reason (loading, failed).
POD_POLL_SECONDS = 2.0
# How soon to look again when a taker's pods are Ready but its EndpointSlices do not list them yet
# (the operator does not watch EndpointSlices).
ENDPOINTS_POLL_SECONDS = 0.5
# A version being deleted waits at most this long for the others to take its traffic.
HANDOVER_TIMEOUT_SECONDS = 600.0


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


def takers(snapshot: ModelSnapshot, config: OperatorConfig, now: datetime.datetime) -> list[str]:
    """The versions about to take a larger share whose Deployments report Available replicas: the
    shell confirms those against their Service's ready endpoints (`Observations.endpoints`)."""
    versions = [v for v in versions_of(snapshot, config) if v.takes_part]
    inputs = [
        _traffic_input(v, _can_serve(v, Observations(), config)[0], canary.rolled_back_for_spec(v.mv)) for v in versions
    ]
    plan = plan_transition(
        inputs,
        mode="gateway" if config.routing == "gateway" else "service",
        now=now,
        scale_down_delay=config.scale_down_delay_seconds,
        retire_after=config.retire_after_seconds,
    )
    return sorted(i.name for i in inputs if plan.versions[i.name].target > i.serving and i.available > 0)


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
    if (status_of(v.mv).get("rollout") or {}).get("rolledBack"):
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
        scale_down_at=parse_time(status_of(v.mv).get("scaleDownAt")),
        rolled_back=rolled_back,
        deleting=v.deleting,
        served_before=status_of(v.mv).get("phase") == status.RETIRED,
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
    stable = canary.stable_version(taking_part)
    judged = set(canary.candidates(taking_part))
    can_serve = {v.name: _can_serve(v, observations, config) for v in taking_part}
    verdicts: dict[str, canary.Verdict] = {}
    for v in taking_part:
        others = [o for o in taking_part if o.name != v.name and can_serve[o.name][0] and o.spec and o.spec.traffic > 0]
        verdicts[v.name] = canary.verdict(
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
        served=snapshot.served,
    )
    return [drift.stamped(m) for m in build_model_objects(objects)]


def _version_decision(
    v: Version,
    observations: Observations,
    plan: TransitionPlan,
    verdict: canary.Verdict | None,
    can_serve: tuple[bool, bool] | None,
    config: OperatorConfig,
    now: datetime.datetime,
) -> VersionDecision:
    generation = generation_of(v.mv)
    if not v.takes_part or v.spec is None:
        failure = v.failure or manifests.SpecRejected("the spec is not valid")
        obs = status.observe(None, [], desired_replicas=0, rejected=failure, rejected_reason=_reason(failure))
        traffic = {"type": TRAFFIC_ASSIGNED, "status": "False", "reason": _reason(failure), "message": str(failure)}
        return VersionDecision(name=v.name, status=_status_of(v, obs, [traffic], generation, config, now, share=0))
    verdict = verdict or canary.Verdict()
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
    old = status_of(v.mv)
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
            started = parse_time(meta_of(v.mv).get("deletionTimestamp"))
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
        waits.append(canary.ANALYSIS_INTERVAL_SECONDS)
    if any(not pod_ready(p) for v in versions for p in v.pods):
        waits.append(POD_POLL_SECONDS)
    for v in versions:
        started = parse_time(meta_of(v.mv).get("deletionTimestamp")) if v.deleting else None
        if started is not None:
            waits.append((started + datetime.timedelta(seconds=HANDOVER_TIMEOUT_SECONDS) - now).total_seconds())
    return max(min(waits), 0.0) if waits else None


__all__ = [
    "ENDPOINTS_POLL_SECONDS",
    "FINALIZER",
    "HANDOVER_TIMEOUT_SECONDS",
    "POD_POLL_SECONDS",
    "ModelDecision",
    "VersionDecision",
    "decide",
    "takers",
    "traffic_condition",
]
