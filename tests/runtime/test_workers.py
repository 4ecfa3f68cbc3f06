"""`--workers N`: N processes on one port, and every answer about the pod is about all of them.

The runtime runs as a real process tree (the supervisor and its workers) on a
listening socket the test holds with SO_REUSEPORT, as the supervisor binds the
port itself in a pod: each worker accepts on a sibling socket of its own.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.onnx_models import build_mlp
from tests.support.polling import wait_for
from tests.support.runtime_process import RuntimeProcess, listening_socket

FEATURES = [0.5, -1.0, 2.0, 0.25]


def pod_env(model: Path, **extra: str) -> dict[str, str]:
    return {"MODELFLEET_MODEL": str(model), "MODELFLEET_WORKERS": "2", "MODELFLEET_WARMUP_ITERATIONS": "1", **extra}


@pytest.fixture
async def pod(tmp_path: Path) -> AsyncIterator[RuntimeProcess]:
    listener = listening_socket(reuse_port=True)
    try:
        async with RuntimeProcess(pod_env(build_mlp(tmp_path / "mlp.onnx")), tmp_path, listener=listener) as runtime:
            yield runtime
    finally:
        listener.close()


async def fresh(runtime: RuntimeProcess, method: str, path: str, **kwargs: object) -> httpx.Response:
    """One request on a new connection: the kernel picks the worker for each connection."""
    async with httpx.AsyncClient(base_url=runtime.url, timeout=60) as client:
        return await client.request(method, path, **kwargs)  # type: ignore[arg-type]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def predictions(text: str, code: str = "200") -> float:
    labels = (("code", code), ("endpoint", "/predict"), ("model", "model"), ("version", "1"))
    return samples(text).get(("modelfleet_requests_total", labels), 0.0)


async def test_every_worker_answers_for_the_whole_pod(pod: RuntimeProcess) -> None:
    readiness = (await pod.client.get("/v2/health/ready")).json()
    assert readiness["ready"] and [w["state"] for w in readiness["workers"]] == ["ready", "ready"]
    assert len({w["pid"] for w in readiness["workers"]}) == 2
    answers = await asyncio.gather(*(fresh(pod, "POST", "/predict", json={"features": FEATURES}) for _ in range(40)))
    assert [a.status_code for a in answers] == [200] * 40
    stats = [(await fresh(pod, "GET", "/stats")).json() for _ in range(8)]
    assert {s["count"] for s in stats} == {40}
    # Both workers served (the kernel spread the 40 connections), and /stats adds them up.
    per_worker = [w["count"] for w in stats[0]["workers"]]
    assert sum(per_worker) == 40 and min(per_worker) > 0
    texts = [(await fresh(pod, "GET", "/metrics")).text for _ in range(8)]
    assert {predictions(t) for t in texts} == {40.0}
    pod_labels = (("model", "model"), ("version", "1"))
    assert {samples(t)[("modelfleet_model_ready", pod_labels)] for t in texts} == {1.0}
    assert {samples(t)[("modelfleet_workers", pod_labels)] for t in texts} == {2.0}


async def test_feedback_stats_from_any_worker_count_the_whole_volume(tmp_path: Path) -> None:
    env = pod_env(build_mlp(tmp_path / "mlp.onnx"), MODELFLEET_FEEDBACK_DIR=str(tmp_path / "feedback"))
    listener = listening_socket(reuse_port=True)
    try:
        async with RuntimeProcess(env, tmp_path, listener=listener) as runtime:
            sent = [fresh(runtime, "POST", "/feedback", json={"features": FEATURES, "label": 1.0}) for _ in range(20)]
            assert [a.status_code for a in await asyncio.gather(*sent)] == [200] * 20
            stats = [(await fresh(runtime, "GET", "/v1/feedback/stats")).json() for _ in range(8)]
    finally:
        listener.close()
    assert {s["unconsumed"] for s in stats} == {20}


async def test_a_worker_that_dies_is_restarted_and_the_pod_is_not_ready_meanwhile(pod: RuntimeProcess) -> None:
    for _ in range(10):
        assert (await fresh(pod, "POST", "/predict", json={"features": FEATURES})).status_code == 200
    before = (await pod.client.get("/v2/health/ready")).json()["workers"]
    os.kill(before[1]["pid"], signal.SIGKILL)

    async def not_ready() -> bool:
        return (await fresh(pod, "GET", "/v2/health/ready")).status_code == 503

    await wait_for(not_ready, timeout=60, interval=0.01, message="the pod to turn not ready")
    await pod.wait_ready(timeout=120)
    after = (await pod.client.get("/v2/health/ready")).json()["workers"]
    assert after[0]["pid"] == before[0]["pid"] and after[1]["pid"] != before[1]["pid"]
    assert [w["restarts"] for w in after] == [0, 1]
    text = (await pod.client.get("/metrics")).text
    # The dead worker's counts stay in the pod's counters: they never go down.
    assert predictions(text) == 10.0
    assert samples(text)[("modelfleet_worker_restarts_total", (("model", "model"), ("version", "1")))] == 1.0


async def test_the_prediction_logs_of_every_worker_add_up_in_the_pods_metrics(tmp_path: Path) -> None:
    env = pod_env(build_mlp(tmp_path / "mlp.onnx"), MODELFLEET_FEEDBACK_DIR=str(tmp_path / "feedback"))
    listener = listening_socket(reuse_port=True)
    labels = (("model", "model"), ("version", "1"))
    try:
        async with RuntimeProcess(env, tmp_path, listener=listener) as runtime:
            answers = await asyncio.gather(
                *(fresh(runtime, "POST", "/predict", json={"features": FEATURES}) for _ in range(40))
            )
            assert [a.status_code for a in answers] == [200] * 40 and all("request_id" in a.json() for a in answers)
            writers = {a.json()["request_id"].rsplit("-", 1)[0] for a in answers}

            async def logged() -> bool:
                text = (await fresh(runtime, "GET", "/metrics")).text
                return samples(text).get(("modelfleet_prediction_log_records_total", labels)) == 40.0

            # Pushed by each worker's log thread after its sync: every worker's records, from any worker.
            await wait_for(logged, timeout=30, message="the pod's metrics to count all 40 logged predictions")
            texts = [(await fresh(runtime, "GET", "/metrics")).text for _ in range(8)]
    finally:
        listener.close()
    assert len(writers) == 2, writers  # both workers logged predictions
    assert {samples(t)[("modelfleet_prediction_log_records_total", labels)] for t in texts} == {40.0}
    assert {samples(t)[("modelfleet_prediction_log_queued_bytes", labels)] for t in texts} == {0.0}
