"""Whose an object is, and which versions a model must not serve, as pure functions.

The operator never adopts an object it did not create: an existing object with
the name of one of its children belongs to the version only when the version
is its controller (ownerReferences), and to the model only when it is the
model's shared object (its labels) owned by nothing but ModelVersions. Any
other object of that name is a conflict: the version (or every version of the
model, for a shared object) is Failed with a reason that names the object and
its owner, and the object is left alone.

Two ModelVersions with the same (model, version) cannot both serve: the one
created later is Failed with reason DuplicateVersion and the older one is
not touched.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from modelfleet_operator.core.manifests import LABEL_MODEL, MANAGED_BY
from modelfleet_operator.spec import API_VERSION, GROUP, KIND

COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MODEL_COMPONENT = "model-endpoint"


class Conflict(ValueError):
    """An object of a name the operator needs belongs to someone else; the message names both."""

    reason = "ObjectConflict"


class DuplicateVersion(ValueError):
    reason = "DuplicateVersion"


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _refs(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list(_meta(obj).get("ownerReferences") or [])


def _is_model_version(ref: Mapping[str, Any]) -> bool:
    return ref.get("kind") == KIND and str(ref.get("apiVersion", "")).split("/")[0] == GROUP


def controlled_by(obj: Mapping[str, Any], uid: str) -> bool:
    """Whether the object's controller is the object with this uid."""
    return any(ref.get("controller") and ref.get("uid") == uid for ref in _refs(obj))


def is_model_object(obj: Mapping[str, Any], model: str) -> bool:
    """Whether `obj` is the shared object of `model`: labelled so, and owned by ModelVersions only."""
    labels = _meta(obj).get("labels") or {}
    return (
        labels.get(LABEL_MODEL) == model
        and labels.get(COMPONENT_LABEL) == MODEL_COMPONENT
        and labels.get(MANAGED_BY_LABEL) == MANAGED_BY
        and all(_is_model_version(ref) and not ref.get("controller") for ref in _refs(obj))
    )


def describe_owner(obj: Mapping[str, Any]) -> str:
    """Who an object belongs to, for a person: its controller, its owners, or its managers."""
    refs = _refs(obj)
    controller = next((r for r in refs if r.get("controller")), None)
    labels = _meta(obj).get("labels") or {}
    if controller is not None:
        owner = f"{controller.get('kind')} {controller.get('name')}"
        if _is_model_version(controller) and labels.get(LABEL_MODEL):
            owner += f" of model {labels[LABEL_MODEL]}"
        return f"is controlled by {owner}"
    if refs:
        names = ", ".join(f"{r.get('kind')} {r.get('name')}" for r in refs)
        if labels.get(LABEL_MODEL) and labels.get(COMPONENT_LABEL) == MODEL_COMPONENT:
            return f"is the shared object of model {labels[LABEL_MODEL]} (owned by {names})"
        return f"is owned by {names}"
    managers = sorted({str(m.get("manager")) for m in _meta(obj).get("managedFields") or [] if m.get("manager")})
    if labels.get(MANAGED_BY_LABEL):
        return f"is managed by {labels[MANAGED_BY_LABEL]}"
    if managers:
        return f"was written by {', '.join(managers)}"
    return "exists and is not the operator's"


def conflict(kind: str, namespace: str, name: str, obj: Mapping[str, Any], *, wanted_by: str) -> Conflict:
    """The Conflict for an object the operator needs (`wanted_by`: what it would be) but does not own."""
    return Conflict(
        f"{kind} {namespace}/{name} {describe_owner(obj)}; it would be {wanted_by}. The operator does not "
        f"take over objects it did not create: delete or rename that {kind}, or rename the ModelVersion or model"
    )


def version_object_conflict(kind: str, obj: Mapping[str, Any] | None, mv: Mapping[str, Any]) -> Conflict | None:
    """A Conflict when `obj` (the live object named like the version) is not controlled by it."""
    if obj is None or controlled_by(obj, str(_meta(mv).get("uid") or "")):
        return None
    meta = _meta(mv)
    return conflict(
        kind,
        str(meta.get("namespace")),
        str(meta.get("name")),
        obj,
        wanted_by=f"ModelVersion {meta.get('name')}'s {kind}",
    )


def model_object_conflict(kind: str, obj: Mapping[str, Any] | None, model: str, namespace: str) -> Conflict | None:
    """A Conflict when `obj` (the live object named like the model) is not the model's shared object."""
    if obj is None or is_model_object(obj, model):
        return None
    return conflict(kind, namespace, model, obj, wanted_by=f"the shared {kind} of model {model}")


@dataclass(frozen=True)
class Duplicate:
    name: str
    original: str
    version: str


def duplicates(versions: Iterable[Mapping[str, Any]]) -> dict[str, Duplicate]:
    """The ModelVersions that repeat the (model, version) of an older one, by name.

    Older means created first (metadata.creationTimestamp), then the name that sorts first;
    versions being deleted still count, so a replacement waits for its predecessor to go.
    """

    def age(mv: Mapping[str, Any]) -> tuple[str, str]:
        return (str(_meta(mv).get("creationTimestamp") or ""), str(_meta(mv).get("name")))

    first: dict[tuple[str, str], Mapping[str, Any]] = {}
    out: dict[str, Duplicate] = {}
    for mv in sorted(versions, key=age):
        spec = mv.get("spec") or {}
        key = (str(spec.get("model")), str(spec.get("version")))
        if key in first:
            original = str(_meta(first[key]).get("name"))
            out[str(_meta(mv).get("name"))] = Duplicate(str(_meta(mv).get("name")), original, key[1])
        else:
            first[key] = mv
    return out


def duplicate_error(dup: Duplicate, model: str) -> DuplicateVersion:
    return DuplicateVersion(
        f"ModelVersion {dup.original} already serves version {dup.version!r} of model {model}; a version "
        f"must be unique per model: change spec.version, or delete this one (or {dup.original})"
    )


__all__ = [
    "API_VERSION",
    "MODEL_COMPONENT",
    "Conflict",
    "Duplicate",
    "DuplicateVersion",
    "conflict",
    "controlled_by",
    "describe_owner",
    "duplicate_error",
    "duplicates",
    "is_model_object",
    "model_object_conflict",
    "version_object_conflict",
]
