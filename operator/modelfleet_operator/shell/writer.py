"""The operator's writes: only what differs from the cache, each answer put back into the cache.

- `ensure(desired)`: nothing when the live object is up to date (`drift.up_to_date`);
  otherwise a server-side apply, forced only for an object the operator owns (the
  decision built it only after the ownership check). An object missing from the
  cache is looked up first: the watches only see what the operator labelled, so a
  GET tells a free name from an object someone else made, which is remembered and
  never written (the decision then fails the version, naming it).
- `remove`, `write_status`, `set_finalizer`, `post_event`: the other writes, each
  skipped when there is nothing to change.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from enum import Enum
from typing import Any

from modelfleet_operator.core import drift, status
from modelfleet_operator.core.manifests import MANAGED_BY
from modelfleet_operator.core.model import FINALIZER
from modelfleet_operator.shell import kube as k8s
from modelfleet_operator.shell.cache import Cache
from modelfleet_operator.shell.kube import ApiError, Kind, Kube
from modelfleet_operator.shell.metrics import OperatorMetrics

Logger = logging.Logger | logging.LoggerAdapter[Any]


class Outcome(Enum):
    UNCHANGED = "unchanged"
    APPLIED = "applied"
    CONFLICT = "conflict"  # a foreign object has the name: remembered, reconcile again to fail the version
    BUSY = "busy"  # another model's reconcile is creating that name right now


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


class Writer:
    def __init__(self, kube: Kube, cache: Cache, logger: Logger, metrics: OperatorMetrics) -> None:
        self.kube = kube
        self.cache = cache
        self.logger = logger
        self.metrics = metrics
        self._creating: set[tuple[Kind, str, str]] = set()

    def _wrote(self, kind: Kind, verb: str) -> None:
        self.metrics.writes.labels(kind=kind.plural, verb=verb).inc()

    async def ensure(self, desired: Mapping[str, Any]) -> Outcome:
        kind = k8s.kind_of(desired)
        namespace, name = str(_meta(desired)["namespace"]), str(_meta(desired)["name"])
        live = self.cache.get(kind, namespace, name)
        if drift.up_to_date(live, desired):
            return Outcome.UNCHANGED
        force = live is not None
        if live is None:
            key = (kind, namespace, name)
            if key in self._creating:
                return Outcome.BUSY
            self._creating.add(key)
            try:
                return await self._create(kind, namespace, name, desired)
            finally:
                self._creating.discard(key)
        answer = await self.kube.apply(kind, namespace, desired, force=force)
        self._wrote(kind, "apply")
        self.cache.observe(kind, answer)
        self.logger.info(f"Applied {desired['kind']} {namespace}/{name}")
        return Outcome.APPLIED

    async def _create(self, kind: Kind, namespace: str, name: str, desired: Mapping[str, Any]) -> Outcome:
        found = await self.kube.get(kind, namespace, name)
        if found is not None:
            labels = _meta(found).get("labels") or {}
            if labels.get("app.kubernetes.io/managed-by") == MANAGED_BY:
                self.cache.observe(kind, found)  # the operator's own, not in the cache yet: decide again with it
                return Outcome.BUSY
            self.cache.remember_foreign(kind, found)
            self.logger.warning(f"{desired['kind']} {namespace}/{name} exists and is not the operator's: not touched")
            return Outcome.CONFLICT
        answer = await self.kube.apply(kind, namespace, desired, force=False)
        self._wrote(kind, "apply")
        self.cache.observe(kind, answer)
        self.logger.info(f"Created {desired['kind']} {namespace}/{name}")
        return Outcome.APPLIED

    async def remove(self, kind: Kind, namespace: str, name: str) -> None:
        if self.cache.get(kind, namespace, name) is None:
            return
        await self.kube.delete(kind, namespace, name)
        self._wrote(kind, "delete")
        self.logger.info(f"Deleted {kind.plural} {namespace}/{name}: no longer needed")

    async def write_status(self, mv: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        """Merge-patch the status keys that differ from the cached status; nothing when none does."""
        patch = status.status_patch(mv.get("status"), new)
        if not patch:
            return
        namespace, name = str(_meta(mv)["namespace"]), str(_meta(mv)["name"])
        try:
            answer = await self.kube.merge_patch(
                k8s.MODELVERSIONS, namespace, name, {"status": patch}, subresource="status"
            )
        except ApiError as exc:
            if exc.status == 404:
                return  # deleted meanwhile
            raise
        self._wrote(k8s.MODELVERSIONS, "patch-status")
        self.cache.observe(k8s.MODELVERSIONS, answer)

    async def set_finalizer(self, mv: Mapping[str, Any], wanted: bool) -> None:
        """Add or remove FINALIZER, with the resourceVersion as precondition (a 409 retries later)."""
        meta = _meta(mv)
        current = list(meta.get("finalizers") or [])
        if (FINALIZER in current) == wanted or (wanted and meta.get("deletionTimestamp")):
            return
        finalizers = [*current, FINALIZER] if wanted else [f for f in current if f != FINALIZER]
        patch = {"metadata": {"finalizers": finalizers or None, "resourceVersion": meta.get("resourceVersion")}}
        try:
            answer = await self.kube.merge_patch(k8s.MODELVERSIONS, str(meta["namespace"]), str(meta["name"]), patch)
        except ApiError as exc:
            if exc.status == 404:
                return
            raise
        self._wrote(k8s.MODELVERSIONS, "patch-finalizers")
        if answer.get("metadata", {}).get("deletionTimestamp") and not finalizers:
            self.cache.forget(k8s.MODELVERSIONS, answer)
        else:
            self.cache.observe(k8s.MODELVERSIONS, answer)
        self.logger.info(f"{'Added' if wanted else 'Removed'} the finalizer of ModelVersion {meta['name']}")

    async def patch_spec(self, mv: Mapping[str, Any], spec_patch: Mapping[str, Any]) -> None:
        meta = _meta(mv)
        answer = await self.kube.merge_patch(
            k8s.MODELVERSIONS, str(meta["namespace"]), str(meta["name"]), {"spec": dict(spec_patch)}
        )
        self._wrote(k8s.MODELVERSIONS, "patch-spec")
        self.cache.observe(k8s.MODELVERSIONS, answer)

    async def create_once(self, kind: Kind, obj: Mapping[str, Any]) -> bool:
        """Create `obj`; False when it exists already (made before a restart, or concurrently)."""
        try:
            answer = await self.kube.create(kind, str(_meta(obj)["namespace"]), obj)
        except ApiError as exc:
            if exc.status == 409:
                return False
            raise
        self._wrote(kind, "create")
        if kind in (k8s.MODELVERSIONS, k8s.JOBS):
            self.cache.observe(kind, answer)
        return True

    async def post_event(self, event: Mapping[str, Any]) -> None:
        await self.create_once(k8s.EVENTS, event)


__all__ = ["Outcome", "Writer"]
