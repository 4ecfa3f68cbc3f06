"""The test kubelet says why pods do not run, as a real kubelet and Deployment controller do.

Container waiting reasons (ErrImagePull then ImagePullBackOff for an image the
harness cannot pull, CrashLoopBackOff with restartCount and lastState.terminated
for a process that keeps exiting) and the Deployment conditions Progressing
(ProgressDeadlineExceeded) and ReplicaFailure (FailedCreate), as documented in
https://kubernetes.io/docs/concepts/workloads/controllers/deployment/#deployment-status
and https://kubernetes.io/docs/concepts/workloads/pods/pod-lifecycle/#container-states.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.integration.harness.client import resource_path
from tests.integration.harness.cluster import DEPLOYMENTS, PODS, Cluster
from tests.integration.harness.kubelet import DeploymentController, runtime_image_pullable
from tests.integration.harness.rawapi import RawApi
from tests.support.polling import wait_for

RUNTIME = "ghcr.io/modelfleet/runtime:0.1.0"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def api(cluster: Cluster) -> AsyncIterator[RawApi]:
    async with RawApi(cluster.url) as raw:
        yield raw


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def kubelet(cluster: Cluster, clock: Clock) -> AsyncIterator[DeploymentController]:
    async with DeploymentController(cluster.emulator, cluster.client, cluster.volumes, clock=clock) as running:
        yield running
    assert not running.errors, running.errors


def deployment(name: str, image: str, replicas: int = 1, **container: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "progressDeadlineSeconds": 60,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": image, **container}]},
            },
        },
    }


def container_state(cluster: Cluster) -> dict[str, Any]:
    statuses = [cs for p in cluster.list(PODS) for cs in (p.get("status") or {}).get("containerStatuses") or []]
    return statuses[0] if statuses else {}


def condition(cluster: Cluster, name: str, kind: str) -> dict[str, Any]:
    status = (cluster.get(DEPLOYMENTS, name) or {}).get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


def test_only_the_runtime_image_can_be_pulled() -> None:
    assert runtime_image_pullable(RUNTIME)
    assert runtime_image_pullable("ghcr.io/modelfleet/runtime@sha256:" + "a" * 64)
    assert not runtime_image_pullable("docker.io/library/nginx:1.27")
    assert not runtime_image_pullable("ghcr.io/modelfleet/runtime-evil:0.1.0")


async def test_an_image_the_harness_cannot_pull_waits_in_image_pull_back_off(
    cluster: Cluster, api: RawApi, kubelet: DeploymentController
) -> None:
    await api.call("POST", resource_path(*DEPLOYMENTS, "ml"), deployment("web", "docker.io/library/nginx:1.27"))
    await wait_for(
        lambda: container_state(cluster).get("state", {}).get("waiting", {}).get("reason") == "ImagePullBackOff",
        timeout=10,
        message="ErrImagePull, then ImagePullBackOff",
    )
    waiting = container_state(cluster)["state"]["waiting"]
    assert waiting["message"] == 'Back-off pulling image "docker.io/library/nginx:1.27"'
    assert container_state(cluster)["ready"] is False
    [pod] = kubelet.pods_of("ml", "web")
    assert pod.process is None  # nothing ran
    assert condition(cluster, "web", "Available")["status"] == "False"


async def test_a_process_that_keeps_exiting_is_in_crash_loop_back_off_with_its_last_termination(
    cluster: Cluster, api: RawApi, kubelet: DeploymentController
) -> None:
    crash = [sys.executable, "-c", "import sys; print('model file is corrupt'); sys.exit(3)"]
    await api.call("POST", resource_path(*DEPLOYMENTS, "ml"), deployment("crash", RUNTIME, command=crash))

    def crash_looping() -> bool:
        status = container_state(cluster)
        return status.get("restartCount", 0) >= 2 and "waiting" in status.get("state", {})

    await wait_for(crash_looping, timeout=30, message="two restarts and a back-off")
    status = container_state(cluster)
    assert status["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert status["state"]["waiting"]["message"].startswith("back-off ")
    terminated = status["lastState"]["terminated"]
    assert terminated["exitCode"] == 3 and terminated["reason"] == "Error"
    assert "model file is corrupt" in terminated["message"]


async def test_a_rollout_that_does_not_progress_in_time_exceeds_its_progress_deadline(
    cluster: Cluster, api: RawApi, kubelet: DeploymentController, clock: Clock
) -> None:
    await api.call("POST", resource_path(*DEPLOYMENTS, "ml"), deployment("stuck", "docker.io/library/nginx:1.27"))
    await wait_for(lambda: condition(cluster, "stuck", "Progressing"), timeout=10, message="Progressing")
    assert condition(cluster, "stuck", "Progressing")["reason"] == "ReplicaSetUpdated"
    clock.now += 61  # past spec.progressDeadlineSeconds since the last progress
    await wait_for(
        lambda: condition(cluster, "stuck", "Progressing").get("status") == "False", timeout=10, message="deadline"
    )
    progressing = condition(cluster, "stuck", "Progressing")
    assert progressing["reason"] == "ProgressDeadlineExceeded"
    assert progressing["message"].endswith("has timed out progressing.")


async def test_a_quota_that_forbids_pods_is_a_replica_failure(
    cluster: Cluster, api: RawApi, kubelet: DeploymentController, clock: Clock
) -> None:
    await api.call(
        "POST",
        resource_path("", "v1", "resourcequotas", "ml"),
        {"metadata": {"name": "two"}, "spec": {"hard": {"pods": "1"}}},
    )
    await api.call(
        "POST", resource_path(*DEPLOYMENTS, "ml"), deployment("wide", "docker.io/library/nginx:1.27", replicas=2)
    )
    await wait_for(lambda: condition(cluster, "wide", "ReplicaFailure"), timeout=10, message="ReplicaFailure")
    failure = condition(cluster, "wide", "ReplicaFailure")
    assert failure["status"] == "True" and failure["reason"] == "FailedCreate"
    assert failure["message"].startswith('pods "wide-') and "exceeded quota: two" in failure["message"]
    assert len(kubelet.pods_of("ml", "wide")) == 1
    # Room again: the next retry creates the pod and the failure goes.
    await api.call("DELETE", resource_path("", "v1", "resourcequotas", "ml", "two"))
    clock.now += 2
    await wait_for(lambda: not condition(cluster, "wide", "ReplicaFailure"), timeout=10, message="no failure")
    assert len(kubelet.pods_of("ml", "wide")) == 2
