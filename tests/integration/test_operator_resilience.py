"""The operator converges whatever happens to it: restarts midway, API errors, deletions while it is down.

The operator runs with its default resync (300 s): every recovery here is the event path and the
work queue's retries, never a periodic poll.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from modelfleet_operator.config import OperatorConfig
from tests.integration.harness.cluster import DEPLOYMENTS, MV, SERVICES, Cluster
from tests.integration.harness.kubelet import DeploymentController
from tests.integration.harness.operator import InProcessOperator
from tests.integration.harness.router import Router
from tests.integration.model_versions import LOCAL_SOURCES, ModelFile, model_version, wait_for_phase
from tests.integration.steady_load import CapacitySampler, Load
from tests.support.polling import wait_for

FINALIZER = "serving.modelfleet.dev/finalizer"


@pytest.fixture
def operator_config() -> OperatorConfig:
    return OperatorConfig(
        namespaces=("ml",), standalone=True, allowed_uri_schemes=LOCAL_SOURCES, scale_down_delay_seconds=2
    )


@pytest.fixture
async def router(cluster: Cluster) -> AsyncIterator[Router]:
    async with Router(cluster.emulator, "ml", "fraud", mode="service", seed=13) as running:
        yield running


def names(cluster: Cluster, resource: tuple[str, str, str]) -> list[str]:
    return sorted(o["metadata"]["name"] for o in cluster.list(resource))


def status(cluster: Cluster, name: str) -> dict:
    return (cluster.get(MV, name) or {}).get("status") or {}


async def test_operator_killed_midway_converges_without_duplicates(
    cluster: Cluster,
    kubelet: DeploymentController,
    operator: InProcessOperator,
    demo_model: ModelFile,
) -> None:
    await cluster.apply(model_version("fraud-v1", "fraud", "1", demo_model.uri, replicas=2))
    await wait_for(lambda: cluster.get(DEPLOYMENTS, "fraud-v1") is not None, timeout=30, message="the Deployment")

    await operator.kill()
    await cluster.patch_spec("fraud-v1", {"batching": {"maxBatchSize": 4}})  # a change while it is down
    await operator.start()

    mv = await wait_for_phase(cluster, "fraud-v1", "Ready")
    assert mv["status"]["observedGeneration"] == mv["metadata"]["generation"]
    assert names(cluster, DEPLOYMENTS) == ["fraud-v1"]
    assert names(cluster, SERVICES) == ["fraud", "fraud-v1"]
    # Alone, the version protects no traffic: it carries no finalizer, so deleting it never hangs.
    assert FINALIZER not in (mv["metadata"].get("finalizers") or [])
    env = {
        e["name"]: e["value"]
        for e in cluster.get(DEPLOYMENTS, "fraud-v1")["spec"]["template"]["spec"]["containers"][0]["env"]
        if "value" in e
    }
    assert env["MODELFLEET_MAX_BATCH_SIZE"] == "4"
    await wait_for(lambda: len(kubelet.pods_of("ml", "fraud-v1")) == 2, timeout=30, message="two pods, no more")


async def test_api_errors_are_retried_until_the_version_serves(
    cluster: Cluster,
    kubelet: DeploymentController,
    operator: InProcessOperator,
    demo_model: ModelFile,
) -> None:
    faults = [
        cluster.emulator.inject_error(500, verb="get", plural="deployments"),  # the look before a create
        cluster.emulator.inject_error(500, verb="patch", plural="deployments"),  # server-side apply
        cluster.emulator.inject_error(409, verb="patch", plural="services"),
        cluster.emulator.inject_error(
            429, verb="patch", plural="modelversions", subresource="status", retry_after=1, times=2
        ),
    ]
    await cluster.apply(model_version("fraud-v1", "fraud", "1", demo_model.uri))

    await wait_for_phase(cluster, "fraud-v1", "Ready")
    assert [f.hits for f in faults] == [1, 1, 1, 2]
    assert names(cluster, DEPLOYMENTS) == ["fraud-v1"]
    assert names(cluster, SERVICES) == ["fraud", "fraud-v1"]
    assert len(kubelet.pods_of("ml", "fraud-v1")) == 1


async def test_a_serving_version_deleted_while_the_operator_is_down_hands_over_on_start(
    cluster: Cluster,
    kubelet: DeploymentController,
    operator: InProcessOperator,
    demo_model: ModelFile,
) -> None:
    await cluster.apply(model_version("fraud-v1", "fraud", "1", demo_model.uri))
    await cluster.apply(model_version("fraud-v2", "fraud", "2", demo_model.uri))
    await wait_for(
        lambda: (
            status(cluster, "fraud-v1").get("servingTraffic") == 50
            and status(cluster, "fraud-v2").get("servingTraffic") == 50
            and FINALIZER in (cluster.get(MV, "fraud-v1")["metadata"].get("finalizers") or [])
        ),
        timeout=90,
        message="both versions serving, fraud-v1 with its finalizer",
    )
    await operator.kill()
    await cluster.delete(MV, "fraud-v1")
    assert cluster.get(MV, "fraud-v1") is not None  # held by the finalizer: its share is not handed over yet
    await operator.start()
    await wait_for(lambda: cluster.get(MV, "fraud-v1") is None, timeout=60, message="the finalizer to be removed")
    assert status(cluster, "fraud-v2")["servingTraffic"] == 100
    await wait_for(lambda: names(cluster, DEPLOYMENTS) == ["fraud-v2"], timeout=30, message="fraud-v1's children gone")


async def test_api_errors_and_a_kill_in_the_middle_of_a_promotion_converge_without_a_capacity_drop(
    cluster: Cluster,
    kubelet: DeploymentController,
    operator: InProcessOperator,
    router: Router,
    demo_model: ModelFile,
) -> None:
    await cluster.apply(model_version("fraud-v1", "fraud", "1", demo_model.uri, replicas=2, traffic=100))
    await cluster.apply(model_version("fraud-v2", "fraud", "2", demo_model.uri, replicas=2, traffic=10))
    await wait_for(
        lambda: (
            status(cluster, "fraud-v2").get("servingTraffic") == 9
            and status(cluster, "fraud-v1").get("phase") == "Ready"
            # Sized for its canary share (ceil(2 x 9%) = 1), so that the promotion has to patch it.
            and (cluster.get(DEPLOYMENTS, "fraud-v2") or {}).get("spec", {}).get("replicas") == 1
        ),
        timeout=90,
        message="fraud-v2 serving its canary share on one replica",
    )
    sampler = CapacitySampler(cluster, router, "fraud")
    async with Load(router.url) as load, sampler.running():
        faults = [
            cluster.emulator.inject_error(409, verb="patch", plural="deployments", name="fraud-v2"),
            cluster.emulator.inject_error(
                429, verb="patch", plural="modelversions", subresource="status", retry_after=1
            ),
            cluster.emulator.inject_error(500, verb="patch", plural="deployments", name="fraud-v1", times=2),
        ]
        await cluster.patch_spec("fraud-v2", {"traffic": 100})
        await cluster.patch_spec("fraud-v1", {"traffic": 0})
        # Killed once fraud-v2 is asked to scale up, before the shares switch.
        await wait_for(
            lambda: (cluster.get(DEPLOYMENTS, "fraud-v2") or {}).get("spec", {}).get("replicas") == 2,
            timeout=60,
            message="fraud-v2 scaling up for its new share",
        )
        await operator.kill()
        assert status(cluster, "fraud-v1")["servingTraffic"] > 0  # the switch had not happened yet
        await operator.start()
        await wait_for(
            lambda: (
                status(cluster, "fraud-v2").get("servingTraffic") == 100
                and (cluster.get(DEPLOYMENTS, "fraud-v1") or {}).get("spec", {}).get("replicas") == 0
                and not kubelet.pods_of("ml", "fraud-v1")
            ),
            timeout=90,
            message=lambda: f"the promotion done; v1 {status(cluster, 'fraud-v1')}",
        )
        await load.collect(200)
    assert [f.hits for f in faults] == [1, 1, 2]
    assert load.statuses() == {200: len(load.answers)}, load.statuses()
    assert sampler.violations == [], sampler.violations[:5]
    assert names(cluster, DEPLOYMENTS) == ["fraud-v1", "fraud-v2"]
    assert names(cluster, SERVICES) == ["fraud", "fraud-v1", "fraud-v2"]
    assert len(kubelet.pods_of("ml", "fraud-v2")) == 2
    assert status(cluster, "fraud-v1")["phase"] == "Retired"
