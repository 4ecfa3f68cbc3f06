"""Automatic rollback decisions: counts read from the runtime's real /metrics, windows, resets, thresholds."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from modelfleet_operator.core.rollout import (
    INFERENCE_ENDPOINTS,
    Counts,
    MetricsError,
    Window,
    is_version_error,
    judge,
    parse_metrics,
    sum_counts,
)
from modelfleet_operator.spec import Rollout
from modelfleet_runtime.metrics import INFERENCE_PATHS, RuntimeMetrics

POLICY = Rollout(max_error_rate=0.05, window_seconds=60, min_requests=20, min_analysis_seconds=120)
T0 = datetime(2025, 1, 2, 3, 4, 0, tzinfo=UTC)
MakeMV = Callable[..., dict[str, Any]]


def _runtime_metrics_text(answers: dict[tuple[str, int], int]) -> str:
    """/metrics exactly as a runtime pod serves it after answering `answers` (endpoint, code) -> count."""
    metrics = RuntimeMetrics()
    for (endpoint, code), count in answers.items():
        for _ in range(count):
            metrics.observe_request(endpoint, code, 0.003, endpoint in INFERENCE_PATHS)
    return generate_latest(metrics.registry).decode()


# --- reading /metrics ----------------------------------------------------------------


def test_the_operator_knows_the_runtimes_inference_endpoints() -> None:
    assert set(INFERENCE_ENDPOINTS) == set(INFERENCE_PATHS)


def test_counts_come_from_the_inference_endpoints_of_real_runtime_metrics() -> None:
    text = _runtime_metrics_text(
        {
            ("/predict", 200): 40,
            ("/predict", 503): 3,  # backpressure or the feature store down: not the version's fault
            ("/v2/models/{name}/infer", 200): 5,
            ("/v2/models/{name}/infer", 500): 2,
            ("/v2/models/{name}/versions/{version}/infer", 502): 1,
            ("/v2/models/{name}/infer", 400): 4,  # the client's mistake: a request, not an error
            ("/predict", 499): 2,  # the client went away
            ("/v2/health/ready", 503): 30,  # probes of a warming pod are not inference errors
            ("/feedback", 500): 7,
            ("unmatched", 404): 9,
        }
    )
    assert parse_metrics(text) == Counts(requests=57, errors=3)


@pytest.mark.parametrize(
    ("code", "counts"), [("500", True), ("502", True), ("504", True), ("503", False), ("499", False), ("404", False)]
)
def test_only_server_errors_the_version_caused_count(code: str, counts: bool) -> None:
    assert is_version_error(code) is counts


def test_backpressure_and_feature_store_503s_count_as_requests_not_as_errors() -> None:
    """A canary that answers "queue full, retry" (or is at its concurrency cap) is busy, not broken;
    one whose feature store is down is not broken either (issue 10): a 503 is never its error."""
    metrics = RuntimeMetrics()
    for _ in range(30):
        metrics.observe_request("/predict", 200, 0.003, True)
    for endpoint, reason, count in (("/predict", "queue_full", 15), ("/v2/models/{name}/infer", "concurrency", 5)):
        for _ in range(count):
            metrics.observe_request(endpoint, 503, 0.001, True)
            metrics.observe_rejection(endpoint, reason)
    for _ in range(2):  # the feature store is down: a 503, the dependency's trouble
        metrics.observe_request("/predict", 503, 0.001, True)
    for _ in range(3):  # onnxruntime failed: the version's own
        metrics.observe_request("/v1/models/{name}:predict", 500, 0.001, True)
    assert parse_metrics(generate_latest(metrics.registry).decode()) == Counts(requests=55, errors=3)


def test_a_fresh_pod_has_no_requests() -> None:
    assert parse_metrics(_runtime_metrics_text({})) == Counts(0, 0)
    assert parse_metrics("") == Counts(0, 0)


def test_text_that_is_not_prometheus_is_an_error_not_zero() -> None:
    with pytest.raises(MetricsError, match="cannot parse /metrics"):
        parse_metrics('modelfleet_requests_total{code="500",endpoint="/predict"} lots\n')


def test_the_version_counts_are_the_sum_over_its_pods() -> None:
    pods = [
        parse_metrics(_runtime_metrics_text({("/predict", 200): 10, ("/predict", 500): 1})),
        parse_metrics(_runtime_metrics_text({("/predict", 200): 20})),
        parse_metrics(_runtime_metrics_text({("/v2/models/{name}/infer", 503): 4})),
    ]
    assert sum_counts(pods) == Counts(requests=35, errors=1)
    assert sum_counts([]) == Counts(0, 0)


# --- judging a window ----------------------------------------------------------------


def window(start: Counts, stable: Counts | None = None, *, at: datetime = T0, analysed: int = 0) -> Window:
    return Window(
        start=at,
        candidate=start,
        stable=stable,
        stable_version="fraud-v1" if stable is not None else None,
        analysis_start=at,
        analysed_requests=analysed,
    )


def test_the_first_observation_starts_a_window_and_the_analysis() -> None:
    verdict = judge(Window(), Counts(500, 7), Counts(9000, 1), POLICY, now=T0, stable_version="fraud-v1")
    assert verdict.action == "new_window" and not verdict.rollback
    assert verdict.status == {
        "windowStart": "2025-01-02T03:04:00Z",
        "requestsAtWindowStart": 500,
        "errorsAtWindowStart": 7,
        "stableRequestsAtWindowStart": 9000,
        "stableErrorsAtWindowStart": 1,
        "stableVersion": "fraud-v1",
        "analysisStart": "2025-01-02T03:04:00Z",
        "analysedRequests": 0,
        "rolledBack": False,
    }


def test_an_error_rate_past_the_stables_by_more_than_the_threshold_rolls_back_with_the_numbers() -> None:
    verdict = judge(
        window(Counts(100, 2), Counts(1000, 0)),
        Counts(152, 18),
        Counts(1500, 0),
        POLICY,
        now=T0 + timedelta(seconds=20),
        stable_version="fraud-v1",
    )
    assert verdict.rollback and verdict.reason == "ErrorRateExceeded"
    assert verdict.message == "error rate 0.31 over 52 requests exceeds the stable version's 0.00 by more than 0.05"
    assert (verdict.requests, verdict.errors) == (52, 16)
    assert verdict.status["rolledBack"] is True and verdict.status["errorRate"] == pytest.approx(16 / 52, abs=1e-6)


def test_a_cause_the_stable_version_shares_does_not_roll_the_candidate_back() -> None:
    # Both answer 30% errors (a broken downstream): the candidate is no worse than the stable.
    verdict = judge(
        window(Counts(0, 0), Counts(0, 0)),
        Counts(100, 30),
        Counts(900, 270),
        POLICY,
        now=T0 + timedelta(seconds=20),
        stable_version="fraud-v1",
    )
    assert verdict.action == "keep" and verdict.status["stableErrorRate"] == pytest.approx(0.3)
    worse = judge(
        window(Counts(0, 0), Counts(0, 0)),
        Counts(100, 40),
        Counts(900, 270),
        POLICY,
        now=T0 + timedelta(seconds=20),
        stable_version="fraud-v1",
    )
    assert worse.rollback  # 0.40 - 0.30 > 0.05


def test_without_a_stable_baseline_the_candidate_is_compared_with_no_errors() -> None:
    verdict = judge(window(Counts(0, 0)), Counts(100, 6), None, POLICY, now=T0 + timedelta(seconds=5))
    assert verdict.rollback


def test_errors_before_the_window_do_not_count() -> None:
    # 1000 errors long ago, a clean window now.
    verdict = judge(window(Counts(2000, 1000)), Counts(2100, 1000), None, POLICY, now=T0 + timedelta(seconds=30))
    assert verdict.action == "keep" and verdict.error_rate == 0.0


def test_too_few_requests_are_not_judged() -> None:
    verdict = judge(window(Counts(0, 0)), Counts(19, 19), None, POLICY, now=T0 + timedelta(seconds=30))
    assert verdict.action == "keep" and verdict.error_rate is None
    assert "19 of minRequests 20" in verdict.message
    assert judge(window(Counts(0, 0)), Counts(20, 19), None, POLICY, now=T0 + timedelta(seconds=30)).rollback


def test_a_rate_at_the_threshold_is_within_it() -> None:
    verdict = judge(window(Counts(0, 0)), Counts(100, 5), None, POLICY, now=T0 + timedelta(seconds=30))
    assert verdict.action == "keep" and verdict.error_rate == pytest.approx(0.05)


def test_a_zero_threshold_rolls_back_on_the_first_error() -> None:
    strict = Rollout(max_error_rate=0, window_seconds=60, min_requests=1)
    assert judge(window(Counts(0, 0)), Counts(1, 1), None, strict, now=T0).rollback
    assert not judge(window(Counts(0, 0)), Counts(50, 0), None, strict, now=T0).rollback


def test_a_passed_window_starts_the_next_one_at_the_current_counts_and_adds_to_the_analysis() -> None:
    later = T0 + timedelta(seconds=61)
    verdict = judge(window(Counts(100, 0), analysed=30), Counts(400, 3), None, POLICY, now=later)
    assert verdict.action == "new_window" and verdict.reason == "WindowPassed"
    assert verdict.error_rate == pytest.approx(0.01)
    assert verdict.status["windowStart"] == "2025-01-02T03:05:01Z"
    assert (verdict.status["requestsAtWindowStart"], verdict.status["errorsAtWindowStart"]) == (400, 3)
    assert verdict.status["errorRate"] == 0.01 and verdict.status["analysedRequests"] == 330
    assert verdict.status["analysisStart"] == "2025-01-02T03:04:00Z"


def test_a_quiet_window_keeps_the_last_judged_rate() -> None:
    start = Window(start=T0, candidate=Counts(100, 0), error_rate=0.02, analysis_start=T0)
    verdict = judge(start, Counts(105, 5), None, POLICY, now=T0 + timedelta(seconds=90))
    assert verdict.action == "new_window" and "5 of minRequests 20" in verdict.message
    assert verdict.status["errorRate"] == 0.02


def test_promotion_waits_for_the_analysis_time_and_enough_requests() -> None:
    early = judge(window(Counts(0, 0)), Counts(500, 0), None, POLICY, now=T0 + timedelta(seconds=30))
    assert not early.promotable  # 30 s of minAnalysisSeconds 120
    few = judge(window(Counts(0, 0)), Counts(10, 0), None, POLICY, now=T0 + timedelta(seconds=121))
    assert not few.promotable  # 10 of minRequests 20
    done = judge(window(Counts(0, 0), analysed=15), Counts(10, 0), None, POLICY, now=T0 + timedelta(seconds=121))
    assert done.promotable


def test_a_restarted_pod_starts_the_window_again_instead_of_a_negative_rate() -> None:
    # Three pods at 300 requests; one restarts and comes back at 0: the sum drops.
    verdict = judge(window(Counts(900, 10)), Counts(620, 12), None, POLICY, now=T0 + timedelta(seconds=10))
    assert verdict.action == "new_window" and verdict.reason == "CountersReset"
    assert not verdict.rollback and verdict.requests == 0 and verdict.errors == 0
    assert verdict.status["requestsAtWindowStart"] == 620 and verdict.status["errorsAtWindowStart"] == 12
    assert verdict.status["analysisStart"] == "2025-01-02T03:04:00Z"  # the analysis goes on
    stable_reset = judge(
        window(Counts(0, 0), Counts(900, 0)), Counts(50, 0), Counts(10, 0), POLICY, now=T0, stable_version="fraud-v1"
    )
    assert stable_reset.reason == "CountersReset"


def test_a_new_stable_version_starts_the_window_again() -> None:
    verdict = judge(
        window(Counts(0, 0), Counts(0, 0)), Counts(50, 40), Counts(10, 0), POLICY, now=T0, stable_version="fraud-v3"
    )
    assert verdict.action == "new_window" and verdict.reason == "StableChanged" and not verdict.rollback


def test_more_new_errors_than_new_requests_never_rates_above_one() -> None:
    # A pod's reset hidden by the others' growth can leave the sums inconsistent.
    verdict = judge(window(Counts(100, 0)), Counts(130, 45), None, POLICY, now=T0 + timedelta(seconds=10))
    assert verdict.rollback and verdict.error_rate == 1.0 and verdict.errors == 30


def test_without_another_ready_version_the_failing_one_keeps_serving() -> None:
    verdict = judge(
        window(Counts(0, 0)), Counts(100, 90), None, POLICY, now=T0 + timedelta(seconds=10), has_fallback=False
    )
    assert verdict.action == "keep" and verdict.reason == "NoFallback"
    assert verdict.status["rolledBack"] is False and "no other Ready version" in verdict.message


# --- the stored window -------------------------------------------------------------------


def test_the_status_written_is_read_back_as_the_same_window() -> None:
    first = judge(Window(), Counts(10, 0), Counts(90, 0), POLICY, now=T0, stable_version="fraud-v1")
    assert Window.from_status(first.status) == first.window
    second = judge(
        Window.from_status(first.status),
        Counts(60, 30),
        Counts(190, 0),
        POLICY,
        now=T0 + timedelta(seconds=15),
        stable_version="fraud-v1",
    )
    assert second.rollback and second.message.startswith("error rate 0.60 over 50 requests")


def test_a_rolled_back_version_stays_rolled_back() -> None:
    rolled = judge(window(Counts(0, 0)), Counts(100, 100), None, POLICY, now=T0 + timedelta(seconds=5))
    assert rolled.rollback
    after = judge(Window.from_status(rolled.status), Counts(100, 100), None, POLICY, now=T0 + timedelta(hours=2))
    assert after.action == "keep" and after.reason == "RolledBack" and after.status == rolled.status


@pytest.mark.parametrize("step", ["first", "keep", "rollback", "passed", "reset"])
def test_every_rollout_status_validates_against_the_crd(
    step: str, make_mv: MakeMV, mv_validator: jsonschema.Validator
) -> None:
    stable = {"stable_version": "fraud-v1"}
    cases = {
        "first": judge(Window(), Counts(3, 0), Counts(1, 0), POLICY, now=T0, **stable),
        "keep": judge(window(Counts(0, 0), Counts(0, 0)), Counts(50, 1), Counts(9, 0), POLICY, now=T0, **stable),
        "rollback": judge(window(Counts(0, 0), Counts(0, 0)), Counts(50, 40), Counts(9, 0), POLICY, now=T0, **stable),
        "passed": judge(
            window(Counts(0, 0), Counts(0, 0)),
            Counts(50, 1),
            Counts(9, 0),
            POLICY,
            now=T0 + timedelta(minutes=5),
            **stable,
        ),
        "reset": judge(window(Counts(50, 1), Counts(0, 0)), Counts(0, 0), Counts(9, 0), POLICY, now=T0, **stable),
    }
    mv = make_mv(rollout={"maxErrorRate": 0.05, "minAnalysisSeconds": 30})
    mv["status"] = {"rollout": dict(cases[step].status)}
    errors = [f"{list(e.path)}: {e.message}" for e in mv_validator.iter_errors(mv)]
    assert not errors, errors


counts = st.builds(Counts, st.integers(0, 10**9), st.integers(0, 10**9))


@settings(deadline=None)
@given(
    start=counts,
    current=counts,
    stable_start=counts,
    stable_now=counts,
    elapsed=st.integers(0, 10**5),
    rate=st.floats(0, 1),
    minimum=st.integers(1, 1000),
    fallback=st.booleans(),
)
def test_any_counts_give_a_rate_between_0_and_1_and_roll_back_only_past_the_stables_plus_threshold(
    start: Counts,
    current: Counts,
    stable_start: Counts,
    stable_now: Counts,
    elapsed: int,
    rate: float,
    minimum: int,
    fallback: bool,
) -> None:
    policy = Rollout(max_error_rate=rate, window_seconds=60, min_requests=minimum)
    verdict = judge(
        window(start, stable_start),
        current,
        stable_now,
        policy,
        now=T0 + timedelta(seconds=elapsed),
        stable_version="fraud-v1",
        has_fallback=fallback,
    )
    assert verdict.requests >= 0 and 0 <= verdict.errors <= verdict.requests
    if verdict.error_rate is not None:
        assert 0.0 <= verdict.error_rate <= 1.0
    if verdict.rollback:
        assert fallback and verdict.requests >= minimum and verdict.error_rate is not None
        stable_rate = verdict.status.get("stableErrorRate") or 0.0
        assert verdict.error_rate - stable_rate > rate
    status = verdict.status
    assert status["requestsAtWindowStart"] >= 0 and status["errorsAtWindowStart"] >= 0
