"""Rules the schema cannot check, and why pods do not run (issue 10, points 7 and 8).

These scenarios need no runtime process: the process-less workload controller
(`harness.workloads.SimulatedWorkloads`) plays the Deployment, ReplicaSet and
EndpointSlice controllers and the kubelet, and says what a real cluster says
when pods cannot run (a quota, an image that cannot be pulled, a rollout past
its deadline).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from modelfleet_operator.config import OperatorConfig
from tests.integration.harness.cluster import DEPLOYMENTS, MV, SERVICES, Cluster
from tests.integration.harness.workloads import SimulatedWorkloads
from tests.integration.model_versions import LOCAL_SOURCES, condition, model_version, wait_for_phase
from tests.support.polling import wait_for

URI = "https://models.example.com/fraud/1/model.onnx"
IMAGE = "ghcr.io/modelfleet/runtime"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def workloads(cluster: Cluster, clock: Clock) -> AsyncIterator[SimulatedWorkloads]:
    async with SimulatedWorkloads(cluster.emulator, clock=clock, pullable=lambda image: ":missing" not in image) as sim:
        yield sim
    assert not sim.errors, sim.errors


@pytest.fixture
def operator_config() -> OperatorConfig:
    return OperatorConfig(
        namespaces=("ml",), standalone=True, allowed_uri_schemes=LOCAL_SOURCES, allowed_images=(IMAGE,)
    )


def versions(cluster: Cluster) -> dict[str, str]:
    """resourceVersion of every object, by (kind, name): what changed and what did not."""
    return {
        f"{kind}/{o['metadata']['name']}": o["metadata"]["resourceVersion"]
        for kind, resource in (("mv", MV), ("deployment", DEPLOYMENTS), ("service", SERVICES))
        for o in cluster.list(resource)
    }


async def test_a_second_version_with_the_same_version_fails_and_the_first_is_left_alone(
    cluster: Cluster, workloads: SimulatedWorkloads, operator
) -> None:
    await cluster.apply(model_version("fraud-a", "fraud", "1", URI, replicas=2))
    await wait_for(
        lambda: ((cluster.get(MV, "fraud-a") or {}).get("status") or {}).get("servingTraffic") == 100,
        timeout=30,
        message="fraud-a serving",
    )
    before = versions(cluster)

    await cluster.apply(model_version("fraud-b", "fraud", "1", URI))
    mv = await wait_for_phase(cluster, "fraud-b", "Failed", timeout=30)
    ready = condition(cluster, "fraud-b", "Ready")
    assert ready["reason"] == "DuplicateVersion"
    assert ready["message"].startswith("ModelVersion fraud-a already serves version '1' of model fraud")
    assert mv["status"]["servingTraffic"] == 0
    assert cluster.get(DEPLOYMENTS, "fraud-b") is None and cluster.get(SERVICES, "fraud-b") is None
    after = versions(cluster)
    assert {k: v for k, v in after.items() if k != "mv/fraud-b"} == before  # nothing of fraud-a changed

    # Deleting the original lets the newer one serve: it is no longer a duplicate.
    await cluster.delete(MV, "fraud-a")
    await wait_for(
        lambda: ((cluster.get(MV, "fraud-b") or {}).get("status") or {}).get("servingTraffic") == 100,
        timeout=60,
        message="fraud-b serving once fraud-a is gone",
    )


async def test_an_image_that_cannot_be_pulled_fails_the_version_with_the_kubelets_reason(
    cluster: Cluster, workloads: SimulatedWorkloads, operator
) -> None:
    await cluster.apply(model_version("fraud-v1", "fraud", "1", URI, runtimeImage=f"{IMAGE}:missing"))
    await wait_for_phase(cluster, "fraud-v1", "Failed", timeout=30)
    ready = condition(cluster, "fraud-v1", "Ready")
    assert ready["reason"] in ("ErrImagePull", "ImagePullBackOff")
    assert ready["message"].startswith("pod fraud-v1-") and f"{IMAGE}:missing" in ready["message"]
    await wait_for(
        lambda: condition(cluster, "fraud-v1", "Available")["reason"] == "ImagePullBackOff",
        timeout=30,
        message="the back-off reaches the conditions",
    )

    # A fixed image serves.
    await cluster.patch_spec("fraud-v1", {"runtimeImage": f"{IMAGE}:0.2.0"})
    await wait_for_phase(cluster, "fraud-v1", "Ready", timeout=30)


async def test_a_quota_that_forbids_the_pods_fails_the_version_with_the_api_servers_message(
    cluster: Cluster, workloads: SimulatedWorkloads, operator
) -> None:
    quota = {"metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}}
    await cluster.client.create("", "v1", "resourcequotas", "ml", quota)
    await cluster.apply(model_version("fraud-v1", "fraud", "1", URI))
    await wait_for_phase(cluster, "fraud-v1", "Failed", timeout=30)
    ready = condition(cluster, "fraud-v1", "Ready")
    assert ready["reason"] == "ReplicaFailure" and "exceeded quota: no-pods" in ready["message"]


async def test_a_rollout_past_its_progress_deadline_fails_the_version(
    cluster: Cluster, workloads: SimulatedWorkloads, clock: Clock, operator
) -> None:
    workloads.hold("ml", "fraud-v1")  # its pods never become ready
    await cluster.apply(model_version("fraud-v1", "fraud", "1", URI))
    await wait_for(lambda: cluster.get(DEPLOYMENTS, "fraud-v1") is not None, timeout=30, message="the Deployment")
    deadline = int(cluster.get(DEPLOYMENTS, "fraud-v1")["spec"]["progressDeadlineSeconds"])
    clock.now += deadline + 1
    workloads.tick()
    await wait_for_phase(cluster, "fraud-v1", "Failed", timeout=30)
    ready = condition(cluster, "fraud-v1", "Ready")
    assert ready["reason"] == "ProgressDeadlineExceeded" and ready["message"].endswith("has timed out progressing.")


def _scale(cluster: Cluster, name: str) -> dict[str, Any]:
    mv = cluster.get(MV, name) or {}
    return {"spec": mv["spec"].get("replicas"), "status": (mv.get("status") or {}).get("fullShareReplicas")}


async def test_the_scale_subresource_counts_replicas_at_a_full_share_on_both_sides(
    cluster: Cluster, workloads: SimulatedWorkloads, operator
) -> None:
    await cluster.apply(model_version("fraud-v1", "fraud", "1", URI, replicas=4, traffic=50))
    await cluster.apply(model_version("fraud-v2", "fraud", "2", URI, replicas=4, traffic=50))
    await wait_for(
        lambda: (
            [(cluster.get(DEPLOYMENTS, n) or {}).get("spec", {}).get("replicas") for n in ("fraud-v1", "fraud-v2")]
            == [2, 2]
            and all(_scale(cluster, n) == {"spec": 4, "status": 4} for n in ("fraud-v1", "fraud-v2"))
        ),
        timeout=60,
        message=lambda: (
            f"2 pods each at 50%, 4 at full share; {[_scale(cluster, n) for n in ('fraud-v1', 'fraud-v2')]}"
        ),
    )
