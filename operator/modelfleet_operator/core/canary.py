"""Which versions of a model the canary analysis judges, and what it decides about one, purely.

The model's stable version (the one serving the largest share; the oldest on a tie) is never
judged; every other version with `spec.rollout` that serves a share is a candidate, compared
with the stable version in the same window (`rollout.judge`). A version rolled back for its
current spec stays so (its status remembers it) until a person changes the spec and it is
Ready with the new one; then it is judged again from a fresh window.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from modelfleet_operator.config import OperatorConfig
from modelfleet_operator.core.rollout import Judgement, Window, judge
from modelfleet_operator.core.snapshot import (
    ModelSnapshot,
    Observations,
    Version,
    condition_of,
    generation_of,
    meta_of,
    status_of,
    versions_of,
)
from modelfleet_operator.core.timestamps import rfc3339
from modelfleet_operator.spec import API_VERSION, KIND

ROLLED_BACK = "RolledBack"
COMPONENT = "modelfleet-operator"
# How often the canary analysis reads the pods' counters while a candidate serves.
ANALYSIS_INTERVAL_SECONDS = 5.0


def rolled_back_for_spec(mv: Mapping[str, Any]) -> bool:
    """Rolled back for its current spec: it takes no traffic until a person changes the spec."""
    if not (status_of(mv).get("rollout") or {}).get("rolledBack"):
        return False
    cond = condition_of(mv, ROLLED_BACK)
    return cond is not None and cond.get("status") == "True" and cond.get("observedGeneration") == generation_of(mv)


def stable_version(versions: Iterable[Version]) -> str | None:
    """The model's stable version: the one serving the largest share now (the oldest on a tie)."""
    serving = [v for v in versions if v.takes_part and v.serving > 0]
    if not serving:
        return None
    best = min(serving, key=lambda v: (-v.serving, str(meta_of(v.mv).get("creationTimestamp") or ""), v.name))
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


def verdict(
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
        cond = condition_of(v.mv, ROLLED_BACK) or {}
        return Verdict(rolled_back=True, message=str(cond.get("message") or "rolled back"))
    previous = dict(status_of(v.mv).get("rollout") or {})
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
                "message": f"the spec changed (generation {generation_of(v.mv)}); the version is judged again",
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
    meta = meta_of(mv)
    stamp = rfc3339(moment)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        # One per rolled-back spec: posted again after a failed status write, it answers 409.
        "metadata": {"name": f"{meta['name']}.rolled-back.g{generation_of(mv)}", "namespace": meta["namespace"]},
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


__all__ = [
    "ANALYSIS_INTERVAL_SECONDS",
    "ROLLED_BACK",
    "Verdict",
    "analysis_targets",
    "candidates",
    "rollback_event",
    "rolled_back_for_spec",
    "stable_version",
    "verdict",
]
