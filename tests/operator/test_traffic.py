"""Traffic arithmetic: integer shares from weights, replicas and autoscaler bounds from shares."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfleet_operator.core.traffic import Scale, apportion, needed, scale_at


@settings(deadline=None)
@given(st.dictionaries(st.text("xyz", min_size=1, max_size=3), st.integers(1, 100), min_size=1, max_size=10))
def test_apportion_stays_within_one_point_of_the_exact_share(weights: dict[str, int]) -> None:
    shares = apportion(weights)
    total = sum(weights.values())
    assert sum(shares.values()) == 100
    for name, weight in weights.items():
        assert abs(shares[name] - 100 * weight / total) < 2
        assert shares[name] >= 1  # a Ready version that asks for traffic serves some


@settings(deadline=None)
@given(
    st.dictionaries(st.text("abcdefgh", min_size=1, max_size=4), st.integers(0, 100), min_size=1, max_size=12).filter(
        lambda w: sum(w.values()) > 0
    ),
    st.randoms(use_true_random=False),
)
def test_shares_do_not_depend_on_the_order_of_versions(weights: dict[str, int], rnd) -> None:
    items = list(weights.items())
    rnd.shuffle(items)
    assert apportion(dict(items)) == apportion(weights)


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


def test_apportion_needs_a_positive_weight() -> None:
    with pytest.raises(ValueError, match="positive total weight"):
        apportion({"a": 0})


def test_service_mode_replicas_follow_the_share_rounded_up() -> None:
    full = Scale(replicas=4)
    assert [scale_at(full, s).replicas for s in (0, 1, 10, 25, 26, 90, 100)] == [0, 1, 1, 1, 2, 4, 4]
    assert needed(full, 50) == 2 and needed(full, 0) == 0


def test_autoscaler_bounds_scale_with_the_share_and_stay_at_least_one() -> None:
    full = Scale(replicas=2, autoscaling=(2, 10))
    assert scale_at(full, 75) == Scale(replicas=2, autoscaling=(2, 8))
    assert scale_at(full, 25) == Scale(replicas=1, autoscaling=(1, 3))
    assert scale_at(full, 1) == Scale(replicas=1, autoscaling=(1, 1))
    assert needed(full, 25) == 1


def test_a_scale_exceeds_another_when_it_keeps_more_replicas_or_allows_more() -> None:
    assert Scale(3).exceeds(Scale(2)) and not Scale(2).exceeds(Scale(2))
    assert Scale(2, (2, 10)).exceeds(Scale(2, (2, 5)))
    assert Scale(2, (2, 5)).union(Scale(4)) == Scale(4, (4, 5))
    assert Scale(0).union(Scale(1, (1, 5))) == Scale(1, (1, 5))
    assert Scale(2).union(Scale(3)) == Scale(3)


@settings(deadline=None)
@given(st.integers(0, 100), st.integers(0, 50), st.integers(1, 100))
def test_a_share_never_needs_more_than_full_replicas(replicas: int, low: int, share: int) -> None:
    fixed = Scale(replicas=replicas)
    assert scale_at(fixed, share).replicas <= replicas
    assert scale_at(fixed, share).replicas * 100 >= replicas * share
    auto = Scale(replicas=max(low, 1), autoscaling=(max(low, 1), max(low, 1) + replicas))
    bounds = scale_at(auto, share).autoscaling
    assert bounds is not None and 1 <= bounds[0] <= bounds[1]


def test_the_version_pin_header_is_the_one_the_runtime_answers_with() -> None:
    # Two images, two packages: the operator cannot import the runtime, so the string is kept twice.
    from modelfleet_operator.core.traffic import HEADER_VERSION
    from modelfleet_runtime.http_io import VERSION_HEADER

    assert HEADER_VERSION == VERSION_HEADER == "x-model-version"
