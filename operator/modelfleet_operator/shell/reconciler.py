"""One reconcile of one model: snapshot from the cache, ask the pods, decide, write what differs.

The work queue calls `ModelReconciler.reconcile((namespace, model))` for a model
whose objects changed (a watch event), whose hold ends, whose canary analysis
is due, or at the resync. It

1. reads the model's `ModelSnapshot` from the cache, with no API request;
2. asks the pods what the API cannot say (`pods`): why a pod is not ready,
   and, every `ANALYSIS_INTERVAL_SECONDS`, the counters of the canary
   candidates and of the stable version;
3. calls `core.model.decide`, then the learning step;
4. writes: the feedback token Secret a Deployment mounts, the children of
   each version and the model's shared objects (server-side apply, skipped when
   up to date), the optional children no longer needed, the finalizers, the
   statuses, the Events.

A name taken by an object the operator does not own is found before it is
written and the model is reconciled again at once, so the version is Failed
with the reason. API errors that may pass (409, 429, 5xx) end the reconcile
with `RetryLater`: every write is idempotent, so the next one picks up where
this one stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp

from modelfleet_operator.config import OperatorConfig
from modelfleet_operator.core import canary, manifests, status
from modelfleet_operator.core import model as core_model
from modelfleet_operator.core import snapshot as snapshot_
from modelfleet_operator.core.model_objects import shared_kinds
from modelfleet_operator.core.rollout import Counts
from modelfleet_operator.shell import kube as k8s
from modelfleet_operator.shell import pods as pod_http
from modelfleet_operator.shell.cache import FOREIGN_TTL_SECONDS, Cache, ModelKey
from modelfleet_operator.shell.kube import ApiError
from modelfleet_operator.shell.learning import LearningResult, LearningStep
from modelfleet_operator.shell.queue import RetryLater
from modelfleet_operator.shell.writer import Outcome, Writer

Logger = logging.Logger | logging.LoggerAdapter[Any]
# How soon a model is decided again after a write found a name taken (or being created by another model).
AGAIN_SECONDS = 0.1
KINDS_BY_NAME = {
    "HorizontalPodAutoscaler": k8s.HPAS,
    "PodDisruptionBudget": k8s.PDBS,
}


class ModelReconciler:
    def __init__(
        self,
        config: OperatorConfig,
        cache: Cache,
        writer: Writer,
        http: aiohttp.ClientSession,
        logger: Logger,
    ) -> None:
        self.config = config
        self.cache = cache
        self.writer = writer
        self.http = http
        self.logger = logger
        self.learning = LearningStep(cache, writer, http, config, logger)
        names = set(shared_kinds(config))
        self.shared = [kind for kind, name in k8s.KIND_NAMES.items() if name in names and kind != k8s.MODELVERSIONS]
        self._analysed: dict[ModelKey, float] = {}
        # The optional shared kinds the cluster serves (`handlers.discover`, before the first reconcile).
        self.served: frozenset[str] = frozenset()

    async def reconcile(self, key: ModelKey) -> float | None:
        """Reconcile one model; returns when to look again without an event (None: at the resync)."""
        metrics = self.writer.metrics
        outcome = "error"
        with metrics.reconcile_seconds.time():
            try:
                again = await self._reconcile(key)
                outcome = "ok"
                return again
            except ApiError as exc:
                if exc.transient:
                    outcome = "retry"
                    raise RetryLater(f"the API server answered {exc}", exc.retry_after) from None
                raise
            finally:
                metrics.reconciles.labels(outcome=outcome).inc()

    async def _reconcile(self, key: ModelKey) -> float | None:
        namespace, model = key
        await self._look_again_at_foreign(namespace, model)
        snapshot = self.cache.snapshot(namespace, model, self.shared, self.served)
        if not snapshot.versions:
            self._analysed.pop(key, None)
            return None  # the model is gone; the garbage collector removes what it owned
        now = datetime.now(UTC)
        observations = await self._observe(key, snapshot, now)
        decision = core_model.decide(snapshot, observations, self.config, now)
        learned = await self.learning.run(snapshot, decision, now)
        if await self._write(snapshot, decision, learned):
            return AGAIN_SECONDS
        waits = [w for w in (decision.requeue_after, learned.requeue_after) if w is not None]
        if self.cache.foreign_names(namespace, self.cache.names_of(namespace, model)):
            waits.append(FOREIGN_TTL_SECONDS)  # nothing tells the operator when such an object goes
        return min(waits) if waits else None

    async def _look_again_at_foreign(self, namespace: str, model: str) -> None:
        """GET the foreign objects this model's names collide with, once they are due for a new look."""
        for kind, name in self.cache.foreign_names(namespace, self.cache.names_of(namespace, model), stale_only=True):
            found = await self.writer.kube.get(kind, namespace, name)
            if found is None:
                self.cache.forget_foreign(kind, namespace, name)
            else:
                self.cache.remember_foreign(kind, found)

    async def _observe(self, key: ModelKey, snapshot: snapshot_.ModelSnapshot, now: datetime) -> snapshot_.Observations:
        readiness = await pod_http.readiness_of(self.http, snapshot.pods)
        endpoints = {
            name: await self._ready_endpoints(snapshot.namespace, name)
            for name in core_model.takers(snapshot, self.config, now)
        }
        counts: dict[str, Counts] = {}
        targets = canary.analysis_targets(snapshot, self.config)
        moment = time.monotonic()
        if targets and moment - self._analysed.get(key, float("-inf")) >= canary.ANALYSIS_INTERVAL_SECONDS:
            self._analysed[key] = moment
            versions = {v.name: v for v in snapshot_.versions_of(snapshot, self.config)}
            for name in targets:
                found = await pod_http.version_counts(self.http, versions[name].pods)
                if found is None:
                    counts = {}  # a partial picture would judge against the wrong baseline
                    self.logger.debug(f"Canary analysis of model {key} skipped: a ready pod of {name} did not answer")
                    break
                counts[name] = found
        return snapshot_.Observations(readiness=readiness, counts=counts, endpoints=endpoints)

    async def _ready_endpoints(self, namespace: str, service: str) -> int:
        """Ready endpoints of one Service, from its EndpointSlices (one labelled LIST, only while a
        version is about to take a share)."""
        slices = await self.writer.kube.list(
            k8s.ENDPOINTSLICES, namespace, label_selector=f"kubernetes.io/service-name={service}"
        )
        return sum(
            len(endpoint.get("addresses") or [])
            for eps in slices
            for endpoint in eps.get("endpoints") or []
            if (endpoint.get("conditions") or {}).get("ready") is not False
        )

    async def _write(
        self, snapshot: snapshot_.ModelSnapshot, decision: core_model.ModelDecision, learned: LearningResult
    ) -> bool:
        """Every write of the decision; True when a name conflict was found and the model must be decided again."""
        by_name = {str(v["metadata"]["name"]): v for v in snapshot.versions}
        for name, version in decision.versions.items():
            mv = by_name[name]
            if version.children:
                await self.learning.ensure_feedback_token(mv, manifests.version_spec(mv))
        # A name found taken stops the writes: the next decision fails the version, before any of its
        # other objects exist.
        for manifest in [*decision.shared, *(c for v in decision.versions.values() for c in v.children)]:
            if await self._ensure(manifest):
                return True
        for version in decision.versions.values():
            for kind, name in version.remove:
                await self.writer.remove(KINDS_BY_NAME[kind], snapshot.namespace, name)
        for name, version in decision.versions.items():
            mv = self.cache.get(k8s.MODELVERSIONS, snapshot.namespace, name) or by_name[name]
            generation = int(mv["metadata"].get("generation") or 1)
            new = learned.merged(name, version.status, generation)
            new["conditions"] = status.ordered(new.get("conditions") or [])
            # The Event first: whoever sees the status (a rollback) finds the Event that explains it.
            for event in version.events:
                self.logger.warning(f"{event['reason']} {name}: {event['message']}")
                await self.writer.post_event(event)
            await self.writer.write_status(mv, new)
        for name, version in decision.versions.items():
            current = self.cache.get(k8s.MODELVERSIONS, snapshot.namespace, name)
            if current is not None:
                await self.writer.set_finalizer(current, version.finalizer)
        return False

    async def _ensure(self, manifest: Mapping[str, Any]) -> bool:
        outcome = await self.writer.ensure(manifest)
        return outcome in (Outcome.CONFLICT, Outcome.BUSY)


__all__ = ["ModelReconciler"]
