"""The online-learning loop's shell (DESIGN.md section 5): the reads and writes around `core.retraining`.

`LearningStep.run` is part of every reconcile of a model that has a version
with `spec.retraining` or a version produced by a retraining Job. It reads the
model's Jobs and their pods from the cache, and returns what the versions'
statuses gain (`LearningResult`), which the reconciler writes with the rest of
each status in one patch:

- the retraining side: the unconsumed sample count from ONE ready pod (every
  replica counts the same shared volume; asked at most every
  `SAMPLES_POLL_SECONDS`), a finished Job of this version recorded once
  (status.lastRetraining, an Event, and on success the child ModelVersion), then
  `retraining.should_retrain` on a fresh count decides whether to start the next
  Job; only the model's `retraining_version` starts Jobs, one at a time per model;
- the promotion side, for a child: `retraining.promotion` decides once the child
  is Ready, has served its canary share and, with `spec.rollout`, passed its
  canary analysis (`minAnalysisSeconds` with `minRequests`); promoting is setting
  the versions' spec.traffic, and the model's reconcile moves the traffic over
  like any change of weights: the child scales up and is Available before the
  parent gives up its replicas.

Every write is keyed by a name the pure functions derive (the Job of attempt N,
its child, the Event of a Job's outcome), so an operator restarted at any step
finds what it already did (409) instead of doing it twice.

The feedback token (DESIGN.md section 9): without `spec.retraining.tokenSecretRef`
the runtime pods mount the Secret MODEL-feedback-token, which `ensure_feedback_token`
creates with a random token before the Deployment needs it and never rewrites
(a create that answers 409 means it is there; the operator does not read Secrets).
The Secret has no owner on purpose: the token is the model's credential, held by
the clients that send feedback, and must outlive every single version. It carries
the model's labels, so `kubectl delete secret -l serving.modelfleet.dev/model=MODEL`
removes it with the model.
"""

from __future__ import annotations

import base64
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp

from modelfleet_operator.config import OperatorConfig
from modelfleet_operator.core import canary, manifests, retraining, status
from modelfleet_operator.core import model as core_model
from modelfleet_operator.core import snapshot as snapshot_
from modelfleet_operator.core.timestamps import rfc3339
from modelfleet_operator.shell import kube as k8s
from modelfleet_operator.shell import pods as pod_http
from modelfleet_operator.shell.cache import Cache
from modelfleet_operator.shell.writer import Writer
from modelfleet_operator.spec import GROUP, ModelVersionSpec

Logger = logging.Logger | logging.LoggerAdapter[Any]

TOKEN_BYTES = 32
RETRAINING_TRIGGERED = "RetrainingTriggered"
PROMOTED = "Promoted"
COMPONENT = "modelfleet-operator"
# How often the unconsumed sample count of a retraining version is read from a pod.
SAMPLES_POLL_SECONDS = 5.0


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _name(obj: Mapping[str, Any]) -> str:
    return str(_meta(obj)["name"])


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return _meta(obj).get("labels") or {}


def _status(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("status") or {}


def _condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    return next((c for c in _status(obj).get("conditions") or [] if c.get("type") == kind), None)


@dataclass
class LearningResult:
    """What the learning step adds to each version's status: keys, and conditions to merge."""

    status: dict[str, dict[str, Any]] = field(default_factory=dict)
    conditions: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    requeue_after: float | None = None

    def add(self, name: str, *, keys: Mapping[str, Any] | None = None, condition: dict[str, str] | None = None) -> None:
        if keys:
            self.status.setdefault(name, {}).update(keys)
        if condition:
            self.conditions.setdefault(name, []).append(condition)

    def merged(self, name: str, new_status: Mapping[str, Any], generation: int) -> dict[str, Any]:
        """`new_status` with this step's keys and conditions for version `name`."""
        out = {**dict(new_status), **self.status.get(name, {})}
        conditions = self.conditions.get(name)
        if conditions:
            out["conditions"] = status.merge_conditions(out.get("conditions"), conditions, generation, status.now())
        return out


def event(
    obj: Mapping[str, Any], *, key: str, reason: str, message: str, warning: bool = False, now: datetime
) -> dict[str, Any]:
    """A core/v1 Event about a ModelVersion. `key` makes its name: one Event per (object, key),
    so the same outcome reported again after a restart answers 409 instead of a second Event."""
    meta = _meta(obj)
    stamp = rfc3339(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{key}"[:253], "namespace": meta.get("namespace")},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion", "serving.modelfleet.dev/v1alpha1"),
            "kind": obj.get("kind", "ModelVersion"),
            "name": meta["name"],
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
        },
        "reason": reason,
        "message": message[:1024],
        "type": "Warning" if warning else "Normal",
        "count": 1,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
    }


def token_secret(model: str, namespace: str, name: str) -> dict[str, Any]:
    """The Secret the operator creates when spec.retraining names none: a fresh random token."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    labels = {**manifests.model_labels(model), "app.kubernetes.io/component": "feedback-token"}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "type": "Opaque",
        "data": {"token": base64.b64encode(token.encode()).decode()},
    }


def _trigger_samples(job: Mapping[str, Any]) -> int | None:
    raw = (_meta(job).get("annotations") or {}).get(f"{GROUP}/trigger-samples")
    return int(raw) if raw and str(raw).isdigit() else None


def _recorded(last: Mapping[str, Any], job: str) -> bool:
    """Whether status.lastRetraining already holds the final outcome of `job`."""
    if last.get("job") != job:
        return False
    return last.get("result") == "Failed" or (last.get("result") == "Succeeded" and bool(last.get("producedVersion")))


def _termination_message(pods: Sequence[Mapping[str, Any]]) -> str | None:
    """The trainer container's termination message from the newest of the Job's pods that has one."""
    for pod in sorted(pods, key=lambda p: str(_meta(p).get("creationTimestamp") or ""), reverse=True):
        for cs in _status(pod).get("containerStatuses") or []:
            if cs.get("name") != retraining.CONTAINER_NAME:
                continue
            for state in (cs.get("state") or {}, cs.get("lastState") or {}):
                message = (state.get("terminated") or {}).get("message")
                if message:
                    return str(message)
    return None


class LearningStep:
    """The learning side of a model's reconcile; one per operator (it remembers when it polled)."""

    def __init__(
        self, cache: Cache, writer: Writer, http: aiohttp.ClientSession, config: OperatorConfig, logger: Logger
    ) -> None:
        self.cache = cache
        self.writer = writer
        self.http = http
        self.config = config
        self.logger = logger
        self._polled: dict[tuple[str, str], float] = {}
        self._tokens: set[tuple[str, str]] = set()

    async def ensure_feedback_token(self, mv: Mapping[str, Any], spec: ModelVersionSpec) -> None:
        """Create MODEL-feedback-token when the version needs it; never touch an existing one."""
        if spec.retraining is None or spec.retraining.token_secret_ref is not None:
            return  # no feedback endpoint, or the user's own Secret
        namespace = manifests.namespace_of(mv)
        name, _ = manifests.feedback_token_secret(spec)
        if (namespace, name) in self._tokens:
            return
        if await self.writer.create_once(k8s.SECRETS, token_secret(spec.model, namespace, name)):
            self.logger.info(f"Created Secret {name} with a random feedback token for model {spec.model}")
        self._tokens.add((namespace, name))

    async def run(
        self, snapshot: snapshot_.ModelSnapshot, decision: core_model.ModelDecision, now: datetime
    ) -> LearningResult:
        result = LearningResult()
        live = [v for v in snapshot.versions if not _meta(v).get("deletionTimestamp")]
        if not any((v.get("spec") or {}).get("retraining") or retraining.LABEL_PARENT in _labels(v) for v in live):
            return result
        # The versions with the status this reconcile gives them (phase, servingTraffic), over what is stored.
        versions = [
            {**v, "status": {**_status(v), **decision.versions[_name(v)].status}}
            for v in live
            if _name(v) in decision.versions
        ]
        jobs = self.cache.jobs(snapshot.namespace, snapshot.model)
        for mv in versions:
            if (mv.get("spec") or {}).get("retraining") and _status(mv).get("phase") != status.FAILED:
                await self._retrain(snapshot, mv, versions, jobs, result, now)
        stored = {_name(v): v for v in live}
        for mv in versions:
            if retraining.LABEL_PARENT in _labels(mv):
                served = int(_status(stored[_name(mv)]).get("servingTraffic") or 0) > 0
                await self._promote(mv, versions, served, decision.versions[_name(mv)].promotable, result, now)
        return result

    def _due(self, mv: Mapping[str, Any]) -> bool:
        key = (manifests.namespace_of(mv), _name(mv))
        moment = time.monotonic()
        if moment - self._polled.get(key, float("-inf")) < SAMPLES_POLL_SECONDS:
            return False
        self._polled[key] = moment
        return True

    async def _samples(self, snapshot: snapshot_.ModelSnapshot, mv: Mapping[str, Any]) -> int | None:
        version = str(mv["spec"]["version"])
        pods = [p for p in snapshot.pods if _labels(p).get(manifests.LABEL_VERSION) == version]
        return await pod_http.feedback_samples(self.http, pods)

    async def _record_finished(
        self,
        snapshot: snapshot_.ModelSnapshot,
        mv: Mapping[str, Any],
        own_jobs: Sequence[Mapping[str, Any]],
        last: dict[str, Any],
        events: list[dict[str, Any]],
        now: datetime,
    ) -> dict[str, Any]:
        """The newest finished Job of this version, recorded once: its child on success, its reason on failure."""
        numbered = [(retraining.attempt_of(_name(j)), j) for j in own_jobs]
        attempts = [(a, j) for a, j in numbered if a is not None]
        if not attempts:
            return last
        attempt, job = max(attempts, key=lambda item: item[0])
        name = _name(job)
        if attempt < (retraining.attempt_of(last.get("job")) or 0) or _recorded(last, name):
            return last
        job_pods = self.cache.pods_owned_by(snapshot.namespace, snapshot.model, str(_meta(job).get("uid")))
        outcome = retraining.job_outcome(job, _termination_message(job_pods))
        if outcome.result == "Running":
            return last
        samples = (
            outcome.metrics.samples
            if outcome.metrics and outcome.metrics.samples is not None
            else last.get("samples")
            if last.get("job") == name
            else _trigger_samples(job)
        )
        record: dict[str, Any] = {"job": name, "result": outcome.result, "message": outcome.message}
        if last.get("job") == name and last.get("startTime"):
            record["startTime"] = last["startTime"]
        if outcome.completion_time:
            record["completionTime"] = outcome.completion_time
        if samples is not None:
            record["samples"] = samples
        if outcome.result == "Succeeded":
            claim = str(mv["spec"]["retraining"]["feedbackClaim"])
            child = retraining.build_child(mv, outcome, name, claim)
            child_name = _name(child)
            known = any(_name(v) == child_name for v in snapshot.versions)
            if not known and await self.writer.create_once(k8s.MODELVERSIONS, child):
                self.logger.info(
                    f"Retraining Job {name} succeeded; created ModelVersion {child_name}: {outcome.message}"
                )
            record["producedVersion"] = child_name
            message = f"Job {name} produced ModelVersion {child_name}: {outcome.message}"
            events.append(event(mv, key=f"{name}.succeeded", reason="RetrainingSucceeded", now=now, message=message))
        else:
            self.logger.warning(f"Retraining Job {name} failed: {outcome.message}")
            message = (
                f"retraining Job {name} failed; {_name(mv)} keeps serving and the samples stay unconsumed: "
                f"{outcome.message}"
            )
            events.append(
                event(mv, key=f"{name}.failed", reason=outcome.reason, warning=True, now=now, message=message)
            )
        return record

    async def _retrain(
        self,
        snapshot: snapshot_.ModelSnapshot,
        mv: Mapping[str, Any],
        versions: Sequence[Mapping[str, Any]],
        jobs: Sequence[Mapping[str, Any]],
        result: LearningResult,
        now: datetime,
    ) -> None:
        name = _name(mv)
        mv["spec"]["retraining"]
        own = [j for j in jobs if _labels(j).get(retraining.LABEL_PARENT) == name]
        events: list[dict[str, Any]] = []
        previous = dict(_status(mv).get("lastRetraining") or {})
        last = await self._record_finished(snapshot, mv, own, previous, events, now)
        ready = _status(mv).get("phase") == status.READY
        if ready:
            result.requeue_after = SAMPLES_POLL_SECONDS
        # Jobs first: a Job that finishes between the two reads has already consumed its samples.
        samples = await self._samples(snapshot, mv) if ready and self._due(mv) else None
        decision = self._decision(mv, versions, jobs, own, last, samples, now)
        if decision is not None:
            triggered, reason, message = decision
            if reason == "ThresholdReached":
                attempt = retraining.next_attempt(last, own)
                job = retraining.build_job(mv, self.config, samples=int(samples or 0), attempt=attempt, now=now)
                job_name = _name(job)
                if await self.writer.create_once(k8s.JOBS, job):
                    self.logger.info(f"Created retraining Job {job_name}: {message}")
                last = {
                    "job": job_name,
                    "result": "Running",
                    "startTime": rfc3339(now),
                    "samples": int(samples or 0),
                }
                message = f"{message}; started Job {job_name}"
                started = f"started retraining Job {job_name}: {message}"
                events.append(
                    event(mv, key=f"{job_name}.started", reason="RetrainingStarted", now=now, message=started)
                )
            result.add(
                name,
                condition={
                    "type": RETRAINING_TRIGGERED,
                    "status": "True" if triggered else "False",
                    "reason": reason,
                    "message": message,
                },
            )
        keys: dict[str, Any] = {}
        if samples is not None:
            keys["feedbackSamples"] = samples
        if last and last != previous:
            keys["lastRetraining"] = last
        result.add(name, keys=keys)
        for ev in events:
            await self.writer.post_event(ev)

    def _decision(
        self,
        mv: Mapping[str, Any],
        versions: Sequence[Mapping[str, Any]],
        jobs: Sequence[Mapping[str, Any]],
        own: Sequence[Mapping[str, Any]],
        last: Mapping[str, Any],
        samples: int | None,
        now: datetime,
    ) -> tuple[bool, str, str] | None:
        """(triggered, reason, message) of the RetrainingTriggered condition; None to leave it as it is.

        A new Job is started only on a sample count read in this reconcile.
        """
        name = _name(mv)
        model = str(mv["spec"]["model"])
        active = retraining.active_jobs(jobs)
        own_active = [j for j in active if _labels(j).get(retraining.LABEL_PARENT) == name]
        if own_active:
            return True, "JobRunning", f"retraining Job {_name(own_active[0])} is running"
        if active:
            return False, "JobRunning", "a retraining Job of this model is running"
        retrainer = retraining.retraining_version(
            versions, {_name(v): _status(v).get("phase") == status.READY for v in versions}
        )
        if retrainer != name:
            text = (
                f"{retrainer} retrains model {model}: its versions share the feedback volume, one retrains"
                if retrainer
                else f"{name} retrains once it is Ready"
            )
            return False, "NotRetrainingVersion", text
        if samples is None:
            return None
        failures, last_failure = retraining.failure_streak(own)
        decision = retraining.should_retrain(
            samples=samples,
            min_samples=int(mv["spec"]["retraining"].get("minSamples", 1000)),
            active_job=False,
            last_failure_at=last_failure,
            failures=failures,
            now=now,
        )
        return decision.retrain, decision.reason, decision.message

    async def _promote(
        self,
        child: Mapping[str, Any],
        versions: Sequence[Mapping[str, Any]],
        served: bool,
        analysed: bool,
        result: LearningResult,
        now: datetime,
    ) -> None:
        """`served`: the child's stored status already shows its canary share (a reconcile before this
        one gave it traffic); `analysed`: its canary analysis passed (with spec.rollout)."""
        name = _name(child)
        parent_name = _labels(child)[retraining.LABEL_PARENT]
        by_name = {_name(v): v for v in versions}
        parent = by_name.get(parent_name)
        done = _condition(child, PROMOTED)
        if parent is None or (done is not None and done.get("status") == "True"):
            return  # promoted once; a person's later change of the weights (a rollback) stands
        child_status = _status(child)
        ready = child_status.get("phase") == status.READY
        rolled_back = canary.rolled_back_for_spec(child)
        canary_served = served or int(child["spec"].get("traffic", 0)) == 0
        needs_analysis = child["spec"].get("rollout") is not None
        if ready and not canary_served and not rolled_back:
            decision = retraining.PromotionDecision(
                False, "WaitingForCanary", f"{name} is Ready and waits for its canary share of the traffic", {}
            )
        elif ready and needs_analysis and not analysed and not rolled_back:
            decision = retraining.PromotionDecision(
                False,
                "Analysing",
                f"{name} serves its canary share; it is promoted after spec.rollout.minAnalysisSeconds with "
                "minRequests requests within the error budget",
                {},
            )
        else:
            decision = retraining.promotion(
                parent=parent_name,
                child=name,
                child_ready=ready,
                metrics=retraining.metrics_of(child),
                auto_promote=bool(((parent.get("spec") or {}).get("retraining") or {}).get("autoPromote")),
                rolled_back=rolled_back,
                others=[n for n in by_name if n not in (name, parent_name)],
            )
        if decision.promote:
            # The child first: its weight rises before the parent's falls, so no split wants nothing.
            for target, weight in sorted(decision.weights.items(), key=lambda item: item[0] != name):
                obj = by_name.get(target)
                if obj is not None and int((obj.get("spec") or {}).get("traffic", 100)) != weight:
                    await self.writer.patch_spec(obj, {"traffic": weight})
            self.logger.info(f"Promoted {name}: {decision.message}")
            await self.writer.post_event(
                event(child, key="promoted", reason="Promoted", message=decision.message, now=now)
            )
        result.add(
            name,
            condition={
                "type": PROMOTED,
                "status": "True" if decision.promote else "False",
                "reason": decision.reason,
                "message": decision.message,
            },
        )


__all__ = ["LearningResult", "LearningStep", "token_secret"]
