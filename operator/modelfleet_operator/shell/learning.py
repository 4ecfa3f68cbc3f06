"""The online-learning loop's shell (DESIGN.md section 5): the API reads and writes around retraining.py.

`reconcile_learning` runs at the end of every reconciliation of a ModelVersion
that has `spec.retraining` or was produced by a retraining Job:

- the retraining side: read the unconsumed sample count from ONE ready pod
  (GET /v1/feedback/stats counts the whole feedback volume, so every replica
  reports the same number), record a finished Job of this version once
  (status.lastRetraining, an Event, and on success the child ModelVersion),
  then let `retraining.should_retrain` decide whether to start the next Job;
  only the model's `retraining_version` starts Jobs, one at a time per model;
- the promotion side, for a child: `retraining.promotion` decides, and
  promoting is patching the versions' spec.traffic.

Every write is keyed by a name that the pure functions derive (the Job of
attempt N, its child, the Event of a Job's outcome), so an operator restarted
at any step finds what it already did (409) instead of doing it twice.

The feedback token (DESIGN.md section 9): without `spec.retraining.tokenSecretRef`
the runtime pods mount the Secret MODEL-feedback-token, which `ensure_feedback_token`
creates with a random token before the Deployment needs it and never rewrites.
The Secret has no owner on purpose: the token is the model's credential,
held by the clients that send feedback, and must outlive every single version
(a promotion retires the version that created it, and a retired version gets
deleted). It carries the model's labels, so
`kubectl delete secret -l serving.modelfleet.dev/model=MODEL` removes it with the model.
"""

from __future__ import annotations

import base64
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp

from modelfleet_operator import spec as crd
from modelfleet_operator.core import manifests, retraining, status
from modelfleet_operator.shell import kube as k8s
from modelfleet_operator.shell.kube import ApiError, Kube

if TYPE_CHECKING:
    from modelfleet_operator.shell.handlers import Context

# The same union as kopf.Logger, without importing kopf into the reconciling logic.
Logger = logging.Logger | logging.LoggerAdapter[Any]

STATS_PATH = "/v1/feedback/stats"
STATS_TIMEOUT_SECONDS = 2.0
TOKEN_BYTES = 32
RETRAINING_TRIGGERED = "RetrainingTriggered"
PROMOTED = "Promoted"
COMPONENT = "modelfleet-operator"


# --- small readers -------------------------------------------------------------------------


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


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in _status(pod).get("conditions") or [])


def _pod_port(pod: Mapping[str, Any]) -> int:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == manifests.PORT_NAME:
                return int(port["containerPort"])
    return manifests.CONTAINER_PORT


def _rfc3339(moment: datetime) -> str:
    return retraining.rfc3339(moment)


# --- the feedback token --------------------------------------------------------------------


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


async def ensure_feedback_token(kube: Kube, mv: Mapping[str, Any], spec: crd.ModelVersionSpec, logger: Logger) -> None:
    """Create MODEL-feedback-token when the version needs it and it is missing; never touch an existing one."""
    if spec.retraining is None or spec.retraining.token_secret_ref is not None:
        return  # no feedback endpoint, or the user's own Secret
    namespace = manifests.namespace_of(mv)
    name, _ = manifests.feedback_token_secret(spec)
    if await kube.get(k8s.SECRETS, namespace, name) is not None:
        return
    try:
        await kube.create(k8s.SECRETS, namespace, token_secret(spec.model, namespace, name))
        logger.info(f"Created Secret {name} with a random feedback token for model {spec.model}")
    except ApiError as exc:
        if exc.status != 409:  # 409: another version of the model created it first
            raise


# --- reads ------------------------------------------------------------------------------------


async def feedback_samples(kube: Kube, http: aiohttp.ClientSession, mv: Mapping[str, Any]) -> int | None:
    """The unconsumed samples on the feedback volume, from the first ready pod that answers; None if none does."""
    spec = mv["spec"]
    wanted = manifests.selector_labels(spec["model"], str(spec["version"]))
    pods = sorted(
        (
            p
            for p in await kube.list(k8s.PODS, manifests.namespace_of(mv))
            if all(_labels(p).get(k) == v for k, v in wanted.items())
            and not _meta(p).get("deletionTimestamp")
            and _pod_ready(p)
            and _status(p).get("podIP")
        ),
        key=_name,
    )
    for pod in pods:
        url = f"http://{_status(pod)['podIP']}:{_pod_port(pod)}{STATS_PATH}"
        try:
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=STATS_TIMEOUT_SECONDS)) as response:
                if response.status != 200:
                    continue
                body = await response.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError):
            continue
        if isinstance(body, dict) and body.get("enabled") and isinstance(body.get("unconsumed"), int):
            return max(int(body["unconsumed"]), 0)
    return None


async def model_jobs(kube: Kube, namespace: str, model: str) -> list[dict[str, Any]]:
    """The model's retraining Jobs (labels are matched here: the operator uses no server-side selectors)."""
    return [
        j
        for j in await kube.list(k8s.JOBS, namespace)
        if _labels(j).get(manifests.LABEL_MODEL) == model
        and _labels(j).get(retraining.LABEL_ROLE) == retraining.ROLE_RETRAINING
    ]


async def termination_message(kube: Kube, job: Mapping[str, Any]) -> str | None:
    """The trainer container's termination message from the newest of the Job's pods that has one."""
    uid = _meta(job).get("uid")
    pods = [
        p
        for p in await kube.list(k8s.PODS, str(_meta(job).get("namespace")))
        if any(ref.get("uid") == uid for ref in _meta(p).get("ownerReferences") or [])
    ]
    for pod in sorted(pods, key=lambda p: str(_meta(p).get("creationTimestamp") or ""), reverse=True):
        for cs in _status(pod).get("containerStatuses") or []:
            if cs.get("name") != retraining.CONTAINER_NAME:
                continue
            for state in (cs.get("state") or {}, cs.get("lastState") or {}):
                message = (state.get("terminated") or {}).get("message")
                if message:
                    return str(message)
    return None


# --- writes ---------------------------------------------------------------------------------


def event(
    obj: Mapping[str, Any], *, key: str, reason: str, message: str, warning: bool = False, now: datetime
) -> dict[str, Any]:
    """A core/v1 Event about a ModelVersion. `key` makes its name: one Event per (object, key),
    so the same outcome reported again after a restart answers 409 instead of a second Event."""
    meta = _meta(obj)
    stamp = _rfc3339(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{key}"[:253], "namespace": meta.get("namespace")},
        "involvedObject": {
            "apiVersion": crd.API_VERSION,
            "kind": crd.KIND,
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


async def post_event(kube: Kube, ev: Mapping[str, Any]) -> None:
    try:
        await kube.create(k8s.EVENTS, str(ev["metadata"]["namespace"]), ev)
    except ApiError as exc:
        if exc.status != 409:
            raise


async def create_once(kube: Kube, kind: k8s.Kind, obj: Mapping[str, Any]) -> bool:
    """Create `obj`; False when it already exists (made before a restart, or by a concurrent handler)."""
    try:
        await kube.create(kind, str(obj["metadata"]["namespace"]), obj)
        return True
    except ApiError as exc:
        if exc.status == 409:
            return False
        raise


async def write_status(kube: Kube, mv: Mapping[str, Any], build: Callable[[Mapping[str, Any]], dict[str, Any]]) -> None:
    """Merge-patch the status keys `build(old status)` changes; checked again on a fresh read first."""
    if not status.status_patch(_status(mv), build(_status(mv))):
        return
    namespace = manifests.namespace_of(mv)
    stored = await kube.get(k8s.MODELVERSIONS, namespace, _name(mv))
    if stored is None:
        return
    patch = status.status_patch(_status(stored), build(_status(stored)))
    if patch:
        await kube.merge_patch(k8s.MODELVERSIONS, namespace, _name(mv), {"status": patch}, subresource="status")


def _with_condition(
    old: Mapping[str, Any], generation: int, kind: str, ok: bool, reason: str, message: str
) -> list[dict[str, Any]]:
    """old's conditions with `kind` set, in their order: another writer's order stays, so the two
    writers of the status never rewrite the list for its order alone."""
    cond = {"type": kind, "status": "True" if ok else "False", "reason": reason, "message": message}
    [merged, *_] = status.merge_conditions(old.get("conditions"), [cond], generation, status.now())
    previous = [dict(c) for c in old.get("conditions") or []]
    if not any(c.get("type") == kind for c in previous):
        return [*previous, merged]
    return [merged if c.get("type") == kind else c for c in previous]


# --- the retraining side --------------------------------------------------------------------


def _trigger_samples(job: Mapping[str, Any]) -> int | None:
    raw = (_meta(job).get("annotations") or {}).get(f"{crd.GROUP}/trigger-samples")
    return int(raw) if raw and str(raw).isdigit() else None


def _recorded(last: Mapping[str, Any], job: str) -> bool:
    """Whether status.lastRetraining already holds the final outcome of `job`."""
    if last.get("job") != job:
        return False
    return last.get("result") == "Failed" or (last.get("result") == "Succeeded" and bool(last.get("producedVersion")))


async def _record_finished(
    ctx: Context,
    mv: Mapping[str, Any],
    own_jobs: Sequence[Mapping[str, Any]],
    versions: Sequence[Mapping[str, Any]],
    last: dict[str, Any],
    logger: Logger,
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
    outcome = retraining.job_outcome(job, await termination_message(ctx.kube, job))
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
        if not any(_name(v) == child_name for v in versions) and await create_once(ctx.kube, k8s.MODELVERSIONS, child):
            logger.info(f"Retraining Job {name} succeeded; created ModelVersion {child_name}: {outcome.message}")
        record["producedVersion"] = child_name
        events.append(
            event(
                mv,
                key=f"{name}.succeeded",
                reason="RetrainingSucceeded",
                now=now,
                message=f"Job {name} produced ModelVersion {child_name}: {outcome.message}",
            )
        )
    else:
        logger.warning(f"Retraining Job {name} failed: {outcome.message}")
        events.append(
            event(
                mv,
                key=f"{name}.failed",
                reason=outcome.reason,
                warning=True,
                now=now,
                message=f"retraining Job {name} failed; {_name(mv)} keeps serving and the samples "
                f"stay unconsumed: {outcome.message}",
            )
        )
    return record


async def _retrain(ctx: Context, mv: Mapping[str, Any], versions: Sequence[Mapping[str, Any]], logger: Logger) -> None:
    name, namespace = _name(mv), manifests.namespace_of(mv)
    spec = mv["spec"]
    model, policy = str(spec["model"]), spec["retraining"]
    now = datetime.now(tz=UTC)
    # Jobs first: a Job that finishes between the two reads has already consumed its samples.
    jobs = await model_jobs(ctx.kube, namespace, model)
    samples = await feedback_samples(ctx.kube, ctx.http, mv)
    own = [j for j in jobs if _labels(j).get(retraining.LABEL_PARENT) == name]
    events: list[dict[str, Any]] = []
    last = await _record_finished(
        ctx, mv, own, versions, dict(_status(mv).get("lastRetraining") or {}), logger, events, now
    )

    active = retraining.active_jobs(jobs)
    own_active = [j for j in active if _labels(j).get(retraining.LABEL_PARENT) == name]
    retrainer = retraining.retraining_version(
        versions, {_name(v): _status(v).get("phase") == status.READY for v in versions}
    )
    failures, last_failure = retraining.failure_streak(own)
    if active:
        decision = retraining.should_retrain(
            samples=samples or 0,
            min_samples=int(policy.get("minSamples", 1000)),
            active_job=True,
            last_failure_at=None,
            failures=0,
            now=now,
        )
    elif retrainer != name:
        decision = retraining.Decision(
            False,
            "NotRetrainingVersion",
            (
                f"{retrainer} retrains model {model}: its versions share the feedback volume, one retrains"
                if retrainer
                else f"{name} retrains once it is Ready"
            ),
        )
    elif samples is None:
        decision = retraining.Decision(False, "NoFeedbackCount", f"no ready pod answered GET {STATS_PATH}")
    else:
        decision = retraining.should_retrain(
            samples=samples,
            min_samples=int(policy.get("minSamples", 1000)),
            active_job=False,
            last_failure_at=last_failure,
            failures=failures,
            now=now,
        )

    triggered, reason, message = False, decision.reason, decision.message
    if decision.retrain:
        attempt = retraining.next_attempt(last, own)
        job = retraining.build_job(mv, ctx.config, samples=int(samples or 0), attempt=attempt, now=now)
        job_name = _name(job)
        if await create_once(ctx.kube, k8s.JOBS, job):
            logger.info(f"Created retraining Job {job_name}: {decision.message}")
        last = {"job": job_name, "result": "Running", "startTime": _rfc3339(now), "samples": int(samples or 0)}
        triggered, message = True, f"{decision.message}; started Job {job_name}"
        events.append(
            event(
                mv,
                key=f"{job_name}.started",
                reason="RetrainingStarted",
                now=now,
                message=f"started retraining Job {job_name}: {decision.message}",
            )
        )
    elif own_active:
        triggered, message = True, f"retraining Job {_name(own_active[0])} is running"

    generation = int(_meta(mv).get("generation") or 1)

    def build(old: Mapping[str, Any]) -> dict[str, Any]:
        new: dict[str, Any] = {
            "conditions": _with_condition(old, generation, RETRAINING_TRIGGERED, triggered, reason, message)
        }
        if samples is not None:
            new["feedbackSamples"] = samples
        if last:
            new["lastRetraining"] = last
        return new

    await write_status(ctx.kube, mv, build)
    for ev in events:
        await post_event(ctx.kube, ev)


# --- the promotion side ---------------------------------------------------------------------


def rolled_back(mv: Mapping[str, Any]) -> bool:
    cond = _condition(mv, "RolledBack")
    return cond is not None and cond.get("status") == "True"


async def _promote(
    ctx: Context, child: Mapping[str, Any], versions: Sequence[Mapping[str, Any]], logger: Logger
) -> None:
    name = _name(child)
    parent_name = _labels(child)[retraining.LABEL_PARENT]
    by_name = {_name(v): v for v in versions if not _meta(v).get("deletionTimestamp")}
    parent = by_name.get(parent_name)
    done = _condition(child, PROMOTED)
    if parent is None or (done is not None and done.get("status") == "True"):
        return  # promoted once; a person's later change of the weights (a rollback) stands
    child_status = _status(child)
    ready = child_status.get("phase") == status.READY
    canary_served = int(child_status.get("servingTraffic") or 0) > 0 or int(child["spec"].get("traffic", 0)) == 0
    if ready and not canary_served and not rolled_back(child):
        decision = retraining.PromotionDecision(
            False, "WaitingForCanary", f"{name} is Ready and waits for its canary share of the traffic", {}
        )
    else:
        decision = retraining.promotion(
            parent=parent_name,
            child=name,
            child_ready=ready,
            metrics=retraining.metrics_of(child),
            auto_promote=bool(((parent.get("spec") or {}).get("retraining") or {}).get("autoPromote")),
            rolled_back=rolled_back(child),
            others=[n for n in by_name if n not in (name, parent_name)],
        )
    if decision.promote:
        for target, weight in sorted(decision.weights.items(), key=lambda item: item[0] != name):
            obj = by_name.get(target)
            if obj is not None and int((obj.get("spec") or {}).get("traffic", 100)) != weight:
                await ctx.kube.merge_patch(
                    k8s.MODELVERSIONS, manifests.namespace_of(obj), target, {"spec": {"traffic": weight}}
                )
        logger.info(f"Promoted {name}: {decision.message}")
    generation = int(_meta(child).get("generation") or 1)
    await write_status(
        ctx.kube,
        child,
        lambda old: {
            "conditions": _with_condition(
                old, generation, PROMOTED, decision.promote, decision.reason, decision.message
            )
        },
    )
    if decision.promote:
        await post_event(
            ctx.kube,
            event(child, key="promoted", reason="Promoted", message=decision.message, now=datetime.now(tz=UTC)),
        )


# --- entry point ----------------------------------------------------------------------------


async def reconcile_learning(
    ctx: Context, mv: Mapping[str, Any], versions: Sequence[Mapping[str, Any]], logger: Logger
) -> None:
    """The online-learning steps for one ModelVersion (see the module docstring); nothing for a version
    that neither retrains nor was produced by retraining. `versions`: the model's ModelVersions."""
    spec = mv.get("spec") or {}
    is_child = retraining.LABEL_PARENT in _labels(mv)
    if not spec.get("retraining") and not is_child:
        return
    stored = await ctx.kube.get(k8s.MODELVERSIONS, manifests.namespace_of(mv), _name(mv))
    if stored is None or _meta(stored).get("deletionTimestamp"):
        return
    # The status handlers.reconcile just wrote, and the model's versions as they are now.
    versions = [stored if _name(v) == _name(stored) else v for v in versions]
    if not any(_name(v) == _name(stored) for v in versions):
        versions.append(stored)
    if spec.get("retraining"):
        await _retrain(ctx, stored, versions, logger)
    if is_child:
        child = (
            await ctx.kube.get(k8s.MODELVERSIONS, manifests.namespace_of(mv), _name(mv))
            if spec.get("retraining")
            else stored
        )
        if child is not None:
            await _promote(ctx, child, versions, logger)


__all__ = ["ensure_feedback_token", "feedback_samples", "reconcile_learning", "token_secret"]
