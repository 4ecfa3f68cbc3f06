"""What `modelfleet-operator render` prints: every manifest the operator creates for ModelVersions
once all of them are Ready, with the same builders the reconciler uses, for a cluster that serves
every optional kind (the GRPCRoute of gateway mode included).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from typing import Any

from modelfleet_operator.config import OperatorConfig
from modelfleet_operator.core import drift, manifests
from modelfleet_operator.core.model_objects import OPTIONAL_KINDS, ModelObjects, build_model_objects
from modelfleet_operator.core.snapshot import meta_of, name_of
from modelfleet_operator.core.transitions import VersionTraffic, plan_transition


def render_manifests(objects: Iterable[Mapping[str, Any]], config: OperatorConfig) -> list[dict[str, Any]]:
    """Every manifest the operator creates for these ModelVersions once all of them are Ready.

    Per model (sorted by namespace and name): the shared objects, then each version's
    children. Raises SpecRejected, naming the object.
    """
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for mv in objects:
        try:
            spec = manifests.validated(mv, config)
        except manifests.SpecRejected as err:
            raise type(err)(f"ModelVersion {meta_of(mv).get('name')!r}: {err}") from None
        groups.setdefault((manifests.namespace_of(mv), spec.model), []).append(mv)
    out: list[dict[str, Any]] = []
    for (namespace, model), members in sorted(groups.items()):
        settled = []
        for mv in sorted(members, key=name_of):
            spec = manifests.validated(mv, config)
            full = manifests.default_scale(spec)
            settled.append(VersionTraffic(name_of(mv), spec.traffic, full, eligible=True, available=full.floor))
        plan = plan_transition(
            settled,
            mode="gateway" if config.routing == "gateway" else "service",
            now=datetime.datetime.now(datetime.UTC),
            scale_down_delay=0,
            retire_after=0,
        )
        versions = sorted(members, key=name_of)
        objects_ = ModelObjects(
            model=model,
            namespace=namespace,
            versions=versions,
            owners_of=versions,
            shares={n: p.share for n, p in plan.versions.items()},
            version_of={name_of(mv): str(mv["spec"]["version"]) for mv in versions},
            config=config,
            served=OPTIONAL_KINDS,
        )
        out.extend(drift.stamped(m) for m in build_model_objects(objects_))
        for mv in versions:
            out.extend(drift.stamped(c) for c in manifests.build_children(mv, config, plan.versions[name_of(mv)].scale))
    return out


__all__ = ["render_manifests"]
