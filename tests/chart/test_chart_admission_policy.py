"""The chart's ValidatingAdmissionPolicy, evaluated: its CEL, as rendered, run by a CEL interpreter
(cel-python) with Kubernetes' `authorizer` library played by a table of who may get which Secret.

The API server's own CEL environment adds libraries cel-python lacks (`authorizer`, lists' `join`); the
test provides those two, exactly as the Kubernetes documentation defines them, and nothing else."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import celpy
import pytest
from celpy import celtypes

from tests.chart.chart_render import VALUE_SETS, find

OPERATOR = "system:serviceaccount:modelfleet:modelfleet"


class Authorizer:
    """`authorizer.group(g).resource(r).namespace(n).name(x).check(verb).allowed()`, answered from a
    set of (user's) readable Secret names."""

    def __init__(self, readable: set[str], **request: str) -> None:
        self.readable = readable
        self.request = request

    def narrowed(self, **part: str) -> Authorizer:
        return Authorizer(self.readable, **{**self.request, **part})


def _functions() -> dict[str, Any]:
    def part(key: str) -> Any:
        return lambda auth, value: auth.narrowed(**{key: str(value)})

    def check(auth: Authorizer, verb: Any) -> celtypes.BoolType:
        wanted = {"group": "", "resource": "secrets", "verb": "get"}
        asked = {**auth.request, "verb": str(verb)}
        return celtypes.BoolType(
            all(asked.get(k) == v for k, v in wanted.items()) and asked.get("name") in auth.readable
        )

    return {
        "group": part("group"),
        "resource": part("resource"),
        "namespace": part("namespace"),
        "name": part("name"),
        "check": check,
        "allowed": lambda decision: decision,
        "join": lambda items, sep: celtypes.StringType(str(sep).join(str(i) for i in items)),
    }


def admit(
    policy: Mapping[str, Any], *, user: str, readable: set[str], obj: dict, old: dict | None = None
) -> str | None:
    """Run the policy on one request: None when admitted, else the denial message."""
    env = celpy.Environment()
    functions = _functions()

    def evaluate(expression: str, activation: dict[str, Any]) -> Any:
        return env.program(env.compile(expression), functions=functions).evaluate(activation)

    request = {"userInfo": {"username": user}, "operation": "UPDATE" if old else "CREATE"}
    activation: dict[str, Any] = {
        "object": celpy.json_to_cel(obj),
        "oldObject": celpy.json_to_cel(old) if old is not None else None,
        "request": celpy.json_to_cel(request),
        "authorizer": Authorizer(readable),
    }
    spec = policy["spec"]
    if not all(evaluate(c["expression"], activation) for c in spec.get("matchConditions") or []):
        return None  # the policy does not apply to this request
    variables: dict[str, Any] = {}
    for variable in spec.get("variables") or []:
        activation["variables"] = celtypes.MapType({celtypes.StringType(k): v for k, v in variables.items()})
        variables[variable["name"]] = evaluate(variable["expression"], activation)
    activation["variables"] = celtypes.MapType({celtypes.StringType(k): v for k, v in variables.items()})
    for validation in spec["validations"]:
        if not evaluate(validation["expression"], activation):
            return str(evaluate(validation["messageExpression"], activation))
    return None


def model_version(**spec: Any) -> dict[str, Any]:
    base = {"model": "fraud", "version": "1", "source": {"uri": "https://models.example.com/m.onnx"}}
    return {"metadata": {"name": "fraud-v1", "namespace": "ml"}, "spec": {**base, **spec}}


FEATURES = {"redis": {"url": "redis://r:6379/0", "passwordSecretRef": {"name": "store", "key": "pw"}}, "fields": ["a"]}
NAMING_ALL = {
    "features": FEATURES,
    "retraining": {"feedbackClaim": "fb", "tokenSecretRef": {"name": "fb-token"}},
    "predictToken": {"name": "predict"},
}


@pytest.fixture
def policy(render) -> dict[str, Any]:
    [found] = find(render(VALUE_SETS["default"]), "ValidatingAdmissionPolicy")
    return found


def test_a_version_naming_no_secret_is_admitted(policy: dict[str, Any]) -> None:
    assert admit(policy, user="alice", readable=set(), obj=model_version()) is None


def test_an_author_may_name_only_the_secrets_they_may_get(policy: dict[str, Any]) -> None:
    obj = model_version(**NAMING_ALL)
    assert admit(policy, user="alice", readable={"store", "fb-token", "predict"}, obj=obj) is None
    denied = admit(policy, user="mallory", readable={"fb-token"}, obj=obj)
    assert denied is not None
    assert "mallory may not get Secret(s) store, predict in namespace ml" in denied


def test_an_update_checks_only_the_secrets_it_adds(policy: dict[str, Any]) -> None:
    old = model_version(predictToken={"name": "predict"})
    # someone who cannot read the token changes the traffic of a version that already names it
    assert (
        admit(
            policy, user="bob", readable=set(), obj=model_version(predictToken={"name": "predict"}, traffic=10), old=old
        )
        is None
    )
    # but may not point it at another Secret they cannot read
    denied = admit(policy, user="bob", readable=set(), obj=model_version(predictToken={"name": "other"}), old=old)
    assert denied is not None and "other" in denied


def test_the_operators_own_writes_are_exempt(policy: dict[str, Any]) -> None:
    # retraining's child versions copy the parent's references, checked when the parent was written
    assert admit(policy, user=OPERATOR, readable=set(), obj=model_version(**NAMING_ALL)) is None
