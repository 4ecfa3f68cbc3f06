"""A ModelVersion's status, computed from what its children report (a pure function).

Inputs are what the handlers read: the Deployment (or None), the runtime's
readiness answer of each of the version's pods (`PodReport`, from
GET /v2/health/ready on the pod's address), and a `SpecRejected` when the
operator will not serve the spec. Output: the `status` dict — phase,
conditions with reason/message/lastTransitionTime, replica counts and endpoints.

Phases: Failed (rejected spec, or no replica can run: the runtime's reason for
a model that does not load, a container that waits for a reason that does not
pass alone (ImagePullBackOff, ErrImagePull, CrashLoopBackOff, ...), the
Deployment's ReplicaFailure (quota, Pod Security admission) or
ProgressDeadlineExceeded, each with its message), Pending (no pods yet, or no
replicas wanted), Loading (pods loading or warming up), Ready (the current
spec serves with every desired replica), Degraded (serving, but with fewer
ready replicas than desired, a rollout that does not progress, or replicas
that fail as above), Retired (left at traffic 0 after serving, no replicas).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PENDING, LOADING, READY, DEGRADED, FAILED, RETIRED = "Pending", "Loading", "Ready", "Degraded", "Failed", "Retired"
RETIRED_MESSAGE = "left at traffic 0 after serving: no replicas; raise spec.traffic to bring it back"


@dataclass(frozen=True)
class PodReport:
    """One pod of the version, as the API and the pod's runtime describe it."""

    name: str
    ready: bool  # the Pod's Ready condition
    state: str | None = None  # the runtime's state: loading, ready, failed, draining (None: no answer)
    reason: str | None = None  # the runtime's reason, e.g. "sha256 mismatch: ..."
    terminated: str | None = None  # the last termination message of a crashed container
    waiting: str | None = None  # why the container does not run: ImagePullBackOff, CrashLoopBackOff, ...
    waiting_message: str | None = None


@dataclass(frozen=True)
class Observation:
    phase: str
    reason: str
    message: str
    ready_replicas: int
    replicas: int
    desired_replicas: int


# Container waiting reasons that mean the pods cannot run as they are (kubelet's names).
BLOCKING_WAITING_REASONS = frozenset(
    {
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


def now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def deployment_problem(deployment: Mapping[str, Any]) -> tuple[str, str] | None:
    """(reason, message) when the Deployment controller cannot run the pods: a ReplicaFailure
    (quota, Pod Security admission, ...) or a rollout past its progress deadline."""
    for cond in (deployment.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            return "ReplicaFailure", str(cond.get("message") or cond.get("reason") or "pods cannot be created")
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return "ProgressDeadlineExceeded", str(cond.get("message") or "the rollout passed its progress deadline")
    return None


def pod_problem(pods: Sequence[PodReport]) -> tuple[str, str] | None:
    """(reason, message) of the first pod whose container waits for a reason that will not pass alone."""
    for pod in pods:
        if pod.waiting in BLOCKING_WAITING_REASONS:
            text = pod.waiting_message or pod.waiting
            if pod.terminated:
                text += f"; last termination: {pod.terminated}"
            more = len([p for p in pods if p.waiting in BLOCKING_WAITING_REASONS]) - 1
            return pod.waiting, f"pod {pod.name}: {text}" + (f" (and {more} more pod(s))" if more else "")
    return None


def observe(
    deployment: Mapping[str, Any] | None,
    pods: Sequence[PodReport],
    *,
    desired_replicas: int,
    rejected: Exception | None = None,
    rejected_reason: str = "InvalidSpec",
    retired: bool = False,
    current_template: bool = True,
) -> Observation:
    """Decide the phase and its reason from the children. `current_template`: the Deployment runs
    the pod template of the version's current spec (False: it has not been updated yet)."""
    if rejected is not None:
        return Observation(FAILED, rejected_reason, str(rejected), 0, 0, desired_replicas)
    dep_status = (deployment or {}).get("status") or {}
    if retired and desired_replicas == 0:
        ready, replicas = int(dep_status.get("readyReplicas") or 0), int(dep_status.get("replicas") or 0)
        return Observation(RETIRED, "Retired", RETIRED_MESSAGE, ready, replicas, 0)
    if deployment is None:
        return Observation(PENDING, "Creating", "creating the Deployment", 0, 0, desired_replicas)
    return _observe_deployment(deployment, pods, desired_replicas, current_template)


def _observe_deployment(
    deployment: Mapping[str, Any], pods: Sequence[PodReport], desired: int, current_template: bool
) -> Observation:
    dep_status = deployment.get("status") or {}
    dep_meta = deployment.get("metadata") or {}
    ready = int(dep_status.get("readyReplicas") or 0)
    replicas = int(dep_status.get("replicas") or 0)
    updated = int(dep_status.get("updatedReplicas") or 0)
    # As `kubectl rollout status` judges it: the new template everywhere and no old pod left.
    rolled_out = (
        current_template
        and int(dep_status.get("observedGeneration") or 0) >= int(dep_meta.get("generation") or 1)
        and updated >= desired
        and replicas <= updated
    )
    problem, everywhere = _problem(deployment, pods)

    def obs(phase: str, reason: str, message: str) -> Observation:
        return Observation(phase, reason, message, ready, replicas, desired)

    if desired == 0:
        return obs(PENDING, "ScaledToZero", "no replicas: the version takes no traffic")
    if ready == 0:
        if problem is not None and everywhere:
            return obs(FAILED, *problem)
        if not pods:
            return obs(PENDING, "PodsStarting", "waiting for pods to start")
        loading = next((p.reason for p in pods if p.state == "loading" and p.reason), None)
        return obs(LOADING, "Loading", loading or "loading and warming up the model")
    of = f"{ready}/{desired} replicas ready"
    if ready >= desired and rolled_out and problem is None:
        return obs(READY, "Serving", of)
    if problem is not None:
        return obs(DEGRADED, problem[0], f"{of}; {problem[1]}")
    if not rolled_out:
        return obs(DEGRADED, "RollingOut", f"{of}; new pods are loading the model while the old ones serve")
    return obs(DEGRADED, "ReplicasNotReady", of)


def _problem(deployment: Mapping[str, Any], pods: Sequence[PodReport]) -> tuple[tuple[str, str] | None, bool]:
    """(reason, message) of what keeps pods from serving, and whether it holds for every pod.

    The runtime's own account comes first (it says why the model did not load), then the
    kubelet's waiting reasons, then the Deployment controller's, then crashes.
    """
    runtime_failed = [p for p in pods if p.state == "failed"]
    crashed = [p for p in pods if p.terminated and not p.ready and p.state != "failed"]
    blocked = [p for p in pods if p in runtime_failed or p in crashed or p.waiting in BLOCKING_WAITING_REASONS]
    everywhere = bool(pods) and len(blocked) == len(pods)
    if runtime_failed:
        return ("ModelLoadFailed", _failure_text(runtime_failed + crashed)), everywhere
    waiting = pod_problem(pods)
    if waiting is not None:
        return waiting, everywhere
    controller = deployment_problem(deployment)
    if controller is not None:
        return controller, True  # no pod can be made, or none became ready in time
    if crashed:
        return ("ModelLoadFailed", _failure_text(crashed)), everywhere
    return None, False


def _failure_text(failed: Sequence[PodReport]) -> str:
    if not failed:
        return ""
    first = failed[0]
    text = first.reason if first.state == "failed" and first.reason else (first.terminated or "the runtime failed")
    more = f" (and {len(failed) - 1} more pod(s))" if len(failed) > 1 else ""
    return f"pod {first.name}: {text}{more}"


def conditions_for(obs: Observation) -> list[dict[str, str]]:
    """The condition types of DESIGN.md section 2 that this observation decides."""
    serving = obs.ready_replicas > 0
    if obs.phase == FAILED and obs.reason != "ModelLoadFailed":
        loaded = ("False", obs.reason, obs.message)
    elif serving:
        loaded = ("True", "Loaded", "the model is loaded")
    elif obs.reason == "ModelLoadFailed":
        loaded = ("False", "ModelLoadFailed", obs.message)
    else:
        loaded = ("Unknown", obs.reason, obs.message)
    warmed = ("True", "WarmedUp", "warmup finished") if serving else ("False", obs.reason, obs.message)
    available = (
        ("True", "MinimumReplicasAvailable", f"{obs.ready_replicas}/{obs.desired_replicas} replicas ready")
        if serving
        else ("False", obs.reason, obs.message)
    )
    ready = ("True" if obs.phase == READY else "False", obs.reason, obs.message)
    rows = {"Ready": ready, "Available": available, "ModelLoaded": loaded, "WarmedUp": warmed}
    return [{"type": t, "status": s, "reason": r, "message": m} for t, (s, r, m) in rows.items()]


def can_serve(status: Mapping[str, Any] | None) -> bool:
    """Whether a version's pods can take traffic: Ready, or Degraded while some replicas are ready.

    A serving version that scales to a new share or rolls out is Degraded until its
    pod count matches; taking its share away then would move the traffic, and the
    replicas with it, back and forth (service mode sizes versions by their shares).
    """
    status = status or {}
    return status.get("phase") == READY or (
        status.get("phase") == DEGRADED and int(status.get("readyReplicas") or 0) > 0
    )


def traffic_condition(
    share: int, *, desired: int, ready: bool, rolled_back: bool = False, held: bool = False
) -> dict[str, str]:
    """TrafficAssigned: the effective share the version serves, and why it differs from the desired one."""
    if rolled_back:
        row = ("False", "RolledBack", f"serving 0% (desired {desired}%): the version was rolled back")
    elif share > 0 and held:
        row = (
            "True",
            "Held",
            f"serving {share}%: no Ready version of the model wants traffic, so the last split is kept",
        )
    elif share > 0:
        row = (
            "True",
            "Assigned",
            f"serving {share}% of the model's traffic (desired {desired}%, normalised over the Ready versions)",
        )
    elif desired == 0:
        row = ("False", "NoTrafficWanted", "spec.traffic is 0")
    elif not ready:
        row = ("False", "NotReady", f"desired {desired}%: a version takes traffic only once it is Ready")
    else:
        row = ("False", "NoShare", f"desired {desired}%, but the model's traffic is held by the serving versions")
    return {"type": "TrafficAssigned", "status": row[0], "reason": row[1], "message": row[2]}


def merge_conditions(
    old: Sequence[Mapping[str, Any]] | None, new: Sequence[Mapping[str, Any]], generation: int, timestamp: str
) -> list[dict[str, Any]]:
    """New conditions keep their lastTransitionTime while their status does not change.

    Conditions this module does not decide (TrafficAssigned, RetrainingTriggered, ...)
    are kept as they are.
    """
    previous = {c.get("type"): c for c in old or []}
    decided = {c["type"] for c in new}
    result: list[dict[str, Any]] = []
    for cond in new:
        before = previous.get(cond["type"])
        since = timestamp
        if before is not None and before.get("status") == cond["status"]:
            since = before.get("lastTransitionTime", timestamp)
        result.append({**cond, "observedGeneration": generation, "lastTransitionTime": since})
    result.extend(dict(c) for t, c in previous.items() if t not in decided)
    return result


# The order conditions are written in, whichever step decided them last (an unknown type goes after).
CONDITION_ORDER = (
    "Ready",
    "Available",
    "ModelLoaded",
    "WarmedUp",
    "TrafficAssigned",
    "RolledBack",
    "RetrainingTriggered",
    "Promoted",
)


def ordered(conditions: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """`conditions` in CONDITION_ORDER, so that a status is only written when a condition changed."""
    rank = {kind: i for i, kind in enumerate(CONDITION_ORDER)}
    indexed = sorted(enumerate(conditions), key=lambda item: (rank.get(str(item[1].get("type")), len(rank)), item[0]))
    return [dict(c) for _, c in indexed]


def build_status(
    old_status: Mapping[str, Any] | None,
    obs: Observation,
    *,
    generation: int,
    endpoint: str | None,
    version_endpoint: str | None,
    selector: str | None,
    timestamp: str | None = None,
) -> dict[str, Any]:
    """The status the version should have; equal to `old_status` when nothing changed."""
    old_status = old_status or {}
    status: dict[str, Any] = {
        "phase": obs.phase,
        "observedGeneration": generation,
        "replicas": obs.replicas,
        "readyReplicas": obs.ready_replicas,
        "desiredReplicas": obs.desired_replicas,
        "readyText": f"{obs.ready_replicas}/{obs.desired_replicas}",
        "conditions": merge_conditions(
            old_status.get("conditions"), conditions_for(obs), generation, timestamp or now()
        ),
    }
    if endpoint:
        status["endpoint"] = endpoint
    if version_endpoint:
        status["versionEndpoint"] = version_endpoint
    if selector:
        status["selector"] = selector
    return status


def status_patch(old_status: Mapping[str, Any] | None, new_status: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch from old to new for the keys this module owns (empty when nothing changed)."""
    old_status = old_status or {}
    return {k: v for k, v in new_status.items() if old_status.get(k) != v}


__all__ = [
    "DEGRADED",
    "FAILED",
    "LOADING",
    "PENDING",
    "READY",
    "RETIRED",
    "Observation",
    "PodReport",
    "build_status",
    "can_serve",
    "conditions_for",
    "deployment_problem",
    "merge_conditions",
    "observe",
    "ordered",
    "pod_problem",
    "status_patch",
    "traffic_condition",
]
