"""Server-side apply and field management, as the API server's structured-merge-diff does it.

Pure functions on plain dicts and a `schemas.Schema`; the emulator calls them on
every write. What they follow (https://kubernetes.io/docs/reference/using-api/server-side-apply/):

- A field set is the set of paths of an object's leaves, written in the FieldsV1
  notation of `metadata.managedFields`: `f:name` for a field, `k:{"name":"x"}`
  for an item of a list that is a map (keys from the schema), `v:"x"` for an
  item of a set; an item of a keyed list or an entry of a map is a member too
  (`.` when it also has members below it). Atomic lists and atomic objects are
  one leaf. The server's own metadata (name, uid, resourceVersion, ...) is
  nobody's.
- `apply`: the configuration is merged into the live object (scalars and atomic
  values replaced, maps merged, keyed lists merged item by item); the fields
  this manager applied last time and no longer sends are removed unless another
  manager owns them; a value that changes a field another manager owns is a
  conflict (`Conflicts`, answered 409) unless forced, and forcing takes the
  field from it. The applier then owns exactly what it sent.
- `record_update`: a create, PUT or non-apply PATCH makes its manager (operation
  Update) own every field it changed or added, taking them from the others.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any

from .schemas import Schema

Path = tuple[str, ...]
PRESENT = object()  # the "value" of an item or entry that has members below it
# Key fields a real server defaults before it keys the item (a port's protocol).
_KEY_DEFAULTS = {"protocol": "TCP"}
# Metadata the server owns; StripMetaManager removes it from every field set.
_SERVER_METADATA = frozenset(
    {
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "selfLink",
    }
)


class Conflicts(Exception):
    """Fields another manager owns that an apply would change: (manager description, field path)."""

    def __init__(self, conflicts: list[tuple[str, str]]) -> None:
        self.conflicts = conflicts
        managers = sorted({m for m, _ in conflicts})
        if len(conflicts) == 1:
            manager, field = conflicts[0]
            message = f"Apply failed with 1 conflict: conflict with {manager}: {field}"
        else:
            listed = "\n".join(f"- {field}" for _, field in conflicts)
            message = f"Apply failed with {len(conflicts)} conflicts: conflicts with {', '.join(managers)}:\n{listed}"
        super().__init__(message)
        self.message = message

    def causes(self) -> list[dict[str, str]]:
        return [
            {"reason": "FieldManagerConflict", "message": f"conflict with {manager}", "field": field}
            for manager, field in self.conflicts
        ]


@dataclasses.dataclass
class Manager:
    """One entry of `metadata.managedFields`."""

    manager: str
    operation: str  # Apply or Update
    api_version: str
    time: str
    fields: set[Path]
    subresource: str = ""

    @property
    def identity(self) -> tuple[str, str, str]:
        return (self.manager, self.operation, self.subresource)

    def describe(self) -> str:
        """As the API server names a manager in a conflict."""
        text = json.dumps(self.manager)
        if self.subresource:
            text += f" with subresource {json.dumps(self.subresource)}"
        if self.operation == "Update":
            text += f" using {self.api_version}"
        return text

    def as_entry(self) -> dict[str, Any]:
        entry = {
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": to_fields_v1(self.fields),
        }
        if self.subresource:
            entry["subresource"] = self.subresource
        return entry


def managers_of(obj: Mapping[str, Any] | None) -> list[Manager]:
    return [
        Manager(
            manager=entry.get("manager", ""),
            operation=entry.get("operation", "Update"),
            api_version=entry.get("apiVersion", ""),
            time=entry.get("time", ""),
            fields=from_fields_v1(entry.get("fieldsV1") or {}),
            subresource=entry.get("subresource", ""),
        )
        for entry in ((obj or {}).get("metadata") or {}).get("managedFields") or []
    ]


# -- field sets ------------------------------------------------------------------------------------


def item_element(item: Any, schema: Schema | None) -> str:
    """The path element of a list item: `k:{...}` in a keyed list, `v:...` in a set."""
    if schema is not None and schema.list_type == "map" and isinstance(item, Mapping):
        keys = {k: item.get(k, _KEY_DEFAULTS.get(k)) for k in sorted(schema.list_keys)}
        return "k:" + json.dumps({k: v for k, v in keys.items() if v is not None}, separators=(",", ":"))
    return "v:" + json.dumps(item, separators=(",", ":"), sort_keys=True)


def leaves(obj: Any, schema: Schema | None, path: Path = ()) -> dict[Path, Any]:
    """Every member path of `obj` with its value (`PRESENT` for items and entries with members below)."""
    out: dict[Path, Any] = {}
    _walk(obj, schema, path, out)
    return out


def _walk(value: Any, schema: Schema | None, path: Path, out: dict[Path, Any]) -> None:
    if isinstance(value, Mapping):
        if (schema is not None and schema.atomic_object) or not value:
            out[path] = value
            return
        for key, child in value.items():
            child_path = (*path, f"f:{key}")
            if schema is not None and schema.is_map and isinstance(child, Mapping) and child:
                out[child_path] = PRESENT  # a map's entry is a member itself
            _walk(child, schema.field(key) if schema is not None else None, child_path, out)
        return
    if isinstance(value, list):
        list_type = schema.list_type if schema is not None else "atomic"
        if list_type == "atomic" or not value:
            out[path] = value
            return
        items = schema.items() if schema is not None else None
        for item in value:
            item_path = (*path, item_element(item, schema))
            if list_type == "map" and isinstance(item, Mapping):
                out[item_path] = PRESENT
                _walk(item, items, item_path, out)
            else:
                out[item_path] = item
        return
    out[path] = value


def field_set(obj: Any, schema: Schema | None) -> set[Path]:
    return {p for p in leaves(obj, schema) if p}


def owned(paths: Iterable[Path], subresource: str, has_status: bool) -> set[Path]:
    """The paths a manager can own through this endpoint: no server metadata; status only via /status."""
    result = set()
    for path in paths:
        if not path or path[0] in ("f:apiVersion", "f:kind") or path == ("f:metadata",):
            continue
        if path[0] == "f:metadata" and len(path) > 1 and path[1][2:] in _SERVER_METADATA:
            continue
        if has_status and (subresource == "status") != (path[0] == "f:status"):
            continue
        result.add(path)
    return result


def to_fields_v1(paths: Iterable[Path]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    members = sorted(paths)
    for path in members:
        node = root
        for element in path:
            node = node.setdefault(element, {})
    for path in members:
        node = root
        for element in path:
            node = node[element]
        if node and "." not in node:
            node["."] = {}
    return root


def from_fields_v1(tree: Mapping[str, Any], path: Path = ()) -> set[Path]:
    result: set[Path] = set()
    for element, child in tree.items():
        if element == ".":
            result.add(path)
            continue
        child_path = (*path, element)
        if not child:
            result.add(child_path)
        else:
            result |= from_fields_v1(child, child_path)
    return result


def path_string(path: Path) -> str:
    """A path as the API server prints it in a conflict: `.spec.containers[name="x"].image`."""
    text = ""
    for element in path:
        kind, rest = element[:2], element[2:]
        if kind == "f:":
            text += f".{rest}"
        elif kind == "k:":
            keys = json.loads(rest)
            text += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in keys.items()) + "]"
        elif kind == "v:":
            text += f"[={rest}]"
        else:
            text += f"[{rest}]"
    return text


# -- merging and removing ------------------------------------------------------------------------


def merge(live: Any, config: Any, schema: Schema | None) -> Any:
    """`config` merged into `live` by the schema's rules (a new value; neither is changed)."""
    if isinstance(config, Mapping) and isinstance(live, Mapping) and not (schema is not None and schema.atomic_object):
        result = dict(live)
        for key, value in config.items():
            child = schema.field(key) if schema is not None else None
            result[key] = merge(live[key], value, child) if key in live else copy.deepcopy(value)
        return result
    list_type = schema.list_type if schema is not None else "atomic"
    if isinstance(config, list) and isinstance(live, list) and list_type != "atomic":
        items = schema.items() if schema is not None else None
        wanted = {item_element(item, schema): item for item in config}
        merged = []
        for item in live:
            element = item_element(item, schema)
            merged.append(merge(item, wanted.pop(element), items) if element in wanted else item)
        merged.extend(copy.deepcopy(item) for item in wanted.values())
        return merged
    return copy.deepcopy(config)


def remove_paths(obj: dict[str, Any], paths: Iterable[Path], schema: Schema | None) -> None:
    """Remove each path's value (and what is below it) in place; a map or list emptied by it goes too.

    Outermost first: an item goes whole, before a removal of its key fields could make it unfindable.
    """
    for path in sorted(paths, key=len):
        _remove(obj, path, schema)


def _owned_below(path: Path, owned_paths: set[Path]) -> bool:
    return any(other[: len(path)] == path and other != path for other in owned_paths)


def _remove(obj: dict[str, Any], path: Path, schema: Schema | None) -> None:
    trail: list[tuple[Any, Any]] = []  # (container, index or key) from the top down
    node: Any = obj
    for element in path:
        if isinstance(node, Mapping) and element.startswith("f:") and element[2:] in node:
            trail.append((node, element[2:]))
            node = node[element[2:]]
            schema = schema.field(element[2:]) if schema is not None else None
        elif isinstance(node, list):
            index = next((i for i, item in enumerate(node) if item_element(item, schema) == element), None)
            if index is None:
                return
            trail.append((node, index))
            node = node[index]
            schema = schema.items() if schema is not None else None
        else:
            return  # already gone
    if not trail:
        return
    container, key = trail[-1]
    del container[key]
    if not container and len(trail) > 1:
        parent, parent_key = trail[-2]
        del parent[parent_key]


# -- the two operations --------------------------------------------------------------------------


def _body(obj: Mapping[str, Any] | None, *, copied: bool = False) -> dict[str, Any]:
    """The object without its managedFields (they are not part of what is merged and compared)."""
    if obj is None:
        return {}
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    body = {**obj, "metadata": meta}
    return copy.deepcopy(body) if copied else body


def _changes(old: Mapping[str, Any], new: Mapping[str, Any], schema: Schema | None) -> tuple[set[Path], set[Path]]:
    """(modified or added, removed) member paths from `old` to `new`."""
    before, after = leaves(old, schema), leaves(new, schema)
    changed = {p for p, v in after.items() if p and (p not in before or (v is not PRESENT and before[p] != v))}
    removed = {p for p in before if p and p not in after}
    return changed, removed


def apply(
    live: Mapping[str, Any] | None,
    config: Mapping[str, Any],
    schema: Schema | None,
    *,
    manager: str,
    force: bool,
    subresource: str,
    has_status: bool,
    api_version: str,
    now: str,
) -> dict[str, Any]:
    """The object after `manager` applied `config` to `live`, with its new managedFields; raises Conflicts."""
    managers = managers_of(live)
    identity = (manager, "Apply", subresource)
    base = _body(live)
    merged = copy.deepcopy(merge(base, config, schema))  # removal below works in place
    applied = owned(field_set(config, schema), subresource, has_status)
    last = next((m.fields for m in managers if m.identity == identity), set())
    others = [m for m in managers if m.identity != identity]
    kept_by_others = set().union(*(m.fields for m in others))
    # What this manager applied before and no longer sends, unless someone still owns it or something below it.
    still_owned = applied | kept_by_others
    dropped = {p for p in last - still_owned if not _owned_below(p, still_owned)}
    remove_paths(merged, dropped, schema)

    changed, removed = _changes(base, merged, schema)
    conflicts = [(m, p) for m in others for p in sorted(m.fields & changed)]
    if conflicts and not force:
        raise Conflicts([(m.describe(), path_string(p)) for m, p in conflicts])
    for other in others:
        other.fields -= changed | removed
    entry = Manager(manager, "Apply", api_version, now, applied, subresource)
    merged.setdefault("metadata", {})["managedFields"] = _entries(managers, entry)
    return merged


def record_update(
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any],
    schema: Schema | None,
    *,
    manager: str,
    subresource: str,
    has_status: bool,
    api_version: str,
    now: str,
) -> list[dict[str, Any]]:
    """The managedFields after a create, PUT or non-apply PATCH by `manager` (operation Update)."""
    managers = managers_of(old)
    changed, removed = _changes(_body(old), _body(new), schema)
    changed = owned(changed, subresource, has_status)
    identity = (manager, "Update", subresource)
    mine = next((m for m in managers if m.identity == identity), None)
    for other in managers:
        if other is not mine:
            other.fields -= changed | removed
    fields = ((mine.fields if mine else set()) | changed) - removed
    entry = Manager(manager, "Update", api_version, now if changed or mine is None else mine.time, fields, subresource)
    return _entries(managers, entry)


def _entries(managers: list[Manager], entry: Manager) -> list[dict[str, Any]]:
    """managedFields in their order, `entry` replacing its own identity (or last); empty sets dropped."""
    result, placed = [], False
    for existing in managers:
        if existing.identity == entry.identity:
            existing, placed = entry, True
        if existing.fields:
            result.append(existing.as_entry())
    if not placed and entry.fields:
        result.append(entry.as_entry())
    return result


__all__ = [
    "Conflicts",
    "Manager",
    "apply",
    "field_set",
    "from_fields_v1",
    "item_element",
    "leaves",
    "managers_of",
    "merge",
    "owned",
    "path_string",
    "record_update",
    "remove_paths",
    "to_fields_v1",
]
