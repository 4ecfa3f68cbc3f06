"""The structural schemas the API server merges, prunes and defaults by.

Built-in kinds take theirs from the OpenAPI definitions that `kubernetes-validate`
ships (the newest Kubernetes version it has): list semantics from
`x-kubernetes-list-type` / `x-kubernetes-list-map-keys` (a list with only
`x-kubernetes-patch-strategy: merge` and a `x-kubernetes-patch-merge-key` is a
map keyed by it, as the API server's conversion makes it), atomic structs from
`x-kubernetes-map-type`, and which fields are resource quantities. Custom
resources take theirs from their CRD's `openAPIV3Schema`. A kind without a
schema (HTTPRoute: its CRD is not installed here) is "deduced" as the API server
deduces an unknown type: every list atomic, every object granular.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
from collections.abc import Mapping
from typing import Any

QUANTITY_REF = "io.k8s.apimachinery.pkg.api.resource.Quantity"
INT_OR_STRING_REF = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"


@dataclasses.dataclass(frozen=True)
class Schema:
    """One node of a structural schema; `None` in its place means "no schema" (deduced)."""

    raw: Mapping[str, Any]
    defs: Mapping[str, Any] = dataclasses.field(repr=False, default_factory=dict)
    ref: str = ""  # the definition this node came from, if any
    # Built-in definitions leave opaque objects (FieldsV1, RawExtension) without properties; a CRD's
    # structural schema prunes such an object to nothing unless it preserves unknown fields.
    builtin: bool = False
    # Children resolved once (a schema is walked on every write).
    _children: dict[str, Schema | None] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def _node(self, raw: Mapping[str, Any] | None) -> Schema | None:
        if raw is None:
            return None
        return resolve(raw, self.defs, builtin=self.builtin)

    def field(self, name: str) -> Schema | None:
        key = "f:" + name
        if key not in self._children:
            properties = self.raw.get("properties") or {}
            additional = self.raw.get("additionalProperties")
            if name in properties:
                self._children[key] = self._node(properties[name])
            elif isinstance(additional, Mapping):
                self._children[key] = self._node(additional)
            else:
                self._children[key] = None
        return self._children[key]

    def items(self) -> Schema | None:
        if "items" not in self._children:
            items = self.raw.get("items")
            self._children["items"] = self._node(items) if isinstance(items, Mapping) else None
        return self._children["items"]

    def knows(self, name: str) -> bool:
        """Whether `name` is a declared field (else a real server prunes it, unless unknowns are kept)."""
        return (
            name in (self.raw.get("properties") or {})
            or isinstance(self.raw.get("additionalProperties"), Mapping)
            or self.raw.get("additionalProperties") is True
            or self.preserves_unknown
        )

    @property
    def preserves_unknown(self) -> bool:
        declared = self.raw.get("properties") or self.raw.get("items") or self.raw.get("additionalProperties")
        untyped = self.raw.get("type") is None
        return bool(self.raw.get("x-kubernetes-preserve-unknown-fields")) or (
            not declared and (untyped or self.builtin)
        )

    @property
    def is_struct(self) -> bool:
        return "properties" in self.raw

    @property
    def is_map(self) -> bool:
        """A map (Go map, `additionalProperties`) rather than a struct: its empty form is omitted."""
        return isinstance(self.raw.get("additionalProperties"), Mapping) and "properties" not in self.raw

    @property
    def atomic_object(self) -> bool:
        return self.raw.get("x-kubernetes-map-type") == "atomic"

    @property
    def list_type(self) -> str:
        """atomic, set or map."""
        declared = self.raw.get("x-kubernetes-list-type")
        if declared:
            return str(declared)
        strategy = str(self.raw.get("x-kubernetes-patch-strategy", ""))
        if "merge" in strategy.split(","):
            return "map" if self.raw.get("x-kubernetes-patch-merge-key") else "set"
        return "atomic"

    @property
    def list_keys(self) -> tuple[str, ...]:
        keys = self.raw.get("x-kubernetes-list-map-keys")
        if keys:
            return tuple(keys)
        merge_key = self.raw.get("x-kubernetes-patch-merge-key")
        return (merge_key,) if merge_key else ()

    @property
    def is_quantity(self) -> bool:
        return self.ref == QUANTITY_REF

    @property
    def default(self) -> Any:
        return self.raw.get("default")

    @property
    def has_default(self) -> bool:
        return "default" in self.raw

    @property
    def nullable(self) -> bool:
        return bool(self.raw.get("nullable"))


def resolve(raw: Mapping[str, Any], defs: Mapping[str, Any], *, builtin: bool = False) -> Schema:
    """Follow `$ref` (and a one-element `allOf`), keeping the referencing node's own annotations."""
    ref = ""
    node = dict(raw)
    for _ in range(32):
        if "$ref" in node:
            ref = str(node.pop("$ref")).rsplit("/", 1)[-1]
            node = {**defs.get(ref, {}), **node}
        elif node.pop("x-modelfleet-builtin", False):
            builtin = True
        elif isinstance(node.get("allOf"), list) and len(node["allOf"]) == 1:
            node = {**node.pop("allOf")[0], **node}
        else:
            break
    return Schema(node, defs, ref, builtin)


@functools.cache
def _builtin_definitions() -> tuple[dict[str, Any], dict[tuple[str, str], str]]:
    import kubernetes_validate.utils

    version = kubernetes_validate.utils.latest_version()
    root = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}-local"
    defs: dict[str, Any] = json.loads((root / "_definitions.json").read_text())["$defs"]
    by_kind: dict[tuple[str, str], str] = {}
    for name, definition in defs.items():
        for gvk in definition.get("x-kubernetes-group-version-kind") or []:
            api_version = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
            by_kind.setdefault((api_version, gvk["kind"]), name)
    return defs, by_kind


@functools.cache
def builtin_schema(api_version: str, kind: str) -> Schema | None:
    defs, by_kind = _builtin_definitions()
    name = by_kind.get((api_version, kind))
    if name is None:
        return None
    return resolve({"$ref": f"#/$defs/{name}"}, defs, builtin=True)


def builtin_definition(name: str) -> Schema:
    defs, _ = _builtin_definitions()
    return resolve({"$ref": f"#/$defs/{name}"}, defs, builtin=True)


_OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


def crd_schema(crd: Mapping[str, Any], version: str) -> Schema | None:
    """The schema of one served version of a CRD, with `metadata` as the API server treats it (ObjectMeta)."""
    for served in crd["spec"]["versions"]:
        if served["name"] != version:
            continue
        raw = ((served.get("schema") or {}).get("openAPIV3Schema")) or None
        if raw is None:
            return None
        defs, _ = _builtin_definitions()
        properties = dict(raw.get("properties") or {})
        # ObjectMeta is built in: resolved as such wherever it is reached from the CRD's schema.
        properties["metadata"] = {"$ref": f"#/$defs/{_OBJECT_META}", "x-modelfleet-builtin": True}
        properties.setdefault("apiVersion", {"type": "string"})
        properties.setdefault("kind", {"type": "string"})
        return Schema({**raw, "properties": properties}, defs)
    return None


__all__ = [
    "INT_OR_STRING_REF",
    "QUANTITY_REF",
    "Schema",
    "builtin_definition",
    "builtin_schema",
    "crd_schema",
    "resolve",
]
