"""Canary analysis judges the candidate, not the cluster (issue 10, point 5).

Three versions of one model behind the test Gateway, each with `spec.rollout`:
the stable fraud-v1 (the largest share, never judged), a healthy canary fraud-v2,
and later a canary fraud-v3 whose model fails at inference. The feature store
they read is down (every entity lookup answers 503) and their queues are tiny
(bursts answer 503 queue full with Retry-After): neither is the version's fault,
so nothing is rolled back, until fraud-v3 answers 500s and only it is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from modelfleet_operator.config import OperatorConfig
from tests.integration.harness.cluster import MV, Cluster
from tests.integration.harness.kubelet import DeploymentController
from tests.integration.harness.router import Router
from tests.integration.model_versions import LOCAL_SOURCES, ModelFile, condition, model_version, wait_for_phase
from tests.integration.steady_load import POISON, Load, failing_model
from tests.support.polling import wait_for

MODEL = "fraud"
HOST = "fraud-ml.example.com"
ROLLOUT = {"maxErrorRate": 0.1, "windowSeconds": 10, "minRequests": 10}
# A feature store nobody listens on: every entity lookup fails (503, "the feature store is unavailable").
DEAD_STORE = {"redis": {"url": "redis://127.0.0.1:1/0"}, "fields": ["age", "tenure"]}
# One row per batch and room for one waiting: a burst of clients fills the queue (503 + Retry-After).
TINY_QUEUE = {"maxBatchSize": 1, "maxLatencyMs": 0, "maxQueue": 1}


@pytest.fixture
def operator_config() -> OperatorConfig:
    return OperatorConfig(
        namespaces=("ml",), standalone=True, allowed_uri_schemes=LOCAL_SOURCES, routing="gateway", gateway="ml/public"
    )


@pytest.fixture
async def router(cluster: Cluster) -> AsyncIterator[Router]:
    async with Router(cluster.emulator, "ml", MODEL, mode="gateway", seed=3, gateway="ml/public") as running:
        yield running


def version(name: str, number: str, uri: str, traffic: int) -> dict[str, Any]:
    return model_version(
        name, MODEL, number, uri, traffic=traffic, rollout=ROLLOUT, features=DEAD_STORE, batching=TINY_QUEUE
    )


def rollout_of(cluster: Cluster, name: str) -> dict[str, Any]:
    return ((cluster.get(MV, name) or {}).get("status") or {}).get("rollout") or {}


def rolled_back(cluster: Cluster, name: str) -> bool:
    return bool(rollout_of(cluster, name).get("rolledBack")) or (
        (condition(cluster, name, "RolledBack") or {}).get("status") == "True"
    )


async def judged_windows(cluster: Cluster, name: str, requests: int) -> None:
    """Until `name`'s analysis has judged windows holding at least `requests` requests."""
    await wait_for(
        lambda: int(rollout_of(cluster, name).get("analysedRequests") or 0) >= requests,
        timeout=90,
        message=lambda: f"{name} analysed {requests} requests; rollout {rollout_of(cluster, name)}",
    )


async def test_outages_and_backpressure_roll_nothing_back_but_a_canary_answering_500s_is(
    cluster: Cluster,
    kubelet: DeploymentController,
    operator,
    router: Router,
    demo_model: ModelFile,
    tmp_path: Path,
) -> None:
    await cluster.apply(version("fraud-v1", "1", demo_model.uri, 100))
    await wait_for_phase(cluster, "fraud-v1", "Ready")
    await cluster.apply(version("fraud-v2", "2", demo_model.uri, 50))
    await wait_for(
        lambda: ((cluster.get(MV, "fraud-v2") or {}).get("status") or {}).get("servingTraffic") == 33,
        timeout=90,
        message="fraud-v2 serving its canary share",
    )

    # The feature store is down: every entity request is a 503, on both versions.
    outage = {"entity_id": "u1", "features": [0.3, 0.4, -0.5, 0.6, 0.7, -0.8]}
    async with Load(router.url, outage, host=HOST) as load:
        await judged_windows(cluster, "fraud-v2", 2 * int(ROLLOUT["minRequests"]))
    assert set(load.statuses()) == {503}
    assert rollout_of(cluster, "fraud-v2")["errorRate"] == 0.0

    # A burst that fills the tiny queues: 503s with Retry-After, on both versions again.
    async with Load(router.url, host=HOST, workers=24) as burst:
        start = int(rollout_of(cluster, "fraud-v2").get("analysedRequests") or 0)
        await judged_windows(cluster, "fraud-v2", start + 2 * int(ROLLOUT["minRequests"]))
    queue_full = [a for a in burst.answers if a.status == 503]
    assert queue_full and all(a.retry_after for a in queue_full), burst.statuses()
    assert set(burst.statuses()) <= {200, 503}

    assert not rolled_back(cluster, "fraud-v1") and not rolled_back(cluster, "fraud-v2")
    assert rollout_of(cluster, "fraud-v1") == {}  # the stable version is never judged
    assert rollout_of(cluster, "fraud-v2")["stableVersion"] == "fraud-v1"

    # A canary whose model fails at inference: its 500s are its own.
    broken = failing_model(tmp_path / "broken.onnx")
    await cluster.apply(version("fraud-v3", "3", broken.uri, 50))
    async with Load(router.url, {"features": POISON}, host=HOST) as poisoned:
        mv = await wait_for_phase(cluster, "fraud-v3", "Degraded", timeout=120)
    assert 500 in poisoned.statuses()
    assert mv["status"]["rollout"]["rolledBack"] is True and mv["status"]["servingTraffic"] == 0
    assert condition(cluster, "fraud-v3", "RolledBack")["reason"] == "ErrorRateExceeded"
    assert not rolled_back(cluster, "fraud-v1") and not rolled_back(cluster, "fraud-v2")
    assert ((cluster.get(MV, "fraud-v1") or {}).get("status") or {}).get("phase") == "Ready"
