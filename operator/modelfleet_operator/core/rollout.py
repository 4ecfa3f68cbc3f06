"""Canary analysis (issue 5, issue 10): judge a candidate version against the stable one, purely.

The shell fetches `/metrics` from every ready pod of the candidate and of the
model's stable version (DESIGN.md section 7), `parse_metrics` each text into
request and error counts of the inference endpoints, `sum_counts` them per
version, and `judge` the change since the start of the observation window kept
in the candidate's `status.rollout` (`Window`).

What counts as the version's error: a 5xx answer other than 503. A 503 is
backpressure (queue full or the concurrency cap, with Retry-After: the runtime
also counts those in `modelfleet_requests_rejected_total`) or a shared
dependency being down (the feature store): the cluster's trouble, not the
version's. 4xx answers are
the client's (a 499 is a client that went away). The candidate is rolled back
when its error rate in the window exceeds the stable version's in the same
window by more than `maxErrorRate`, so a cause both share never rolls back the
one being judged. The stable version itself is never judged.

Counters only grow in one process; when a sum goes down (a pod restarted or
left) the window starts again rather than produce a negative or inflated rate.
Promotion waits for `minAnalysisSeconds` of analysis holding at least
`minRequests` requests without a rollback (`Judgement.promotable`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from prometheus_client.parser import text_string_to_metric_families

from modelfleet_operator.core.timestamps import parse_time, rfc3339
from modelfleet_operator.spec import Rollout

REQUESTS_METRIC = "modelfleet_requests_total"
# The runtime's inference routes as it labels them (modelfleet_runtime.metrics.INFERENCE_PATHS;
# not imported: that module needs numpy, which the operator image does not have).
INFERENCE_ENDPOINTS = (
    "/predict",
    "/v1/models/{name}:predict",
    "/v2/models/{name}/infer",
    "/v2/models/{name}/versions/{version}/infer",
    "/inference.GRPCInferenceService/ModelInfer",
)
# Backpressure and shared dependencies answer 503: not the version's fault.
NOT_THE_VERSIONS_FAULT = frozenset({"503"})


class MetricsError(ValueError):
    """A /metrics answer that is not Prometheus text the operator can read."""


@dataclass(frozen=True)
class Counts:
    """Inference requests answered and how many of them were the version's errors, summed over pods."""

    requests: int = 0
    errors: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.requests + other.requests, self.errors + other.errors)

    def __sub__(self, other: Counts) -> Counts:
        return Counts(self.requests - other.requests, self.errors - other.errors)


def is_version_error(code: str) -> bool:
    """A server error the version caused: 5xx, except 503 (backpressure, a shared dependency down)."""
    return code.startswith("5") and code not in NOT_THE_VERSIONS_FAULT


def parse_metrics(text: str) -> Counts:
    """Requests and the version's own errors of the inference endpoints in one pod's /metrics text.

    Raises MetricsError for text the Prometheus parser rejects.
    """
    requests = errors = 0.0
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name != REQUESTS_METRIC:
                    continue
                if sample.labels.get("endpoint") not in INFERENCE_ENDPOINTS:
                    continue
                requests += sample.value
                if is_version_error(sample.labels.get("code", "")):
                    errors += sample.value
    except (ValueError, TypeError, IndexError, KeyError) as err:
        raise MetricsError(f"cannot parse /metrics: {err}") from None
    return Counts(int(requests), int(errors))


def sum_counts(per_pod: Iterable[Counts]) -> Counts:
    """The version's counts: the sum over its ready pods (each pod counts only its own requests)."""
    total = Counts()
    for counts in per_pod:
        total += counts
    return total


@dataclass(frozen=True)
class Window:
    """The candidate's observation window and analysis, as stored in status.rollout."""

    start: datetime | None = None
    candidate: Counts | None = None  # the candidate's counts at the start of the window
    stable: Counts | None = None  # the stable version's counts at the start of the window
    stable_version: str | None = None  # the ModelVersion the window compares with
    error_rate: float | None = None
    stable_error_rate: float | None = None
    rolled_back: bool = False
    analysis_start: datetime | None = None  # since when the candidate is analysed (for promotion)
    analysed_requests: int = 0  # requests of the windows that ended since then

    @classmethod
    def from_status(cls, rollout: Mapping[str, Any] | None) -> Window:
        rollout = rollout or {}

        def counts(requests_key: str, errors_key: str) -> Counts | None:
            requests = rollout.get(requests_key)
            return None if requests is None else Counts(int(requests), int(rollout.get(errors_key) or 0))

        rate, stable_rate = rollout.get("errorRate"), rollout.get("stableErrorRate")
        return cls(
            start=parse_time(rollout.get("windowStart")),
            candidate=counts("requestsAtWindowStart", "errorsAtWindowStart"),
            stable=counts("stableRequestsAtWindowStart", "stableErrorsAtWindowStart"),
            stable_version=rollout.get("stableVersion"),
            error_rate=float(rate) if rate is not None else None,
            stable_error_rate=float(stable_rate) if stable_rate is not None else None,
            rolled_back=bool(rollout.get("rolledBack")),
            analysis_start=parse_time(rollout.get("analysisStart")),
            analysed_requests=int(rollout.get("analysedRequests") or 0),
        )

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rolledBack": self.rolled_back, "analysedRequests": self.analysed_requests}
        if self.start is not None:
            out["windowStart"] = rfc3339(self.start)
        if self.candidate is not None:
            out["requestsAtWindowStart"] = self.candidate.requests
            out["errorsAtWindowStart"] = self.candidate.errors
        if self.stable is not None:
            out["stableRequestsAtWindowStart"] = self.stable.requests
            out["stableErrorsAtWindowStart"] = self.stable.errors
        if self.stable_version is not None:
            out["stableVersion"] = self.stable_version
        if self.error_rate is not None:
            out["errorRate"] = round(self.error_rate, 6)
        if self.stable_error_rate is not None:
            out["stableErrorRate"] = round(self.stable_error_rate, 6)
        if self.analysis_start is not None:
            out["analysisStart"] = rfc3339(self.analysis_start)
        return out


Action = Literal["keep", "rollback", "new_window"]


@dataclass(frozen=True)
class Judgement:
    """What to do about a candidate's traffic, and the status.rollout to write.

    `rollback`: set its traffic to 0, phase Degraded with `message`, condition RolledBack, an
    Event. `new_window`: store the new window. `reason` is CamelCase for a condition;
    `requests`/`errors` are the window's so far. `promotable`: the analysis passed
    (`minAnalysisSeconds` with at least `minRequests` requests and no rollback).
    """

    action: Action
    reason: str
    message: str
    requests: int
    errors: int
    error_rate: float | None
    window: Window
    promotable: bool = False

    @property
    def rollback(self) -> bool:
        return self.action == "rollback"

    @property
    def status(self) -> dict[str, Any]:
        return self.window.to_status()


def _promotable(window: Window, requests: int, policy: Rollout, now: datetime) -> bool:
    if window.rolled_back or window.analysis_start is None:
        return False
    analysed = now - window.analysis_start >= timedelta(seconds=policy.min_analysis_seconds)
    return analysed and window.analysed_requests + requests >= policy.min_requests


def _fresh(
    window: Window, candidate: Counts, stable: Counts | None, stable_version: str | None, now: datetime
) -> Window:
    return replace(
        window,
        start=now,
        candidate=candidate,
        stable=stable,
        stable_version=stable_version,
        rolled_back=False,
        analysis_start=window.analysis_start or now,
    )


def judge(
    window: Window,
    candidate: Counts,
    stable: Counts | None,
    policy: Rollout,
    *,
    now: datetime,
    stable_version: str | None = None,
    has_fallback: bool = True,
) -> Judgement:
    """Judge the candidate's window (see the module docstring).

    `candidate`/`stable`: the versions' counts now (`stable` None: no stable version answered,
    or there is none: the candidate is compared with an error rate of 0). Rolls back as soon
    as the window holds `minRequests` requests and the candidate's rate exceeds the stable's
    by more than `maxErrorRate`, unless `has_fallback` is False (no other Ready version could
    take the traffic: taking it away would serve nothing). Once `windowSeconds` have passed
    the window starts again at the current counts.
    """
    if window.rolled_back:
        return Judgement(
            "keep",
            "RolledBack",
            "rolled back; change the version's spec to try it again",
            0,
            0,
            window.error_rate,
            window,
        )
    if window.start is None or window.candidate is None:
        return Judgement(
            "new_window",
            "WindowStarted",
            "observation window started",
            0,
            0,
            window.error_rate,
            _fresh(window, candidate, stable, stable_version, now),
        )
    if window.stable_version != stable_version or (stable is None) != (window.stable is None):
        fresh = _fresh(window, candidate, stable, stable_version, now)
        return Judgement(
            "new_window",
            "StableChanged",
            f"the stable version is now {stable_version}; the window starts again",
            0,
            0,
            window.error_rate,
            fresh,
        )
    delta = candidate - window.candidate
    stable_delta = stable - window.stable if stable is not None and window.stable is not None else Counts()
    if min(delta.requests, delta.errors, stable_delta.requests, stable_delta.errors) < 0:
        fresh = _fresh(window, candidate, stable, stable_version, now)
        text = "request counters went down (a pod restarted or left); the observation window starts again"
        return Judgement("new_window", "CountersReset", text, 0, 0, window.error_rate, fresh)

    # A pod restart hidden by others' growth can leave more errors than requests in the sums.
    requests, errors = delta.requests, min(delta.errors, delta.requests)
    stable_rate = (
        min(stable_delta.errors, stable_delta.requests) / stable_delta.requests if stable_delta.requests else 0.0
    )
    judged = requests >= policy.min_requests
    rate = errors / requests if judged else None
    seen = replace(
        window,
        error_rate=rate if rate is not None else window.error_rate,
        stable_error_rate=stable_rate if stable_delta.requests else window.stable_error_rate,
    )
    if rate is not None and rate - stable_rate > policy.max_error_rate:
        text = (
            f"error rate {rate:.2f} over {requests} requests exceeds the stable version's {stable_rate:.2f} "
            f"by more than {policy.max_error_rate:g}"
        )
        if has_fallback:
            return Judgement(
                "rollback", "ErrorRateExceeded", text, requests, errors, rate, replace(seen, rolled_back=True)
            )
        text += ", but no other Ready version of the model could take its traffic; it keeps serving"
        return Judgement("keep", "NoFallback", text, requests, errors, rate, seen)

    promotable = _promotable(seen, requests, policy, now)
    if rate is not None:
        text = f"error rate {rate:.2f} over {requests} requests, the stable version's {stable_rate:.2f}"
        text += f": within {policy.max_error_rate:g}"
    else:
        text = f"{requests} of minRequests {policy.min_requests} requests observed in the window"
    if now - window.start >= timedelta(seconds=policy.window_seconds):
        ended = replace(seen, analysed_requests=seen.analysed_requests + requests)
        fresh = replace(_fresh(ended, candidate, stable, stable_version, now), error_rate=seen.error_rate)
        return Judgement("new_window", "WindowPassed", text, requests, errors, seen.error_rate, fresh, promotable)
    return Judgement("keep", "Observing", text, requests, errors, seen.error_rate, seen, promotable)


__all__ = [
    "INFERENCE_ENDPOINTS",
    "Counts",
    "Judgement",
    "MetricsError",
    "Window",
    "is_version_error",
    "judge",
    "parse_metrics",
    "sum_counts",
]
