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
    RolloutState,
    evaluate,
    evaluate_status,
    parse_metrics,
    sum_counts,
)
from modelfleet_operator.spec import Rollout
from modelfleet_runtime.metrics import INFERENCE_PATHS, RuntimeMetrics

POLICY = Rollout(max_error_rate=0.05, window_seconds=60, min_requests=20)
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
            ("/predict", 503): 3,
            ("/v2/models/{name}/infer", 200): 5,
            ("/v2/models/{name}/infer", 500): 2,
            ("/v2/models/{name}/versions/{version}/infer", 502): 1,
            ("/v2/models/{name}/infer", 400): 4,  # the client's mistake: a request, not an error
            ("/v2/health/ready", 503): 30,  # probes of a warming pod are not inference errors
            ("/feedback", 500): 7,
            ("unmatched", 404): 9,
        }
    )
    assert parse_metrics(text) == Counts(requests=55, errors=6)


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
    assert sum_counts(pods) == Counts(requests=35, errors=5)
    assert sum_counts([]) == Counts(0, 0)


# --- judging a window ----------------------------------------------------------------


def test_the_first_observation_starts_a_window() -> None:
    decision = evaluate(None, Counts(500, 7), POLICY, now=T0, window_start=None)
    assert decision.action == "new_window" and not decision.rollback
    assert decision.status == {
        "windowStart": "2025-01-02T03:04:00Z",
        "requestsAtWindowStart": 500,
        "errorsAtWindowStart": 7,
        "rolledBack": False,
    }


def test_an_error_rate_past_the_threshold_rolls_back_with_the_numbers() -> None:
    start = Counts(100, 2)
    decision = evaluate(start, Counts(152, 18), POLICY, now=T0 + timedelta(seconds=20), window_start=T0)
    assert decision.rollback and decision.reason == "ErrorRateExceeded"
    assert decision.message == "error rate 0.31 over 52 requests exceeds 0.05"
    assert (decision.requests, decision.errors) == (52, 16)
    assert decision.status["rolledBack"] is True and decision.status["errorRate"] == pytest.approx(16 / 52, abs=1e-6)


def test_errors_before_the_window_do_not_count() -> None:
    # 1000 errors long ago, a clean window now.
    decision = evaluate(Counts(2000, 1000), Counts(2100, 1000), POLICY, now=T0 + timedelta(seconds=30), window_start=T0)
    assert decision.action == "keep" and decision.error_rate == 0.0


def test_too_few_requests_are_not_judged() -> None:
    decision = evaluate(Counts(0, 0), Counts(19, 19), POLICY, now=T0 + timedelta(seconds=30), window_start=T0)
    assert decision.action == "keep" and decision.error_rate is None
    assert "19 of minRequests 20" in decision.message
    enough = evaluate(Counts(0, 0), Counts(20, 19), POLICY, now=T0 + timedelta(seconds=30), window_start=T0)
    assert enough.rollback


def test_a_rate_at_the_threshold_is_within_it() -> None:
    decision = evaluate(Counts(0, 0), Counts(100, 5), POLICY, now=T0 + timedelta(seconds=30), window_start=T0)
    assert decision.action == "keep" and decision.error_rate == pytest.approx(0.05)


def test_a_zero_threshold_rolls_back_on_the_first_error() -> None:
    strict = Rollout(max_error_rate=0, window_seconds=60, min_requests=1)
    assert evaluate(Counts(0, 0), Counts(1, 1), strict, now=T0, window_start=T0).rollback
    assert not evaluate(Counts(0, 0), Counts(50, 0), strict, now=T0, window_start=T0).rollback


def test_a_passed_window_starts_the_next_one_at_the_current_counts() -> None:
    later = T0 + timedelta(seconds=61)
    decision = evaluate(Counts(100, 0), Counts(400, 3), POLICY, now=later, window_start=T0)
    assert decision.action == "new_window" and decision.reason == "WindowPassed"
    assert decision.error_rate == pytest.approx(0.01)
    assert decision.status == {
        "windowStart": "2025-01-02T03:05:01Z",
        "requestsAtWindowStart": 400,
        "errorsAtWindowStart": 3,
        "errorRate": 0.01,
        "rolledBack": False,
    }


def test_a_quiet_window_keeps_the_last_judged_rate() -> None:
    later = T0 + timedelta(seconds=90)
    decision = evaluate(Counts(100, 0), Counts(105, 5), POLICY, now=later, window_start=T0, last_error_rate=0.02)
    assert decision.action == "new_window" and "not judged" in decision.message
    assert decision.status["errorRate"] == 0.02


def test_a_restarted_pod_starts_the_window_again_instead_of_a_negative_rate() -> None:
    # Three pods at 300 requests; one restarts and comes back at 0: the sum drops.
    decision = evaluate(Counts(900, 10), Counts(620, 12), POLICY, now=T0 + timedelta(seconds=10), window_start=T0)
    assert decision.action == "new_window" and decision.reason == "CountersReset"
    assert not decision.rollback and decision.requests == 0 and decision.errors == 0
    assert decision.status["requestsAtWindowStart"] == 620 and decision.status["errorsAtWindowStart"] == 12
    errors_only = evaluate(Counts(900, 50), Counts(950, 10), POLICY, now=T0 + timedelta(seconds=10), window_start=T0)
    assert errors_only.action == "new_window" and errors_only.reason == "CountersReset"


def test_more_new_errors_than_new_requests_never_rates_above_one() -> None:
    # A pod's reset hidden by the others' growth can leave the sums inconsistent.
    decision = evaluate(Counts(100, 0), Counts(130, 45), POLICY, now=T0 + timedelta(seconds=10), window_start=T0)
    assert decision.rollback and decision.error_rate == 1.0 and decision.errors == 30


def test_without_another_ready_version_the_failing_one_keeps_serving() -> None:
    decision = evaluate(
        Counts(0, 0), Counts(100, 90), POLICY, now=T0 + timedelta(seconds=10), window_start=T0, has_fallback=False
    )
    assert decision.action == "keep" and decision.reason == "NoFallback"
    assert decision.status["rolledBack"] is False and "no other Ready version" in decision.message


# --- the stored window -------------------------------------------------------------------


def test_the_status_written_is_read_back_as_the_same_window() -> None:
    first = evaluate_status(None, Counts(10, 0), POLICY, now=T0)
    state = RolloutState.from_status(first.status)
    assert state == RolloutState(window_start=T0, counts=Counts(10, 0), error_rate=None, rolled_back=False)
    second = evaluate_status(first.status, Counts(60, 30), POLICY, now=T0 + timedelta(seconds=15))
    assert second.rollback and second.message == "error rate 0.60 over 50 requests exceeds 0.05"


def test_a_rolled_back_version_stays_rolled_back() -> None:
    rolled = evaluate_status(None, Counts(0, 0), POLICY, now=T0)
    rolled = evaluate_status(rolled.status, Counts(100, 100), POLICY, now=T0 + timedelta(seconds=5))
    assert rolled.rollback
    after = evaluate_status(rolled.status, Counts(100, 100), POLICY, now=T0 + timedelta(hours=2))
    assert after.action == "keep" and after.reason == "RolledBack" and after.status == rolled.status


@pytest.mark.parametrize("step", ["first", "keep", "rollback", "passed", "reset"])
def test_every_rollout_status_validates_against_the_crd(
    step: str, make_mv: MakeMV, mv_validator: jsonschema.Validator
) -> None:
    cases = {
        "first": evaluate(None, Counts(3, 0), POLICY, now=T0, window_start=None),
        "keep": evaluate(Counts(0, 0), Counts(50, 1), POLICY, now=T0, window_start=T0),
        "rollback": evaluate(Counts(0, 0), Counts(50, 40), POLICY, now=T0, window_start=T0),
        "passed": evaluate(Counts(0, 0), Counts(50, 1), POLICY, now=T0 + timedelta(minutes=5), window_start=T0),
        "reset": evaluate(Counts(50, 1), Counts(0, 0), POLICY, now=T0, window_start=T0),
    }
    mv = make_mv(rollout={"maxErrorRate": 0.05})
    mv["status"] = {"rollout": dict(cases[step].status)}
    errors = [f"{list(e.path)}: {e.message}" for e in mv_validator.iter_errors(mv)]
    assert not errors, errors


counts = st.builds(Counts, st.integers(0, 10**9), st.integers(0, 10**9))


@settings(deadline=None)
@given(
    start=counts,
    current=counts,
    elapsed=st.integers(0, 10**5),
    rate=st.floats(0, 1),
    minimum=st.integers(1, 1000),
    fallback=st.booleans(),
)
def test_any_counts_give_a_rate_between_0_and_1_and_roll_back_only_past_the_threshold(
    start: Counts, current: Counts, elapsed: int, rate: float, minimum: int, fallback: bool
) -> None:
    policy = Rollout(max_error_rate=rate, window_seconds=60, min_requests=minimum)
    decision = evaluate(
        start, current, policy, now=T0 + timedelta(seconds=elapsed), window_start=T0, has_fallback=fallback
    )
    assert decision.requests >= 0 and 0 <= decision.errors <= decision.requests
    if decision.error_rate is not None:
        assert 0.0 <= decision.error_rate <= 1.0
    if decision.rollback:
        assert fallback and decision.requests >= minimum and decision.error_rate is not None
        assert decision.error_rate > rate
    status = decision.status
    assert status["requestsAtWindowStart"] >= 0 and status["errorsAtWindowStart"] >= 0
