"""Worker processes and onnxruntime threads from a version's CPU request (issue 13)."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from modelfleet_operator.config import OperatorConfig
from modelfleet_operator.core.manifests import build_deployment
from modelfleet_operator.core.workers import BadQuantity, WorkerPlan, plan_workers, quantity
from modelfleet_runtime.settings import load_settings

MakeMV = Callable[..., dict[str, Any]]


@pytest.mark.parametrize(
    ("written", "cpus"),
    [
        (1, Decimal(1)),
        ("1", Decimal(1)),
        ("1.5", Decimal("1.5")),
        ("1500m", Decimal("1.5")),
        ("2000m", Decimal(2)),
        ("0.5", Decimal("0.5")),
        ("250m", Decimal("0.25")),
        ("2k", Decimal(2000)),
        ("1e3", Decimal(1000)),
        ("1Ki", Decimal(1024)),
    ],
)
def test_cpu_quantities_are_read_exactly(written: Any, cpus: Decimal) -> None:
    assert quantity(written) == cpus


@pytest.mark.parametrize("bad", ["", "two", "1.5x", "m"])
def test_a_malformed_quantity_is_refused_with_its_value(bad: str) -> None:
    with pytest.raises(BadQuantity, match="not a resource quantity"):
        quantity(bad)


@pytest.mark.parametrize(
    ("resources", "plan"),
    [
        # A fraction rounds down, never below one worker; threads fill what each worker has.
        ({"requests": {"cpu": "500m"}}, WorkerPlan(1, 1)),
        ({"requests": {"cpu": "1"}}, WorkerPlan(1, 1)),
        ({"requests": {"cpu": "1500m"}}, WorkerPlan(1, 1)),
        ({"requests": {"cpu": "2"}}, WorkerPlan(2, 1)),
        ({"requests": {"cpu": "2000m"}}, WorkerPlan(2, 1)),
        ({"requests": {"cpu": "2500m"}}, WorkerPlan(2, 1)),
        ({"requests": {"cpu": 8}}, WorkerPlan(8, 1)),
        # The request, not the limit: the scheduler guarantees the request.
        ({"requests": {"cpu": "2"}, "limits": {"cpu": "4"}}, WorkerPlan(2, 1)),
        # Limits without requests: the API server makes the request equal to the limit.
        ({"limits": {"cpu": "3"}}, WorkerPlan(3, 1)),
        # No CPU at all: the runtime's defaults (one worker, onnxruntime's thread count).
        ({"requests": {"memory": "1Gi"}}, WorkerPlan(1, None)),
        ({}, WorkerPlan(1, None)),
        # Never more than the runtime accepts.
        ({"requests": {"cpu": "200"}}, WorkerPlan(128, 1)),
    ],
)
def test_workers_follow_the_cpu_request_in_whole_cpus(resources: dict[str, Any], plan: WorkerPlan) -> None:
    assert plan_workers(resources) == plan


@pytest.mark.parametrize(
    ("cpu", "override", "plan"),
    [
        ("4", 2, WorkerPlan(2, 2)),
        ("4", 3, WorkerPlan(3, 1)),
        ("2", 1, WorkerPlan(1, 2)),
        ("1", 4, WorkerPlan(4, 1)),  # more workers than CPUs, as asked: one thread each
        (None, 3, WorkerPlan(3, None)),
    ],
)
def test_the_override_sets_the_workers_and_threads_share_the_request(
    cpu: str | None, override: int, plan: WorkerPlan
) -> None:
    resources = {"requests": {"cpu": cpu}} if cpu else {}
    assert plan_workers(resources, override) == plan


@pytest.mark.parametrize(("cpu", "override"), [("1", None), ("2", None), ("3500m", None), ("8", 3), ("6", 4)])
def test_workers_times_threads_stay_within_the_request_whenever_workers_fit(cpu: str, override: int | None) -> None:
    plan = plan_workers({"requests": {"cpu": cpu}}, override)
    assert plan.intra_op_threads is not None
    assert plan.workers * plan.intra_op_threads <= quantity(cpu)


def _env(deployment: dict[str, Any]) -> dict[str, str]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_the_deployment_tells_the_runtime_its_workers_and_threads(make_mv: MakeMV) -> None:
    mv = make_mv(resources={"requests": {"cpu": "4", "memory": "2Gi"}}, runtime={"workers": 2})
    env = _env(build_deployment(mv, OperatorConfig()))
    assert (env["MODELFLEET_WORKERS"], env["MODELFLEET_INTRA_OP_THREADS"]) == ("2", "2")
    settings = load_settings({}, env)
    assert (settings.workers, settings.intra_op_threads) == (2, 2)


def test_the_operators_default_resources_give_one_single_threaded_worker(make_mv: MakeMV) -> None:
    env = _env(build_deployment(make_mv(), OperatorConfig()))  # 250m requested by default
    assert (env["MODELFLEET_WORKERS"], env["MODELFLEET_INTRA_OP_THREADS"]) == ("1", "1")


def test_the_crd_takes_a_worker_override_of_at_least_one(mv_validator: Any, make_mv: MakeMV) -> None:
    assert not list(mv_validator.iter_errors(make_mv(runtime={"workers": 4})))
    assert list(mv_validator.iter_errors(make_mv(runtime={"workers": 0})))
    assert list(mv_validator.iter_errors(make_mv(runtime={"threads": 4})))
