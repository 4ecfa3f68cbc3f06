"""What a write makes of an object, as the API server decides it: the pure core of the emulator's writes.

Each function takes the stored object (or None) and the request's content and
returns the object to store, or raises `WriteError` with the status, reason and
message a real API server answers. The emulator (`emulator.py`) only looks the
object up, stores the result and streams the watch event.

- create: metadata checked (name or generateName, namespace as in the URL),
  `status` dropped where it is a subresource, the object normalised (defaults,
  canonical quantities, unknown fields pruned: `normalise.py`) and its creator
  recorded in managedFields (operation Update);
- patch: JSON merge patch and JSON patch (RFC 6902; a failed `test` is 422);
  strategic merge patch is refused with 415 so that code relying on it fails here
  rather than only against some servers; `metadata.resourceVersion` in a merge
  patch is a precondition (409 when stale);
- apply (`application/apply-patch+yaml`): server-side apply (`apply.py`), which
  creates the object when it does not exist; requires `fieldManager`; `force`
  only with apply; `metadata.resourceVersion` in the configuration is a precondition;
- PUT: the whole object replaced (server metadata kept), with the same precondition;
- every write through the main resource leaves `status` alone where it is a
  subresource, and a write to `/status` changes nothing else;
- `finish`: the server's metadata kept, `generation` bumped when anything but
  metadata and status changed, and None for a write that changes nothing (no new
  resourceVersion, no event; managedFields timestamps alone are no change).
"""

from __future__ import annotations

import copy
import dataclasses
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import jsonpatch
import jsonpointer
import yaml

from . import apply as ssa
from .schemas import Schema

APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
MAX_MANAGER_LENGTH = 128

# Metadata the server owns: no write by a client changes it.
SERVER_FIELDS = ("uid", "creationTimestamp", "name", "namespace", "resourceVersion", "generation", "deletionTimestamp")


class WriteError(Exception):
    """The API server refuses the write: HTTP `status`, Status `reason`, `message`, `details`."""

    def __init__(self, status: int, reason: str, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.details = dict(details or {})


def _invalid_options(kind: str, field: str, problem: str) -> WriteError:
    return WriteError(422, "Invalid", f'{kind}.meta.k8s.io "" is invalid: {field}: {problem}')


@dataclasses.dataclass(frozen=True)
class Kind:
    """What a write needs to know of its resource."""

    api_version: str
    kind: str
    plural: str
    group: str
    namespaced: bool
    has_status: bool
    schema: Schema | None = None
    # What the API server does to every object it stores (defaults, canonical forms, pruning) ...
    normalise: Callable[[dict[str, Any]], dict[str, Any]] = lambda obj: obj
    # ... and the part of it that is the object's own form (not defaults): applied to an apply configuration.
    canonicalise: Callable[[dict[str, Any]], dict[str, Any]] = lambda obj: obj
    # What an update carries over from the stored object when the new one leaves it out (a Service's addresses).
    carry: Callable[[Mapping[str, Any], dict[str, Any]], None] = lambda old, new: None

    def not_found(self, name: str | None) -> WriteError:
        return WriteError(404, "NotFound", f'{self.plural}.{self.group} "{name}" not found'.replace(". ", " "))


def manager_of(params: Mapping[str, str], user_agent: str, *, options: str = "PatchOptions") -> str:
    """The field manager: `?fieldManager=`, else the User-Agent up to its first "/" (as the API server derives it)."""
    manager = params.get("fieldManager") or user_agent.split("/")[0]
    if len(manager) > MAX_MANAGER_LENGTH:
        raise _invalid_options(options, "fieldManager", f"Too long: may not be more than {MAX_MANAGER_LENGTH} bytes")
    return manager


def _stale() -> WriteError:
    return WriteError(
        409, "Conflict", "the object has been modified; please apply your changes to the latest version and try again"
    )


def _check_precondition(old: Mapping[str, Any], body: Mapping[str, Any]) -> None:
    wanted = (body.get("metadata") or {}).get("resourceVersion")
    if wanted and wanted != old["metadata"].get("resourceVersion"):
        raise _stale()


def _restricted(kind: Kind, old: dict[str, Any] | None, new: dict[str, Any], subresource: str) -> dict[str, Any]:
    """A write to /status changes only the status; one to the main resource never does (status a subresource)."""
    if subresource == "status":
        result = dict(old) if old is not None else {}
        if "status" in new:
            result["status"] = new["status"]
        else:
            result.pop("status", None)
        return result
    if subresource:
        raise WriteError(404, "NotFound", f"subresource {subresource!r} is not emulated")
    if kind.has_status:
        if old is not None and "status" in old:
            new["status"] = old["status"]
        else:
            new.pop("status", None)
    return new


def _keep_server_fields(old: Mapping[str, Any], new: dict[str, Any]) -> None:
    # A fresh metadata dict: `new` may share the stored object's (a merge patch copies only what it changes).
    new["metadata"] = meta = dict(new.get("metadata") or {})
    for field in SERVER_FIELDS:
        if field in old["metadata"]:
            meta[field] = old["metadata"][field]
        else:
            meta.pop(field, None)
    new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]


def _without(obj: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in keys}


def _without_times(obj: Mapping[str, Any]) -> dict[str, Any]:
    """`obj` with managedFields compared without their timestamps (a shallow view, not a copy)."""
    meta = dict(obj.get("metadata") or {})
    meta["managedFields"] = [{k: v for k, v in e.items() if k != "time"} for e in meta.get("managedFields") or []]
    return {**obj, "metadata": meta}


def finish(old: Mapping[str, Any], new: dict[str, Any]) -> dict[str, Any] | None:
    """`new` with the server's metadata of `old` and the right generation; None when nothing changed."""
    _keep_server_fields(old, new)
    if _without_times(new) == _without_times(old):
        return None
    if _without(new, "metadata", "status") != _without(old, "metadata", "status"):
        new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
    return new


# -- create ---------------------------------------------------------------------------------------


def create(kind: Kind, namespace: str | None, data: Any, *, manager: str, now: str) -> dict[str, Any]:
    """The object a POST creates (without uid and resourceVersion, which the store assigns)."""
    if not isinstance(data, dict):
        raise WriteError(400, "BadRequest", "the body of a create must be a JSON object")
    obj = copy.deepcopy(data)
    meta = obj.setdefault("metadata", {})
    if not meta.get("name") and meta.get("generateName"):
        meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
    _check_identity(kind, namespace, obj)
    obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
    for field in ("deletionTimestamp", "managedFields", "resourceVersion"):
        meta.pop(field, None)
    meta["uid"] = str(uuid.uuid4())
    meta["generation"] = 1
    meta["creationTimestamp"] = now
    if kind.has_status:
        obj.pop("status", None)
    obj = kind.normalise(obj)
    meta = obj["metadata"]
    meta["managedFields"] = ssa.record_update(
        None,
        obj,
        kind.schema,
        manager=manager,
        subresource="",
        has_status=kind.has_status,
        api_version=kind.api_version,
        now=now,
    )
    return obj


def _check_identity(kind: Kind, namespace: str | None, obj: dict[str, Any]) -> None:
    meta = obj["metadata"]
    if not meta.get("name"):
        raise WriteError(422, "Invalid", f"{kind.kind}: metadata.name: Required value")
    if kind.namespaced:
        if namespace is None:
            raise WriteError(400, "BadRequest", f"{kind.kind} is namespaced: POST to /namespaces/NS/{kind.plural}")
        if meta.get("namespace", namespace) != namespace:
            raise WriteError(400, "BadRequest", "the namespace of the object does not match the URL")
        meta["namespace"] = namespace
    else:
        meta.pop("namespace", None)


# -- patch and PUT --------------------------------------------------------------------------------


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: a new value that shares what it does not change with `target`."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _patched(old: dict[str, Any], patch: Any, content_type: str) -> dict[str, Any]:
    try:
        if content_type == JSON_PATCH:
            if not isinstance(patch, list):
                raise WriteError(400, "BadRequest", "a JSON patch must be a list")
            result: dict[str, Any] = jsonpatch.apply_patch(copy.deepcopy(old), patch, in_place=False)
            return result
        if content_type == MERGE_PATCH:
            if not isinstance(patch, dict):
                raise WriteError(400, "BadRequest", "a merge patch must be an object")
            _check_precondition(old, patch)
            merged: dict[str, Any] = _merge_patch(old, patch)
            return merged
        raise WriteError(
            415,
            "UnsupportedMediaType",
            f"the emulator supports apply, merge-patch and json-patch, got {content_type!r}",
        )
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        raise WriteError(422, "Invalid", f"the JSON patch does not apply: {exc}") from None


def patch(
    kind: Kind,
    old: dict[str, Any],
    body: Any,
    content_type: str,
    subresource: str,
    *,
    manager: str,
    now: str,
) -> dict[str, Any]:
    """The object after a merge or JSON patch (before `finish`)."""
    new = _restricted(kind, old, _patched(old, body, content_type), subresource)
    return _updated(kind, old, new, subresource, manager=manager, now=now)


def replace(kind: Kind, old: dict[str, Any], body: Any, subresource: str, *, manager: str, now: str) -> dict[str, Any]:
    """The object after a PUT (before `finish`)."""
    if not isinstance(body, dict):
        raise WriteError(400, "BadRequest", "the body of an update must be a JSON object")
    _check_precondition(old, body)
    name = (body.get("metadata") or {}).get("name")
    if name and name != old["metadata"]["name"]:
        raise WriteError(
            400,
            "BadRequest",
            f"the name of the object ({name}) does not match the name on the URL ({old['metadata']['name']})",
        )
    new = _restricted(kind, old, copy.deepcopy(body), subresource)
    return _updated(kind, old, new, subresource, manager=manager, now=now)


def _updated(
    kind: Kind, old: dict[str, Any], new: dict[str, Any], subresource: str, *, manager: str, now: str
) -> dict[str, Any]:
    _keep_server_fields(old, new)
    kind.carry(old, new)
    new = kind.normalise(new)
    new["metadata"]["managedFields"] = ssa.record_update(
        old,
        new,
        kind.schema,
        manager=manager,
        subresource=subresource,
        has_status=kind.has_status,
        api_version=kind.api_version,
        now=now,
    )
    return new


# -- server-side apply ----------------------------------------------------------------------------


def apply_configuration(kind: Kind, name: str | None, body: Any, text: str) -> dict[str, Any]:
    """The configuration of an apply request (YAML or JSON), checked as the API server checks it."""
    config = body
    if config is None:
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise WriteError(400, "BadRequest", f"error decoding YAML: {exc}") from None
    if not isinstance(config, dict):
        raise WriteError(400, "BadRequest", "an apply configuration must be an object")
    if config.get("apiVersion") != kind.api_version or config.get("kind") != kind.kind:
        raise WriteError(
            400,
            "BadRequest",
            f"the apply configuration is {config.get('apiVersion')}/{config.get('kind')}, "
            f"the URL is {kind.api_version}/{kind.kind}: both apiVersion and kind are required and must match",
        )
    meta = config.get("metadata") or {}
    if meta.get("name") != name:
        raise WriteError(
            400,
            "BadRequest",
            f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})",
        )
    if meta.get("managedFields"):
        raise WriteError(400, "BadRequest", "metadata.managedFields must be nil")
    return copy.deepcopy(config)


def apply(
    kind: Kind,
    old: dict[str, Any] | None,
    config: dict[str, Any],
    subresource: str,
    namespace: str | None,
    *,
    manager: str,
    force: bool,
    now: str,
) -> dict[str, Any]:
    """The object after a server-side apply (a new one when `old` is None; before `finish`)."""
    if old is not None:
        _check_precondition(old, config)
    meta = config.setdefault("metadata", {})
    for field in SERVER_FIELDS:
        if field != "name":
            meta.pop(field, None)
    if kind.has_status and subresource != "status":
        config.pop("status", None)
    if subresource == "status":
        config = {"apiVersion": config["apiVersion"], "kind": config["kind"], "status": config.get("status", {})}
    # Quantities and the like are compared in their canonical form, as the typed objects are.
    config = kind.canonicalise(config)
    try:
        merged = ssa.apply(
            old,
            config,
            kind.schema,
            manager=manager,
            force=force,
            subresource=subresource,
            has_status=kind.has_status,
            api_version=kind.api_version,
            now=now,
        )
    except ssa.Conflicts as conflicts:
        raise WriteError(409, "Conflict", conflicts.message, {"causes": conflicts.causes()}) from None
    if old is None:
        merged["metadata"] = {**merged["metadata"], "generation": 1, "creationTimestamp": now, "uid": str(uuid.uuid4())}
        _check_identity(kind, namespace, merged)
        merged["apiVersion"], merged["kind"] = kind.api_version, kind.kind
        return kind.normalise(merged)
    new = _restricted(kind, old, merged, subresource) if subresource != "status" else merged
    _keep_server_fields(old, new)
    kind.carry(old, new)
    return kind.normalise(new)


def apply_options(params: Mapping[str, str], content_type: str) -> bool:
    """`force` as the request gives it; only an apply may force."""
    force = params.get("force", "")
    if force not in ("", "true", "false"):
        raise WriteError(400, "BadRequest", f"force must be true or false, got {force!r}")
    if force == "true" and content_type != APPLY_PATCH:
        raise _invalid_options("PatchOptions", "force", "Forbidden: may not be specified for non-apply patch")
    return force == "true"


__all__ = [
    "APPLY_PATCH",
    "JSON_PATCH",
    "MERGE_PATCH",
    "STRATEGIC_PATCH",
    "Kind",
    "WriteError",
    "apply",
    "apply_configuration",
    "apply_options",
    "create",
    "finish",
    "manager_of",
    "patch",
    "replace",
]
