"""When the operator skips a write: the live object already is what it would apply, after the API
server's defaulting and canonical quantities; any change of the desired object, a removal too, is seen."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfleet_operator.config import OperatorConfig
from modelfleet_operator.core.drift import APPLIED_ANNOTATION, contains, quantity, same_quantity, stamped, up_to_date
from modelfleet_operator.core.manifests import build_children

MakeMV = Callable[..., dict[str, Any]]


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (1, "1"),
        ("1024Mi", "1Gi"),
        ("0.5", "500m"),
        ("1e3", "1k"),
        ("2000m", 2),
        ("1.5Gi", "1536Mi"),
        ("128974848", "123Mi"),
    ],
)
def test_quantities_the_api_server_rewrites_are_the_same_quantity(a: Any, b: Any) -> None:
    assert same_quantity(a, b)


@pytest.mark.parametrize(("a", "b"), [("1", "2"), ("1Gi", "1G"), ("500m", "0.6"), ("abc", "abc"), (True, 1)])
def test_different_quantities_and_non_quantities_differ(a: Any, b: Any) -> None:
    assert not same_quantity(a, b)


def test_quantity_parses_every_suffix() -> None:
    assert quantity("3Ki") == 3 * 1024 and quantity("2m") * 1000 == 2 and quantity("1E") == 10**18
    assert quantity("-1") == -1 and quantity("1.") == 1 and quantity(".5") == quantity("500m")
    assert quantity("1 Gi") is None and quantity(None) is None


def served(desired: dict[str, Any]) -> dict[str, Any]:
    """`desired` as an API server stores it: canonical quantities, defaults added, server metadata."""
    live = copy.deepcopy(stamped(desired))
    live["metadata"].update(
        {"uid": "u-1", "resourceVersion": "7", "generation": 1, "creationTimestamp": "2026-01-01T00:00:00Z"}
    )
    if live["kind"] == "Deployment":
        spec = live["spec"]
        spec.setdefault("progressDeadlineSeconds", 600)
        pod = spec["template"]["spec"]
        pod.setdefault("dnsPolicy", "ClusterFirst")
        for container in pod["containers"]:
            container.setdefault("imagePullPolicy", "IfNotPresent")
            container.setdefault("terminationMessagePath", "/dev/termination-log")
            for section in ("requests", "limits"):
                values = container.get("resources", {}).get(section, {})
                for key, value in list(values.items()):
                    if value == 1:
                        values[key] = "1"
                    if value == "1024Mi":
                        values[key] = "1Gi"
        live["status"] = {"replicas": 1, "readyReplicas": 1}
    if live["kind"] == "Service":
        live["spec"].update({"clusterIP": "10.0.0.7", "sessionAffinity": "None", "ipFamilies": ["IPv4"]})
    return live


def test_an_unchanged_spec_with_quantities_the_server_rewrites_needs_no_write(make_mv: MakeMV) -> None:
    mv = make_mv(resources={"requests": {"cpu": 1, "memory": "1024Mi"}, "limits": {"memory": "2Gi"}})
    for desired in build_children(mv, OperatorConfig()):
        assert up_to_date(served(desired), desired), desired["kind"]


def test_a_field_removed_from_the_desired_object_needs_a_write(make_mv: MakeMV) -> None:
    limited = make_mv(resources={"requests": {"cpu": 1}, "limits": {"memory": "2Gi"}})
    before = build_children(limited, OperatorConfig())[0]
    after = build_children(make_mv(resources={"requests": {"cpu": 1}}), OperatorConfig())[0]
    assert not up_to_date(served(before), after)
    # Even when the live object still has everything the new desired object asks for.
    labelled = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "labels": {"a": "1", "b": "2"}}}
    fewer = {**labelled, "metadata": {"name": "s", "labels": {"a": "1"}}}
    live = served({**labelled, "spec": {}})
    assert contains(live, fewer) and not up_to_date(live, fewer)


def test_a_change_someone_else_made_to_an_owned_field_needs_a_write(make_mv: MakeMV) -> None:
    desired = build_children(make_mv(), OperatorConfig())[0]
    live = served(desired)
    live["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = "edited"
    assert not up_to_date(live, desired)
    live = served(desired)
    live["metadata"]["labels"]["team"] = "ml"  # a field the operator does not own
    assert up_to_date(live, desired)


def test_a_missing_object_is_never_up_to_date(make_mv: MakeMV) -> None:
    assert not up_to_date(None, build_children(make_mv(), OperatorConfig())[0])


def test_the_stamp_is_stable_and_names_the_desired_object(make_mv: MakeMV) -> None:
    a, b = (stamped(build_children(make_mv(), OperatorConfig())[0]) for _ in range(2))
    assert a == b and len(a["metadata"]["annotations"][APPLIED_ANNOTATION]) == 16
    other = stamped(build_children(make_mv(replicas=3), OperatorConfig())[0])
    assert other["metadata"]["annotations"][APPLIED_ANNOTATION] != a["metadata"]["annotations"][APPLIED_ANNOTATION]


scalars = st.one_of(st.integers(-5, 5), st.text("ab", max_size=2), st.booleans())
trees = st.recursive(
    scalars,
    lambda inner: (
        st.dictionaries(st.text("xyz", min_size=1, max_size=2), inner, max_size=3) | st.lists(inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(deadline=None)
@given(trees)
def test_every_object_contains_itself_and_a_changed_leaf_is_seen(tree: Any) -> None:
    assert contains(tree, tree)
    assert not contains({"k": tree}, {"k": [tree, tree, tree, tree]})
