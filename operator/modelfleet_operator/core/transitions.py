"""Moving a model's traffic between its versions without ever dropping capacity, as a pure function.

`plan_transition` takes what one reconcile of a model knows about each version
(`VersionTraffic`: desired weight, whether it may take traffic, the share it
serves now, its live replicas and readiness, the deadlines persisted in its
status) and returns, for each version, the share it serves from now on, the
replicas (or autoscaler bounds) to ask for, and the deadline to persist.

The rules (DESIGN.md section 2, issue 10):

- Desired shares: the weights of the versions that may take traffic
  (`eligible`), normalised to 100 (`traffic.apportion`). When none wants
  traffic the current shares are kept (`held`): never route to nothing while
  something still works.
- Capacity: a version never has fewer replicas than its *current* share needs
  (`traffic.needed`). A version that takes a share scales up at once; the
  shares switch to the desired ones only when every taker is Available at the
  replicas its new share needs (when nothing serves yet there is nothing to
  protect: the versions with an Available replica serve at once). Only then
  may the givers scale down, and only after their delay
  (`scale-down-delay-seconds`; 0 for a version rolled back automatically in
  service mode, whose pods answer errors; `retire-after-seconds` for a version
  left at weight 0 in gateway mode, which stays warm for an instant rollback).
  The deadline is persisted (status.scaleDownAt), so a restarted operator keeps
  it.
- A serving version with no ready replica has lost its capacity already: its
  share is spread over the versions that still serve until the switch.
- Service mode sizes each version to its share (`ceil(replicas x share / 100)`),
  a version warming up runs 1 replica while others serve (all of them when none
  does), and a version at weight 0 or rolled back runs none. Gateway mode keeps
  every version at its full replicas (the route splits exactly); a version left
  at weight 0 is scaled to 0 and Retired after `retire-after-seconds`.
- A version being deleted gives its share away like any other; its finalizer may
  go once it serves nothing and its delay has passed (`released`), at once when
  no other version can take its traffic.

"Ready replicas cover the current shares" (what the integration tests sample):
every version v with a share s_v > 0 has at least `needed(R_v, s_v)` ready
replicas, where R_v is its replicas at full share and s_v is the share that
the traffic layer applies now (the HTTPRoute's weights in gateway mode; the
ready-endpoint ratio in service mode, where it reduces to: the model's ready
pods are at least R_v for every version that has one). `covered` checks it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from modelfleet_operator.core.traffic import Scale, apportion, needed, scale_at

Mode = Literal["service", "gateway"]


@dataclass(frozen=True)
class VersionTraffic:
    """One version of a model as the transition planner sees it.

    `full`: its replicas (or autoscaler bounds) at a share of 100.
    `eligible`: it may take traffic now (valid, Ready, not rolled back, not being deleted).
    `serving`: the share it serves now (status.servingTraffic).
    `live`: the replicas (or bounds) its children ask for now; None before its Deployment exists.
    `available`: its Available replicas, as its Deployment reports them.
    `scale_down_at`: the persisted end of its hold (status.scaleDownAt).
    `rolled_back`: rolled back automatically (its weight counts as 0).
    `served_before`: it had a share at some point (say, it is Retired); serving one now or
    holding replicas after giving one up counts too. At weight 0 such a version retires,
    while one that never served waits (service mode) or stays warm for pinned requests (gateway).
    """

    name: str
    weight: int
    full: Scale
    eligible: bool
    serving: int = 0
    live: Scale | None = None
    available: int = 0
    scale_down_at: datetime | None = None
    rolled_back: bool = False
    deleting: bool = False
    served_before: bool = False


@dataclass(frozen=True)
class VersionPlan:
    """What one version does from now on.

    `share`: the share it serves (status.servingTraffic; the route weight in gateway mode).
    `target`: the share it serves once the transition completes.
    `scale`: the replicas or bounds its Deployment and autoscaler ask for.
    `scale_down_at`: the deadline to persist (None: no hold).
    `retired`: at weight 0 with no replicas after having served.
    `released`: being deleted and done handing over: its finalizer may go.
    `waiting`: why the switch to `target` waits, for people (None: it does not).
    """

    share: int
    target: int
    scale: Scale
    scale_down_at: datetime | None = None
    retired: bool = False
    released: bool = False
    waiting: str | None = None


@dataclass(frozen=True)
class TransitionPlan:
    versions: Mapping[str, VersionPlan]
    switched: bool  # the shares moved to the desired ones in this step
    held: bool  # nothing eligible wants traffic: the current shares are kept

    def share(self, name: str) -> int:
        plan = self.versions.get(name)
        return plan.share if plan else 0

    def next_deadline(self) -> datetime | None:
        """The earliest hold that ends: when the model must be reconciled again."""
        deadlines = [p.scale_down_at for p in self.versions.values() if p.scale_down_at is not None]
        return min(deadlines) if deadlines else None


def desired_shares(versions: Sequence[VersionTraffic], current: Mapping[str, int]) -> tuple[dict[str, int], bool]:
    """(shares at the end of the transition, held): the eligible weights normalised to 100; or, when
    no eligible version wants traffic, the current shares (`held`) without those of versions being
    deleted, which go to the versions that stay."""
    wanting = {v.name: v.weight for v in versions if v.eligible and v.weight > 0 and not v.rolled_back}
    if wanting:
        shares = apportion(wanting)
        return {v.name: shares.get(v.name, 0) for v in versions}, False
    staying = {v.name: current.get(v.name, 0) for v in versions if not v.deleting and current.get(v.name, 0) > 0}
    if not staying:
        return {v.name: current.get(v.name, 0) for v in versions}, True
    kept = apportion(staying)
    return {v.name: kept.get(v.name, 0) for v in versions}, True


def serving_now(versions: Sequence[VersionTraffic]) -> dict[str, int]:
    """The current shares, without the versions that have no available replica (their share is
    lost capacity already): renormalised over the rest, or all zero when nothing is available."""
    alive = {v.name: v.serving for v in versions if v.serving > 0 and v.available > 0}
    if not alive:
        return {v.name: 0 for v in versions}
    if sum(alive.values()) == sum(v.serving for v in versions):
        return {v.name: v.serving for v in versions}
    shares = apportion(alive)
    return {v.name: shares.get(v.name, 0) for v in versions}


def _available_part(versions: Sequence[VersionTraffic], target: Mapping[str, int]) -> dict[str, int]:
    """`target` over the versions with an Available replica, renormalised (all zero when none has one)."""
    able = {v.name: target[v.name] for v in versions if target[v.name] > 0 and v.available > 0}
    if not able:
        return {v.name: 0 for v in versions}
    shares = apportion(able)
    return {v.name: shares.get(v.name, 0) for v in versions}


def _taker_waits(v: VersionTraffic, target: int, current: int) -> str | None:
    """Why version `v` cannot take `target` yet (None: it can, or it takes nothing)."""
    if target <= current:
        return None
    need = needed(v.full, target)
    if v.available >= need and (v.live is None or v.live.floor >= need):
        return None
    return f"waiting for {v.name} to have {need} Available replica(s) for {target}% (has {v.available})"


def _goal(v: VersionTraffic, target: int, others_serve: bool, mode: Mode) -> Scale:
    """The replicas a version runs at the end of the transition (before any hold)."""
    if v.deleting:
        return Scale(replicas=0)
    if mode == "gateway":
        # Every version stays warm at full replicas; weight 0 retires it (after its hold).
        return Scale(replicas=0) if v.weight == 0 and target == 0 and _has_served(v) else v.full
    if target > 0:
        return scale_at(v.full, target)
    if v.weight == 0 or v.rolled_back:
        return Scale(replicas=0)
    # Warming up (or waiting for its share): one replica beside serving versions, all of them alone.
    if others_serve:
        return Scale(replicas=1, autoscaling=(1, 1) if v.full.autoscaling else None)
    return v.full


def _has_served(v: VersionTraffic) -> bool:
    return v.served_before or v.serving > 0 or v.scale_down_at is not None


def _delay(v: VersionTraffic, mode: Mode, scale_down_delay: float, retire_after: float) -> float:
    """How long a version keeps its replicas once it may scale down."""
    if v.serving <= 0 and v.scale_down_at is None:
        return 0.0  # it served nothing: there is no traffic to protect
    if mode == "service" and v.rolled_back:
        return 0.0  # its pods answer errors: out of the endpoints as soon as the others carry the load
    if mode == "gateway" and v.weight == 0 and not v.deleting:
        return max(retire_after, scale_down_delay)
    return scale_down_delay


def plan_transition(
    versions: Sequence[VersionTraffic],
    *,
    mode: Mode,
    now: datetime,
    scale_down_delay: float,
    retire_after: float,
) -> TransitionPlan:
    """One step of a model's traffic transition (see the module docstring)."""
    current = serving_now(versions)
    target, held = desired_shares(versions, current)
    waits = {v.name: _taker_waits(v, target[v.name], current[v.name]) for v in versions}
    nothing_serves = not any(current.values())
    if nothing_serves:
        # Nothing to protect: serve on whatever is Available now, from the versions that have some.
        shares = _available_part(versions, target)
        switched = shares != current
    else:
        switched = target != current and not any(waits.values())
        shares = target if switched else current
    waiting = None if switched and shares == target else next((w for w in waits.values() if w), None)

    plans: dict[str, VersionPlan] = {}
    for v in versions:
        share = shares[v.name]
        others_serve = any(s > 0 for n, s in shares.items() if n != v.name)
        # Never below what the share it serves now needs; up to what its target needs at once.
        floor = scale_at(v.full, share) if share > 0 else Scale(replicas=0)
        goal = _goal(v, target[v.name], others_serve, mode)
        wanted = floor.union(goal) if share > 0 else goal
        scale, deadline = _hold(v, wanted, now, _delay(v, mode, scale_down_delay, retire_after))
        plans[v.name] = VersionPlan(
            share=share,
            target=target[v.name],
            scale=scale,
            scale_down_at=deadline,
            retired=v.weight == 0 and share == 0 and scale.peak == 0 and _has_served(v) and not v.deleting,
            released=v.deleting and share == 0 and (deadline is None or held),
            waiting=waiting if target[v.name] != share else None,
        )
    plans = _keep_coverage(mode, versions, plans)
    if held and not any(target[v.name] > 0 for v in versions if not v.deleting):
        # No version that stays serves or could take a deleted version's traffic: it just goes.
        plans = {n: _release_now(p) if _deleting(versions, n) else p for n, p in plans.items()}
    return TransitionPlan(versions=plans, switched=switched, held=held)


def _left(v: VersionTraffic, p: VersionPlan) -> int:
    """Available replicas a version keeps once the plan's scale-down (or release) is done."""
    return 0 if p.released else min(v.available, p.scale.floor)


def _keep_coverage(
    mode: Mode, versions: Sequence[VersionTraffic], plans: dict[str, VersionPlan]
) -> dict[str, VersionPlan]:
    """Put off this step's scale-downs when they alone would leave the routed shares uncovered.

    Service mode routes by ready endpoints, so a version's pods carry traffic whatever its
    planned share (a canary warming up, a version being deleted): removing them is safe only
    when the pods left cover the split they make.
    """
    full = {v.name: v.full.floor for v in versions}
    now_ready = {v.name: v.available for v in versions}
    left = {v.name: _left(v, plans[v.name]) for v in versions}
    shares = {n: p.share for n, p in plans.items()}
    if covered(routed(mode, shares, left), left, full) or not covered(routed(mode, shares, now_ready), now_ready, full):
        return plans
    kept = dict(plans)
    for v in versions:
        p = plans[v.name]
        if left[v.name] < v.available and v.live is not None:
            kept[v.name] = dataclasses.replace(p, scale=v.live.union(p.scale), released=False, retired=False)
    return kept


def routed(mode: Mode, shares: Mapping[str, int], ready: Mapping[str, int]) -> dict[str, float]:
    """The share of requests each version receives: the route's weights in gateway mode; in service
    mode the ratio of its ready endpoints, whatever the plan says."""
    if mode == "gateway":
        return {n: float(s) for n, s in shares.items()}
    pods = sum(ready.values())
    return {n: 100.0 * r / pods if pods else 0.0 for n, r in ready.items()}


def _deleting(versions: Sequence[VersionTraffic], name: str) -> bool:
    return any(v.name == name and v.deleting for v in versions)


def _release_now(plan: VersionPlan) -> VersionPlan:
    return VersionPlan(share=0, target=0, scale=Scale(replicas=0), released=True)


def _hold(v: VersionTraffic, wanted: Scale, now: datetime, delay: float) -> tuple[Scale, datetime | None]:
    """Scale up at once; scale down only once the hold that starts now (or was persisted) ends."""
    if v.live is None or not v.live.exceeds(wanted):
        return wanted, None
    deadline = v.scale_down_at or now + timedelta(seconds=delay)
    if now >= deadline:
        return wanted, None
    return v.live.union(wanted), deadline


def covered(shares: Mapping[str, float], ready: Mapping[str, int], full: Mapping[str, int]) -> bool:
    """Whether ready replicas cover the shares the traffic layer applies now (the module docstring).

    `shares`: the fraction of the model's requests (0-100) each version receives now;
    `ready`: its ready replicas; `full`: its replicas at a share of 100.
    """
    return all(
        ready.get(name, 0) >= math.ceil(full.get(name, 0) * share / 100 - 1e-9)
        for name, share in shares.items()
        if share > 0
    )


__all__ = [
    "Mode",
    "TransitionPlan",
    "VersionPlan",
    "VersionTraffic",
    "covered",
    "desired_shares",
    "plan_transition",
    "routed",
    "serving_now",
]
