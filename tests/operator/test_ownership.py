"""Whose an object is: the operator never takes over a name someone else holds, and duplicates fail."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modelfleet_operator.config import OperatorConfig
from modelfleet_operator.core import ownership
from modelfleet_operator.core.manifests import build_children
from modelfleet_operator.core.model_objects import ModelObjects, build_model_service

MakeMV = Callable[..., dict[str, Any]]


def shared_service(versions: list[dict[str, Any]], model: str = "fraud") -> dict[str, Any]:
    return build_model_service(
        ModelObjects(
            model, "ml", versions, versions, {}, {v["metadata"]["name"]: "1" for v in versions}, OperatorConfig()
        )
    )


def test_a_versions_own_child_belongs_to_it_and_not_to_a_namesake(make_mv: MakeMV) -> None:
    mv = make_mv()
    [deployment, service] = build_children(mv, OperatorConfig())
    assert ownership.version_object_conflict("Deployment", deployment, mv) is None
    again = make_mv(uid="uid-recreated")  # a new ModelVersion of the same name, before the old children went
    conflict = ownership.version_object_conflict("Service", service, again)
    assert conflict is not None and conflict.reason == "ObjectConflict"
    assert str(conflict).startswith("Service ml/fraud-v1 is controlled by ModelVersion fraud-v1 of model fraud")


def test_the_shared_service_of_a_model_is_not_a_versions_service(make_mv: MakeMV) -> None:
    # Model "fraud-v2" shares a Service named fraud-v2; ModelVersion fraud-v2 of model "fraud" wants one too.
    version = make_mv(name="fraud-v2", uid="uid-2", version="2")
    [_, version_service] = build_children(version, OperatorConfig())
    other_model = make_mv(name="fraud-v2-a", uid="uid-9", model="fraud-v2")
    model_service = shared_service([other_model], model="fraud-v2")
    assert ownership.model_object_conflict("Service", model_service, "fraud-v2", "ml") is None
    taken = ownership.model_object_conflict("Service", version_service, "fraud-v2", "ml")
    assert taken is not None
    assert "Service ml/fraud-v2 is controlled by ModelVersion fraud-v2 of model fraud" in str(taken)
    assert "it would be the shared Service of model fraud-v2" in str(taken)
    reverse = ownership.version_object_conflict("Service", model_service, version)
    assert reverse is not None and "is the shared object of model fraud-v2" in str(reverse)


def test_an_object_another_controller_made_names_who_made_it() -> None:
    helm = {"metadata": {"name": "fraud", "labels": {"app.kubernetes.io/managed-by": "Helm"}}}
    assert ownership.describe_owner(helm) == "is managed by Helm"
    written = {"metadata": {"name": "fraud", "managedFields": [{"manager": "kubectl-create"}]}}
    assert ownership.describe_owner(written) == "was written by kubectl-create"
    owned = {"metadata": {"ownerReferences": [{"kind": "Deployment", "name": "web", "controller": True}]}}
    assert ownership.describe_owner(owned) == "is controlled by Deployment web"


def test_the_later_of_two_versions_with_the_same_model_and_version_is_the_duplicate(make_mv: MakeMV) -> None:
    first = make_mv(name="fraud-a")
    first["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    second = make_mv(name="fraud-b", uid="uid-2")
    second["metadata"]["creationTimestamp"] = "2026-01-02T00:00:00Z"
    third = make_mv(name="fraud-c", uid="uid-3", version="2")
    dups = ownership.duplicates([second, third, first])
    assert list(dups) == ["fraud-b"] and dups["fraud-b"].original == "fraud-a"
    message = str(ownership.duplicate_error(dups["fraud-b"], "fraud"))
    assert message.startswith("ModelVersion fraud-a already serves version '1' of model fraud")
