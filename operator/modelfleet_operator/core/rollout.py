"""Automatic rollback (issue 5): judge a version's error rate from its pods' /metrics, purely.

The handlers fetch `/metrics` from every ready pod of a version with
`spec.rollout` (DESIGN.md section 7), `parse_metrics` each text into request and
5xx counts of the inference endpoints, `sum_counts` them, and `evaluate` the
change since the start of the observation window stored in `status.rollout`.
The decision carries the `status.rollout` to write. Counters only ever grow in
one process; when the sum goes down (a pod restarted or left) the window starts
again rather than produce a negative or inflated rate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from prometheus_client.parser import text_string_to_metric_families

from modelfleet_operator.spec import Rollout

REQUESTS_METRIC = "modelfleet_requests_total"
# The runtime's inference routes as it labels them (modelfleet_runtime.metrics.INFERENCE_PATHS;
# not imported: that module needs numpy, which the operator image does not have).
INFERENCE_ENDPOINTS = ("/predict", "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer")


class MetricsError(ValueError):
    """A /metrics answer that is not Prometheus text the operator can read."""


@dataclass(frozen=True)
class Counts:
    """Inference requests answered and how many of them were 5xx, summed over pods."""

    requests: int = 0
    errors: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.requests + other.requests, self.errors + other.errors)


def parse_metrics(text: str) -> Counts:
    """Requests and 5xx answers of the inference endpoints in one pod's /metrics text.

    4xx answers are the client's mistake (bad input), not the version's, so they count as
    requests but not as errors. Raises MetricsError for text the Prometheus parser rejects.
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
                if sample.labels.get("code", "").startswith("5"):
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
class RolloutState:
    """The observation window as stored in status.rollout."""

    window_start: datetime | None = None
    counts: Counts | None = None
    error_rate: float | None = None
    rolled_back: bool = False

    @classmethod
    def from_status(cls, rollout: Mapping[str, Any] | None) -> RolloutState:
        rollout = rollout or {}
        requests, errors = rollout.get("requestsAtWindowStart"), rollout.get("errorsAtWindowStart")
        counts = Counts(int(requests), int(errors or 0)) if requests is not None else None
        rate = rollout.get("errorRate")
        return cls(
            window_start=_parse_time(rollout.get("windowStart")),
            counts=counts,
            error_rate=float(rate) if rate is not None else None,
            rolled_back=bool(rollout.get("rolledBack")),
        )


Action = Literal["keep", "rollback", "new_window"]


@dataclass(frozen=True)
class RolloutDecision:
    """What to do about a version's traffic, and the status.rollout to write.

    `rollback`: set its effective traffic to 0, phase Degraded with `message`, condition
    RolledBack, and an Event. `new_window`: nothing to do but store the new window.
    `reason` is CamelCase for a condition; `requests`/`errors` are the window's so far.
    """

    action: Action
    reason: str
    message: str
    requests: int
    errors: int
    error_rate: float | None
    status: Mapping[str, Any]

    @property
    def rollback(self) -> bool:
        return self.action == "rollback"


def _status(start: datetime, counts: Counts, error_rate: float | None, rolled_back: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "windowStart": _rfc3339(start),
        "requestsAtWindowStart": counts.requests,
        "errorsAtWindowStart": counts.errors,
        "rolledBack": rolled_back,
    }
    if error_rate is not None:
        out["errorRate"] = round(error_rate, 6)
    return out


def evaluate(
    start_counts: Counts | None,
    current: Counts,
    policy: Rollout,
    *,
    now: datetime,
    window_start: datetime | None,
    last_error_rate: float | None = None,
    has_fallback: bool = True,
) -> RolloutDecision:
    """Judge the window that began at `window_start` with `start_counts` (None: no window yet).

    Rolls back as soon as the window holds at least `policy.min_requests` requests and more
    than `policy.max_error_rate` of them were 5xx, unless `has_fallback` is False (no other
    Ready version of the model could take the traffic: taking it away would serve nothing).
    Once `policy.window_seconds` have passed the window starts again at `current`.
    """
    if start_counts is None or window_start is None:
        return RolloutDecision(
            "new_window",
            "WindowStarted",
            "observation window started",
            0,
            0,
            last_error_rate,
            _status(now, current, last_error_rate, False),
        )
    requests = current.requests - start_counts.requests
    errors = current.errors - start_counts.errors
    if requests < 0 or errors < 0:
        return RolloutDecision(
            "new_window",
            "CountersReset",
            "request counters went down (a pod restarted or left); the observation window starts again",
            0,
            0,
            last_error_rate,
            _status(now, current, last_error_rate, False),
        )
    # A pod restart hidden by others' growth can leave more errors than requests in the sums.
    errors = min(errors, requests)
    judged = requests >= policy.min_requests
    rate = errors / requests if judged else None
    if rate is not None and rate > policy.max_error_rate:
        text = f"error rate {rate:.2f} over {requests} requests exceeds {policy.max_error_rate:g}"
        if has_fallback:
            return RolloutDecision(
                "rollback",
                "ErrorRateExceeded",
                text,
                requests,
                errors,
                rate,
                _status(window_start, start_counts, rate, True),
            )
        text += ", but no other Ready version of the model could take its traffic; it keeps serving"
        return RolloutDecision(
            "keep",
            "NoFallback",
            text,
            requests,
            errors,
            rate,
            _status(window_start, start_counts, rate, False),
        )
    rate_seen = rate if rate is not None else last_error_rate
    if now - window_start >= timedelta(seconds=policy.window_seconds):
        if rate is not None:
            text = f"error rate {rate:.2f} over {requests} requests within {policy.max_error_rate:g}"
        else:
            text = f"{requests} requests in the window, fewer than minRequests {policy.min_requests}; not judged"
        return RolloutDecision(
            "new_window",
            "WindowPassed",
            text,
            requests,
            errors,
            rate_seen,
            _status(now, current, rate_seen, False),
        )
    if rate is not None:
        text = f"error rate {rate:.2f} over {requests} requests within {policy.max_error_rate:g}"
    else:
        text = f"{requests} of minRequests {policy.min_requests} requests observed"
    return RolloutDecision(
        "keep",
        "Observing",
        text,
        requests,
        errors,
        rate_seen,
        _status(window_start, start_counts, rate_seen, False),
    )


def evaluate_status(
    rollout_status: Mapping[str, Any] | None,
    current: Counts,
    policy: Rollout,
    *,
    now: datetime,
    has_fallback: bool = True,
) -> RolloutDecision:
    """`evaluate` with the window read from status.rollout. A version already rolled back stays
    so (its status is returned unchanged) until the handler clears status.rollout, e.g. when a
    person changes its spec."""
    state = RolloutState.from_status(rollout_status)
    if state.rolled_back:
        return RolloutDecision(
            "keep",
            "RolledBack",
            "rolled back; change the version's spec to try it again",
            0,
            0,
            state.error_rate,
            dict(rollout_status or {}),
        )
    return evaluate(
        state.counts,
        current,
        policy,
        now=now,
        window_start=state.window_start,
        last_error_rate=state.error_rate,
        has_fallback=has_fallback,
    )


def _rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(str(text))  # takes a trailing Z since Python 3.11
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


__all__ = [
    "INFERENCE_ENDPOINTS",
    "Counts",
    "MetricsError",
    "RolloutDecision",
    "RolloutState",
    "evaluate",
    "evaluate_status",
    "parse_metrics",
    "sum_counts",
]
