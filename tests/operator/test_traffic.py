"""Traffic across a model's versions: shares, service-mode replicas, the gateway HTTPRoute."""

from __future__ import annotations

import jsonschema
import kubernetes_validate
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfleet_operator.config import OperatorConfig
from modelfleet_operator.traffic import (
    Scale,
    TrafficSplit,
    VersionState,
    apportion,
    build_httproute,
    effective_shares,
    gateway_mode_scales,
    service_mode_scales,
)

GATEWAY = OperatorConfig(routing="gateway", gateway="infra/public")


def v(
    name: str, weight: int, ready: bool = True, replicas: int = 4, serving: int = 0, autoscaling=None
) -> VersionState:
    return VersionState(
        name=name,
        version=name.rsplit("-", 1)[-1],
        weight=weight,
        ready=ready,
        replicas=replicas,
        serving=serving,
        autoscaling=autoscaling,
    )


versions_strategy = st.lists(
    st.builds(
        VersionState,
        name=st.text("abcdefgh", min_size=1, max_size=4),
        version=st.just("1"),
        weight=st.integers(0, 100),
        ready=st.booleans(),
        replicas=st.integers(0, 20),
        serving=st.integers(0, 100),
    ),
    min_size=0,
    max_size=12,
    unique_by=lambda s: s.name,
)


@settings(deadline=None)
@given(versions_strategy)
def test_shares_sum_to_100_whenever_a_ready_version_wants_traffic(versions: list[VersionState]) -> None:
    split = effective_shares(versions)
    if any(s.ready and s.weight > 0 for s in versions):
        assert not split.held
        assert sum(split.shares.values()) == 100
    else:
        assert split.held
        assert dict(split.shares) == {s.name: s.serving for s in versions}


@settings(deadline=None)
@given(versions_strategy)
def test_non_ready_and_zero_weight_versions_never_get_a_new_share(versions: list[VersionState]) -> None:
    split = effective_shares(versions)
    if split.held:
        return
    for s in versions:
        if not s.ready or s.weight == 0:
            assert split.share(s.name) == 0
        else:
            assert split.share(s.name) >= 1  # a Ready version that asks for traffic serves some


@settings(deadline=None)
@given(versions_strategy, st.randoms(use_true_random=False))
def test_shares_do_not_depend_on_the_order_of_versions(versions: list[VersionState], rnd) -> None:
    shuffled = list(versions)
    rnd.shuffle(shuffled)
    assert dict(effective_shares(versions).shares) == dict(effective_shares(shuffled).shares)


@settings(deadline=None)
@given(st.dictionaries(st.text("xyz", min_size=1, max_size=3), st.integers(1, 100), min_size=1, max_size=10))
def test_apportion_stays_within_one_point_of_the_exact_share(weights: dict[str, int]) -> None:
    shares = apportion(weights)
    total = sum(weights.values())
    assert sum(shares.values()) == 100
    for name, weight in weights.items():
        assert abs(shares[name] - 100 * weight / total) < 2


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ({"a": 90, "b": 10}, {"a": 90, "b": 10}),
        ({"a": 100, "b": 10}, {"a": 91, "b": 9}),
        ({"a": 1, "b": 1, "c": 1}, {"a": 34, "b": 33, "c": 33}),
        ({"a": 50, "b": 50}, {"a": 50, "b": 50}),
        ({"a": 100, "b": 0}, {"a": 100, "b": 0}),
        ({"a": 1, "b": 100, "c": 100}, {"a": 1, "b": 50, "c": 49}),
    ],
)
def test_apportion_examples(weights: dict[str, int], expected: dict[str, int]) -> None:
    assert apportion(weights) == expected


def test_a_canary_gets_nothing_until_ready_then_its_share() -> None:
    warming = effective_shares([v("m-1", 90, serving=100), v("m-2", 10, ready=False)])
    assert dict(warming.shares) == {"m-1": 100, "m-2": 0}
    ready = effective_shares([v("m-1", 90, serving=100), v("m-2", 10)])
    assert dict(ready.shares) == {"m-1": 90, "m-2": 10}


def test_when_nothing_is_ready_the_last_serving_versions_keep_serving() -> None:
    split = effective_shares([v("m-1", 100, ready=False, serving=70), v("m-2", 100, ready=False, serving=30)])
    assert split.held and dict(split.shares) == {"m-1": 70, "m-2": 30}


def test_service_mode_replicas_follow_the_shares() -> None:
    versions = [v("m-1", 90, replicas=4), v("m-2", 10, replicas=4)]
    scales = service_mode_scales(versions, effective_shares(versions))
    assert scales == {"m-1": Scale(4), "m-2": Scale(1)}  # ceil(4*0.9), ceil(4*0.1)


def test_a_canary_warms_up_on_one_replica_while_the_stable_version_keeps_its_replicas() -> None:
    versions = [v("m-1", 100, replicas=4, serving=100), v("m-2", 100, ready=False, replicas=4)]
    split = effective_shares(versions)
    assert service_mode_scales(versions, split) == {"m-1": Scale(4), "m-2": Scale(1)}


def test_a_lone_version_that_is_not_ready_runs_all_its_replicas() -> None:
    versions = [v("m-1", 100, ready=False, replicas=3)]
    assert service_mode_scales(versions, effective_shares(versions)) == {"m-1": Scale(3)}


def test_promotion_and_rollback_in_service_mode() -> None:
    # promoted: v2 takes everything, v1 is parked at 0 replicas but its Deployment stays
    promoted = [v("m-1", 0, replicas=4, serving=10), v("m-2", 100, replicas=4, serving=90)]
    split = effective_shares(promoted)
    assert dict(split.shares) == {"m-1": 0, "m-2": 100}
    assert service_mode_scales(promoted, split) == {"m-1": Scale(0), "m-2": Scale(4)}
    # rollback: v1 asks for everything again but is not Ready (0 pods): v2 keeps serving meanwhile
    rolling_back = [v("m-1", 100, ready=False, replicas=4), v("m-2", 0, replicas=4, serving=100)]
    split = effective_shares(rolling_back)
    assert split.held and dict(split.shares) == {"m-1": 0, "m-2": 100}
    assert service_mode_scales(rolling_back, split) == {"m-1": Scale(1), "m-2": Scale(4)}
    # v1 Ready again: it takes over and v2 is parked
    done = [v("m-1", 100, replicas=4), v("m-2", 0, replicas=4, serving=100)]
    split = effective_shares(done)
    assert service_mode_scales(done, split) == {"m-1": Scale(4), "m-2": Scale(0)}


def test_service_mode_scales_hpa_bounds_by_share() -> None:
    versions = [v("m-1", 75, autoscaling=(2, 10)), v("m-2", 25, autoscaling=(2, 10))]
    scales = service_mode_scales(versions, effective_shares(versions))
    assert scales["m-1"] == Scale(replicas=2, autoscaling=(2, 8))
    assert scales["m-2"] == Scale(replicas=1, autoscaling=(1, 3))


@settings(deadline=None)
@given(versions_strategy)
def test_service_mode_never_scales_a_version_without_share_or_weight_up(versions: list[VersionState]) -> None:
    split = effective_shares(versions)
    scales = service_mode_scales(versions, split)
    for s in versions:
        share = split.share(s.name)
        if share > 0:
            assert scales[s.name].replicas == -(-s.replicas * share // 100)
        elif s.weight == 0:
            assert scales[s.name] == Scale(0)
        else:
            assert scales[s.name].replicas <= max(1, s.replicas)


def test_gateway_mode_keeps_every_version_at_full_replicas() -> None:
    versions = [v("m-1", 0, replicas=3), v("m-2", 100, ready=False, replicas=2, autoscaling=(2, 5))]
    assert gateway_mode_scales(versions) == {"m-1": Scale(3), "m-2": Scale(2, (2, 5))}


def _route(versions: list[VersionState], split: TrafficSplit | None = None, config: OperatorConfig = GATEWAY) -> dict:
    return build_httproute(
        model="m",
        namespace="ml",
        versions=versions,
        split=split or effective_shares(versions),
        config=config,
        labels={"app.kubernetes.io/name": "m"},
        owner_references=[
            {"apiVersion": "serving.modelfleet.dev/v1alpha1", "kind": "ModelVersion", "name": "m-1", "uid": "u"}
        ],
    )


def test_httproute_splits_by_share_and_pins_by_header(httproute_validator: jsonschema.Validator) -> None:
    versions = [v("m-1", 90), v("m-2", 10), v("m-3", 50, ready=False)]
    route = _route(versions)
    assert list(httproute_validator.iter_errors(route)) == []
    assert route["metadata"]["name"] == "m"
    assert route["spec"]["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public", "namespace": "infra"}
    ]
    *pins, default = route["spec"]["rules"]
    assert [(r["matches"][0]["headers"][0]["value"], r["backendRefs"][0]["name"]) for r in pins] == [
        ("1", "m-1"),
        ("2", "m-2"),
        ("3", "m-3"),
    ]
    assert all(r["matches"][0]["headers"][0]["name"] == "x-model-version" for r in pins)
    assert [(b["name"], b["port"], b["weight"]) for b in default["backendRefs"]] == [("m-1", 80, 90), ("m-2", 80, 10)]
    assert "headers" not in default["matches"][0]


def test_httproute_to_a_gateway_in_the_same_namespace_has_no_namespace(
    httproute_validator: jsonschema.Validator,
) -> None:
    route = _route([v("m-1", 100)], config=OperatorConfig(routing="gateway", gateway="public"))
    assert route["spec"]["parentRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public"}]
    assert list(httproute_validator.iter_errors(route)) == []


@settings(max_examples=50, deadline=None)
@given(versions_strategy.filter(bool))
def test_every_httproute_validates_against_the_gateway_api_schema(
    httproute_validator: jsonschema.Validator, versions: list[VersionState]
) -> None:
    route = _route(versions)
    assert list(httproute_validator.iter_errors(route)) == []
    weights = {b["name"]: b["weight"] for b in route["spec"]["rules"][-1]["backendRefs"]}
    split = effective_shares(versions)
    assert weights == {name: share for name, share in split.shares.items() if share > 0}


def test_httproute_with_many_versions_stays_within_the_rule_limit(httproute_validator: jsonschema.Validator) -> None:
    versions = [v(f"m-{i}", 10) for i in range(20)]
    route = _route(versions)
    assert len(route["spec"]["rules"]) == 16
    assert list(httproute_validator.iter_errors(route)) == []


@pytest.mark.parametrize("version", ["1.30.0", "1.37.0"])
def test_httproute_metadata_is_valid_kubernetes(version: str) -> None:
    # kubernetes-validate skips custom kinds; this checks it does not choke on the route
    route = _route([v("m-1", 100)])
    kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": route["metadata"]}, version, strict=True
    )
