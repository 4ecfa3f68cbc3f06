"""Whether a live object already is what the operator would apply, so that no request is needed.

The operator writes its objects with server-side apply under one field manager:
the server keeps other managers' fields, removes the fields this manager no
longer sends, and merges the rest. Sending the same desired object again
changes nothing, but it is still a request; `up_to_date` says when to skip it:

- the live object carries the hash of the desired object in the annotation
  `serving.modelfleet.dev/applied` (`stamped` puts it there), so any change of
  the desired object, a field removed from it included, is seen; and
- every field of the desired object is on the live object with the same value,
  so a change someone else made to a field the operator owns is seen too.

The API server adds defaults (a live object has more fields) and writes
resource quantities in canonical form (`cpu: 1` is stored as "1", `1024Mi` as
"1Gi", "0.5" as "500m"): quantities compare by value, so neither causes a write.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from modelfleet_operator.spec import GROUP

APPLIED_ANNOTATION = f"{GROUP}/applied"
# Where a resource quantity sits: resources.requests.X, resources.limits.X, emptyDir.sizeLimit.
QUANTITY_PARENTS = frozenset({"requests", "limits"})
QUANTITY_KEYS = frozenset({"sizeLimit"})

_QUANTITY = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))([eE][+-]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?$")
_SUFFIX = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}


def quantity(value: Any) -> Decimal | None:
    """The value of a Kubernetes resource quantity (`500m`, `1Gi`, `2`, `1e3`), None if it is not one."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    match = _QUANTITY.match(str(value).strip())
    if match is None:
        return None
    number, suffix = match.group(1), match.group(2) or ""
    try:
        if len(suffix) > 1 and suffix[0] in "eE" and suffix[1] != "i":
            return Decimal(number) * Decimal(10) ** int(suffix[1:])
        return Decimal(number) * _SUFFIX[suffix]
    except (InvalidOperation, ValueError):
        return None


def same_quantity(a: Any, b: Any) -> bool:
    qa, qb = quantity(a), quantity(b)
    return qa is not None and qa == qb


def contains(actual: Any, desired: Any, *, key: str = "", parent: str = "") -> bool:
    """Whether `actual` has every field of `desired` with the same value (quantities by value).

    Mappings may have more keys (defaults, status, other managers' fields); lists must match
    element by element: the operator sends whole lists, and defaulting only fills in fields.
    """
    if isinstance(desired, Mapping):
        return isinstance(actual, Mapping) and all(
            k in actual and contains(actual[k], v, key=str(k), parent=key) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(desired)
            and all(contains(a, d, key=key, parent=parent) for a, d in zip(actual, desired, strict=True))
        )
    if actual == desired and type(actual) is type(desired):
        return True
    if parent in QUANTITY_PARENTS or key in QUANTITY_KEYS:
        return same_quantity(actual, desired)
    return bool(actual == desired) and not isinstance(actual, bool) and not isinstance(desired, bool)


def applied_hash(desired: Mapping[str, Any]) -> str:
    """A short hash of a desired object without its hash annotation (stable across processes)."""
    meta = dict(desired.get("metadata") or {})
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != APPLIED_ANNOTATION}
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    body = {**desired, "metadata": meta}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def stamped(desired: Mapping[str, Any]) -> dict[str, Any]:
    """`desired` with its hash in the applied annotation, as the operator applies it."""
    meta = dict(desired.get("metadata") or {})
    meta["annotations"] = {**(meta.get("annotations") or {}), APPLIED_ANNOTATION: applied_hash(desired)}
    return {**desired, "metadata": meta}


def up_to_date(live: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> bool:
    """Whether applying `desired` (stamped) over `live` would change nothing."""
    if live is None:
        return False
    annotations = (live.get("metadata") or {}).get("annotations") or {}
    if annotations.get(APPLIED_ANNOTATION) != applied_hash(desired):
        return False
    return contains(live, stamped(desired))


__all__ = [
    "APPLIED_ANNOTATION",
    "applied_hash",
    "contains",
    "quantity",
    "same_quantity",
    "stamped",
    "up_to_date",
]
