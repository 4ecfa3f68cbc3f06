"""Moving traffic between versions: the taker is Available before the giver scales down, always."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfleet_operator.core.traffic import Scale, apportion
from modelfleet_operator.core.transitions import (
    Mode,
    TransitionPlan,
    VersionTraffic,
    covered,
    plan_transition,
    routed,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DELAY, RETIRE = 30.0, 600.0


def v(name: str, weight: int, *, replicas: int = 2, **state: object) -> VersionTraffic:
    fields: dict[str, object] = {"eligible": True, **state}
    if "live" in fields and isinstance(fields["live"], int):
        fields["live"] = Scale(replicas=fields["live"])  # type: ignore[arg-type]
    return VersionTraffic(name=name, weight=weight, full=Scale(replicas=replicas), **fields)  # type: ignore[arg-type]


def plan(mode: Mode, *versions: VersionTraffic, now: datetime = T0) -> TransitionPlan:
    return plan_transition(versions, mode=mode, now=now, scale_down_delay=DELAY, retire_after=RETIRE)


def replicas(result: TransitionPlan) -> dict[str, int]:
    return {name: p.scale.replicas for name, p in result.versions.items()}


def shares(result: TransitionPlan) -> dict[str, int]:
    return {name: p.share for name, p in result.versions.items()}


# --- service mode --------------------------------------------------------------------------------


def test_a_lone_version_serves_as_soon_as_one_replica_is_available() -> None:
    # Nothing serves yet, so there is no capacity to protect: half of it beats none.
    result = plan("service", v("v1", 100, live=2, available=1))
    assert shares(result) == {"v1": 100} and replicas(result) == {"v1": 2}


def test_a_canary_warms_up_on_one_replica_while_the_stable_version_keeps_everything() -> None:
    result = plan(
        "service",
        v("v1", 100, serving=100, live=2, available=2),
        v("v2", 10, eligible=False),
    )
    assert shares(result) == {"v1": 100, "v2": 0}
    assert replicas(result) == {"v1": 2, "v2": 1}
    assert result.versions["v2"].target == 0 and not result.switched


def test_a_ready_canary_takes_its_share_at_once_when_its_replica_covers_it() -> None:
    result = plan(
        "service",
        v("v1", 100, serving=100, live=2, available=2),
        v("v2", 10, live=1, available=1),
    )
    assert result.switched and shares(result) == {"v1": 91, "v2": 9}
    assert replicas(result) == {"v1": 2, "v2": 1}


def test_promotion_scales_the_taker_up_first_and_the_giver_down_after_the_delay() -> None:
    before = [v("v1", 0, serving=91, live=2, available=2), v("v2", 100, serving=9, live=1, available=1)]
    # Step 1: v2 needs 2 Available replicas for 100%; until then the shares stay and v1 keeps its 2.
    step = plan("service", *before)
    assert not step.switched and shares(step) == {"v1": 91, "v2": 9}
    assert replicas(step) == {"v1": 2, "v2": 2}
    assert "waiting for v2 to have 2 Available replica(s) for 100%" in (step.versions["v2"].waiting or "")

    # Step 2: v2 is Available at 2: the shares switch, v1 holds its replicas for the delay.
    ready = [
        dataclasses.replace(before[0]),
        dataclasses.replace(before[1], live=Scale(replicas=2), available=2),
    ]
    switched = plan("service", *ready)
    assert switched.switched and shares(switched) == {"v1": 0, "v2": 100}
    assert replicas(switched) == {"v1": 2, "v2": 2}
    deadline = switched.versions["v1"].scale_down_at
    assert deadline == T0 + timedelta(seconds=DELAY) and switched.next_deadline() == deadline

    # Step 3: the delay, persisted in the status, is honoured after a restart; then v1 goes to 0.
    after = [
        dataclasses.replace(ready[0], serving=0, scale_down_at=deadline),
        dataclasses.replace(ready[1], serving=100),
    ]
    assert replicas(plan("service", *after, now=T0 + timedelta(seconds=29))) == {"v1": 2, "v2": 2}
    done = plan("service", *after, now=T0 + timedelta(seconds=30))
    assert replicas(done) == {"v1": 0, "v2": 2} and done.versions["v1"].scale_down_at is None
    assert done.versions["v1"].retired  # left at 0 after serving


def test_an_automatic_rollback_in_service_mode_takes_the_canary_out_as_soon_as_the_stable_covers_it() -> None:
    result = plan(
        "service",
        v("v1", 100, serving=91, live=2, available=2),
        v("v2", 10, serving=9, live=1, available=1, eligible=False, rolled_back=True),
    )
    assert result.switched and shares(result) == {"v1": 100, "v2": 0}
    assert replicas(result) == {"v1": 2, "v2": 0}  # no delay: its pods answer errors


def test_a_rollback_by_weights_gives_the_canary_zero_replicas_after_the_delay() -> None:
    result = plan(
        "service",
        v("v1", 100, serving=91, live=2, available=2),
        v("v2", 0, serving=9, live=1, available=1),
    )
    assert shares(result) == {"v1": 100, "v2": 0}
    assert replicas(result)["v2"] == 1 and result.versions["v2"].scale_down_at is not None
    later = plan(
        "service",
        v("v1", 100, serving=100, live=2, available=2),
        v("v2", 0, live=1, available=1, scale_down_at=result.versions["v2"].scale_down_at),
        now=T0 + timedelta(seconds=DELAY),
    )
    assert replicas(later) == {"v1": 2, "v2": 0}


def test_a_version_that_served_nothing_scales_down_without_waiting() -> None:
    result = plan("service", v("v1", 100, serving=100, live=2, available=2), v("v2", 0, live=1, available=0))
    assert replicas(result)["v2"] == 0 and not result.versions["v2"].retired


def test_deleting_the_serving_version_moves_its_share_before_its_finalizer_goes() -> None:
    start = [
        v("v1", 50, serving=50, live=1, available=1, eligible=False, deleting=True),
        v("v2", 50, serving=50, live=1, available=1),
    ]
    step = plan("service", *start)
    assert not step.switched and replicas(step) == {"v1": 1, "v2": 2}
    assert not step.versions["v1"].released
    switched = plan("service", start[0], dataclasses.replace(start[1], live=Scale(replicas=2), available=2))
    assert shares(switched) == {"v1": 0, "v2": 100} and not switched.versions["v1"].released
    gone = plan(
        "service",
        dataclasses.replace(start[0], serving=0, scale_down_at=switched.versions["v1"].scale_down_at),
        dataclasses.replace(start[1], serving=100, live=Scale(replicas=2), available=2),
        now=T0 + timedelta(seconds=DELAY),
    )
    assert gone.versions["v1"].released


def test_deleting_every_version_releases_them_at_once() -> None:
    result = plan(
        "service",
        v("v1", 50, serving=50, live=1, available=1, eligible=False, deleting=True),
        v("v2", 50, serving=50, live=1, available=1, eligible=False, deleting=True),
    )
    assert result.held and all(p.released for p in result.versions.values())


def test_when_no_eligible_version_wants_traffic_the_current_split_is_held() -> None:
    result = plan("service", v("v1", 0, serving=100, live=2, available=2))
    assert result.held and shares(result) == {"v1": 100} and replicas(result) == {"v1": 2}


def test_a_serving_version_that_lost_every_replica_hands_its_share_to_those_that_serve() -> None:
    result = plan(
        "service",
        v("v1", 50, serving=50, live=1, available=1),
        v("v2", 50, serving=50, live=1, available=0, eligible=False),
    )
    assert shares(result) == {"v1": 100, "v2": 0}
    assert replicas(result)["v1"] == 2


def test_autoscaler_bounds_follow_the_share_and_are_held_while_giving_it_up() -> None:
    auto = Scale(replicas=2, autoscaling=(2, 10))
    big = VersionTraffic("v1", 50, auto, eligible=True, serving=100, live=auto, available=2)
    small = VersionTraffic("v2", 50, auto, eligible=True, live=Scale(1, (1, 5)), available=1)
    result = plan("service", big, small)
    assert result.switched
    assert result.versions["v2"].scale.autoscaling == (1, 5)
    assert result.versions["v1"].scale.autoscaling == (2, 10)  # held: 50% would be (1, 5)


# --- gateway mode --------------------------------------------------------------------------------


def test_gateway_mode_keeps_every_version_warm_and_switches_the_route_when_the_taker_is_ready() -> None:
    result = plan(
        "gateway",
        v("v1", 0, serving=91, live=2, available=2),
        v("v2", 100, serving=9, live=2, available=2),
    )
    assert result.switched and shares(result) == {"v1": 0, "v2": 100}
    assert replicas(result) == {"v1": 2, "v2": 2}
    assert result.versions["v1"].scale_down_at == T0 + timedelta(seconds=RETIRE)


def test_gateway_mode_retires_a_version_left_at_zero_after_the_retire_delay() -> None:
    result = plan(
        "gateway",
        v("v1", 0, live=2, available=2, scale_down_at=T0, served_before=True),
        v("v2", 100, serving=100, live=2, available=2),
    )
    assert replicas(result) == {"v1": 0, "v2": 2} and result.versions["v1"].retired


def test_gateway_mode_keeps_a_version_that_never_served_warm_for_pinned_requests() -> None:
    result = plan("gateway", v("v1", 100, serving=100, live=2, available=2), v("v2", 0, live=2, available=2))
    assert replicas(result) == {"v1": 2, "v2": 2} and not result.versions["v2"].retired


def test_gateway_mode_keeps_a_rolled_back_version_warm() -> None:
    result = plan(
        "gateway",
        v("v1", 100, serving=50, live=2, available=2),
        v("v2", 100, serving=50, live=2, available=2, eligible=False, rolled_back=True),
    )
    assert shares(result) == {"v1": 100, "v2": 0} and replicas(result) == {"v1": 2, "v2": 2}


def test_coverage_counts_ready_replicas_against_the_applied_shares() -> None:
    assert covered({"v1": 50, "v2": 50}, {"v1": 1, "v2": 1}, {"v1": 2, "v2": 2})
    assert not covered({"v1": 100}, {"v1": 1}, {"v1": 2})
    assert covered({"v1": 0, "v2": 100}, {"v1": 0, "v2": 2}, {"v1": 2, "v2": 2})


# --- every transition, simulated ---------------------------------------------------------------------


@dataclasses.dataclass
class Simulated:
    """A version in the simulated cluster: pods come up one per step, go at once."""

    name: str
    weight: int
    full: int
    live: int | None = None
    available: int = 0
    serving: int = 0
    scale_down_at: datetime | None = None
    rolled_back: bool = False
    deleting: bool = False
    served_before: bool = False

    def view(self) -> VersionTraffic:
        return VersionTraffic(
            name=self.name,
            weight=self.weight,
            full=Scale(replicas=self.full),
            eligible=self.available > 0 and not self.rolled_back and not self.deleting,
            serving=self.serving,
            live=None if self.live is None else Scale(replicas=self.live),
            available=self.available,
            scale_down_at=self.scale_down_at,
            rolled_back=self.rolled_back,
            deleting=self.deleting,
            served_before=self.served_before,
        )


def applied(mode: Mode, cluster: list[Simulated]) -> dict[str, float]:
    """The share each version receives now: the route's weights, or the ready-endpoint ratio."""
    return routed(mode, {s.name: s.serving for s in cluster}, {s.name: s.available for s in cluster})


def step(mode: Mode, cluster: list[Simulated], now: datetime) -> list[Simulated]:
    result = plan_transition([s.view() for s in cluster], mode=mode, now=now, scale_down_delay=DELAY, retire_after=0)
    kept = []
    for s in cluster:
        p = result.versions[s.name]
        if p.released:
            continue
        s.served_before = s.served_before or p.share > 0 or p.scale_down_at is not None or p.retired
        s.serving, s.scale_down_at, s.live = p.share, p.scale_down_at, p.scale.replicas
        s.available = min(s.available, s.live)  # pods of a scale-down go at once
        kept.append(s)
    return kept


events = st.lists(
    st.one_of(
        st.tuples(st.just("weight"), st.integers(0, 5), st.integers(0, 100)),
        st.tuples(st.just("add"), st.integers(0, 5), st.integers(0, 100)),
        st.tuples(st.just("delete"), st.integers(0, 5), st.just(0)),
        st.tuples(st.just("rollback"), st.integers(0, 5), st.just(0)),
        st.tuples(st.just("pod"), st.integers(0, 5), st.just(0)),
        st.tuples(st.just("wait"), st.just(0), st.integers(1, 40)),
    ),
    max_size=60,
)


def apply_event(cluster: list[Simulated], event: tuple[str, int, int], replicas: int, names: list[str]) -> None:
    kind, index, value = event
    if kind == "add":
        names.append(f"v{len(names)}")
        cluster.append(Simulated(names[-1], weight=value, full=replicas))
        return
    if not cluster:
        return
    target = cluster[index % len(cluster)]
    if kind == "weight":
        target.weight = value
    elif kind == "delete":
        target.deleting = True
    elif kind == "rollback":
        target.rolled_back = True
    elif kind == "pod" and target.live is not None and target.available < target.live:
        target.available += 1


@pytest.mark.parametrize("mode", ["service", "gateway"])
@settings(deadline=None, max_examples=300)
@given(replicas=st.integers(1, 5), history=events)
def test_no_transition_ever_leaves_the_applied_shares_without_ready_replicas(
    mode: Mode, replicas: int, history: list[tuple[str, int, int]]
) -> None:
    """Weights change, versions come and go, canaries roll back, pods come up one at a time:
    after every step that starts covered the ready replicas cover the shares the traffic layer applies, the
    shares sum to 100 whenever something serves, and at rest the desired split is reached."""
    names: list[str] = []
    cluster = [Simulated("v0", weight=100, full=replicas)]
    names.append("v0")
    now = T0
    for event in history:
        apply_event(cluster, event, replicas, names)
        if event[0] == "wait":
            now += timedelta(seconds=event[2])
        before = applied(mode, cluster)
        # Going from serving nothing to serving on fewer replicas than wanted drops nothing; and once
        # every version is being deleted or rolled back, nothing is left to hand the traffic to.
        left = any(s.available for s in cluster if not s.deleting and not s.rolled_back)
        was_covered = (
            left
            and any(before.values())
            and covered(before, {s.name: s.available for s in cluster}, {s.name: s.full for s in cluster})
        )
        cluster = step(mode, cluster, now)
        if was_covered:
            assert covered(
                applied(mode, cluster), {s.name: s.available for s in cluster}, {s.name: s.full for s in cluster}
            ), (
                event,
                cluster,
            )
        total = sum(s.serving for s in cluster)
        assert total in (0, 100), cluster

    # At rest (every pod up, every hold over) the split is the eligible weights, normalised.
    for _ in range(4 * replicas + 4):
        for s in cluster:
            if s.live is not None and s.available < s.live:
                s.available += 1
        now += timedelta(seconds=DELAY)
        cluster = step(mode, cluster, now)
    wanting = {s.name: s.weight for s in cluster if s.available > 0 and not s.rolled_back and s.weight > 0}
    if wanting:
        assert {s.name: s.serving for s in cluster if s.serving} == {
            n: share for n, share in apportion(wanting).items() if share
        }
