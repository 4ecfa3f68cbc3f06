"""Automatic rollback in the operator: the shell around `rollout`'s pure decisions (issue 5).

For a version with `spec.rollout` that serves a share of its model while another
version of the model is Ready, `judge` asks each of the version's ready pods for
its `/metrics` (DESIGN.md section 7: counters summed over replicas, never one
random pod behind a Service), sums the inference request and 5xx counts and lets
`rollout.evaluate_status` judge the observation window kept in `status.rollout`.
A pod that does not answer skips the judgement for this round: a partial sum
would look like a counter reset.

A rollback is remembered in the status (`status.rollout.rolledBack` and a
`RolledBack` condition whose observedGeneration is the spec it judged), so every
sibling's reconciliation — they all plan the model's shared Service and
HTTPRoute — gives it no traffic (`takes_traffic`), until a person changes its
spec and it is Ready with the new one: then it is judged again from a fresh window.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import aiohttp

from modelfleet_operator.core import status
from modelfleet_operator.core.rollout import Counts, MetricsError, evaluate_status, parse_metrics, sum_counts
from modelfleet_operator.shell import kube as k8s
from modelfleet_operator.shell.kube import Kube
from modelfleet_operator.spec import Rollout

METRICS_PATH = "/metrics"
METRICS_TIMEOUT_SECONDS = 2.0
ROLLED_BACK = "RolledBack"
COMPONENT = "modelfleet-operator"
# The window keys of status.rollout; a new spec drops them so the next judgement starts afresh.
_WINDOW_KEYS = ("windowStart", "requestsAtWindowStart", "errorsAtWindowStart")


@dataclass(frozen=True)
class Verdict:
    """What the reconciliation writes for the rollback check.

    `rolled_back`: the version takes no traffic and its phase is Degraded with `message`.
    `rollout`: the status.rollout to write (None: leave it as it is).
    `conditions`: the RolledBack condition when it changes.
    """

    rolled_back: bool = False
    message: str = ""
    rollout: Mapping[str, Any] | None = None
    conditions: tuple[Mapping[str, str], ...] = ()


# --- pure -------------------------------------------------------------------------------------


def _status(mv: Mapping[str, Any]) -> Mapping[str, Any]:
    return mv.get("status") or {}


def _condition(mv: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    return next((c for c in _status(mv).get("conditions") or [] if c.get("type") == kind), None)


def _generation(mv: Mapping[str, Any]) -> int:
    return int((mv.get("metadata") or {}).get("generation") or 1)


def rolled_back(mv: Mapping[str, Any]) -> bool:
    """Whether the version is rolled back for its current spec (so it must take no traffic)."""
    if not (_status(mv).get("rollout") or {}).get("rolledBack"):
        return False
    cond = _condition(mv, ROLLED_BACK)
    return cond is not None and cond.get("status") == "True" and cond.get("observedGeneration") == _generation(mv)


def takes_traffic(mv: Mapping[str, Any]) -> bool:
    """Whether the version may have a share of its model's traffic (`ready` of `plan_model`).

    Not while it is rolled back, nor after a change of its spec until it is Ready with
    the new one: its old pods, still serving during the rollout, are the ones that failed.
    """
    return status.can_serve(_status(mv)) and not (_status(mv).get("rollout") or {}).get("rolledBack")


def observed(obs: status.Observation, verdict: Verdict) -> status.Observation:
    """The phase of a rolled-back version: Degraded with the reason, whatever its pods say."""
    if not verdict.rolled_back:
        return obs
    return replace(obs, phase=status.DEGRADED, reason=ROLLED_BACK, message=verdict.message)


def rollback_event(mv: Mapping[str, Any], message: str, moment: datetime.datetime) -> dict[str, Any]:
    """A core v1 Warning Event on the ModelVersion, as `kubectl describe mv` shows them."""
    meta = mv["metadata"]
    stamp = moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": mv.get("apiVersion", "serving.modelfleet.dev/v1alpha1"),
            "kind": mv.get("kind", "ModelVersion"),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid", ""),
        },
        "type": "Warning",
        "reason": ROLLED_BACK,
        "message": message,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
        "action": "SetTrafficToZero",
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


# --- I/O --------------------------------------------------------------------------------------


async def _pod_counts(http: aiohttp.ClientSession, url: str) -> Counts | None:
    try:
        timeout = aiohttp.ClientTimeout(total=METRICS_TIMEOUT_SECONDS)
        async with http.get(url + METRICS_PATH, timeout=timeout) as response:
            if response.status != 200:
                return None
            return parse_metrics(await response.text())
    except (TimeoutError, aiohttp.ClientError, MetricsError):
        return None


async def version_counts(http: aiohttp.ClientSession, pod_urls: Sequence[str]) -> Counts | None:
    """The version's counts summed over its ready pods; None when there is none or one does not answer."""
    if not pod_urls:
        return None
    per_pod = await asyncio.gather(*(_pod_counts(http, url) for url in pod_urls))
    if any(c is None for c in per_pod):
        return None
    return sum_counts(c for c in per_pod if c is not None)


async def judge(
    kube: Kube,
    http: aiohttp.ClientSession,
    mv: Mapping[str, Any],
    policy: Rollout | None,
    siblings: Sequence[Mapping[str, Any]],
    ready_pod_urls: Callable[[], Awaitable[Sequence[str]]],
    logger: logging.Logger | logging.LoggerAdapter[Any],
    *,
    now: datetime.datetime | None = None,
) -> Verdict:
    """Judge one version's error rate (see the module docstring); posts an Event on a rollback.

    `mv` is the version as freshly read (its status.rollout and servingTraffic are current);
    `siblings` are the versions of its model; `ready_pod_urls` lists its ready pods' base URLs.
    """
    now = now or datetime.datetime.now(datetime.UTC)
    name = mv["metadata"]["name"]
    if rolled_back(mv):
        cond = _condition(mv, ROLLED_BACK) or {}
        return Verdict(rolled_back=True, message=str(cond.get("message") or "rolled back"))

    previous = dict(_status(mv).get("rollout") or {})
    reset: dict[str, Any] | None = None
    conditions: tuple[Mapping[str, str], ...] = ()
    if previous.get("rolledBack"):
        if _status(mv).get("phase") != status.READY or _status(mv).get("observedGeneration") != _generation(mv):
            return Verdict()  # rolled back for an older spec: back in traffic once Ready with the new one
        # Judge the new spec from a fresh window.
        reset = {**dict.fromkeys(_WINDOW_KEYS), "rolledBack": False}
        previous = {k: v for k, v in previous.items() if k == "errorRate"}
        conditions = (
            {
                "type": ROLLED_BACK,
                "status": "False",
                "reason": "SpecChanged",
                "message": f"the spec changed (generation {_generation(mv)}); the version is judged again",
            },
        )

    share = int(_status(mv).get("servingTraffic") or 0)
    others = [v for v in siblings if v["metadata"]["name"] != name and takes_traffic(v)]
    if policy is None or share <= 0 or not others:
        return Verdict(rollout=reset, conditions=conditions)
    counts = await version_counts(http, await ready_pod_urls())
    if counts is None:
        logger.debug(f"Rollback check of {name} skipped: a ready pod did not answer {METRICS_PATH}")
        return Verdict(rollout=reset, conditions=conditions)

    has_fallback = any(int((v.get("spec") or {}).get("traffic", 100)) > 0 for v in others)
    decision = evaluate_status(previous or None, counts, policy, now=now, has_fallback=has_fallback)
    if not decision.rollback:
        return Verdict(rollout=decision.status, conditions=conditions)

    message = f"rolled back: {decision.message}; its traffic is set to 0 until its spec changes"
    logger.warning(f"Rolling back {name}: {decision.message}")
    await kube.create(k8s.EVENTS, mv["metadata"]["namespace"], rollback_event(mv, message, now))
    return Verdict(
        rolled_back=True,
        message=message,
        rollout=decision.status,
        conditions=({"type": ROLLED_BACK, "status": "True", "reason": decision.reason, "message": message},),
    )


__all__ = [
    "ROLLED_BACK",
    "Verdict",
    "judge",
    "observed",
    "rollback_event",
    "rolled_back",
    "takes_traffic",
    "version_counts",
]
