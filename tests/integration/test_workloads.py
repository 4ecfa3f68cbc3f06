"""The process-less workload controller (harness.workloads) plays Deployments, Pods and EndpointSlices."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.integration.harness.client import resource_path
from tests.integration.harness.cluster import Cluster
from tests.integration.harness.rawapi import MERGE, RawApi
from tests.integration.harness.workloads import SimulatedWorkloads
from tests.support.polling import wait_for

DEPLOYMENTS = ("apps", "v1", "deployments")
SERVICES = ("", "v1", "services")
SLICES = ("discovery.k8s.io", "v1", "endpointslices")


@pytest.fixture
async def workloads(cluster: Cluster) -> AsyncIterator[SimulatedWorkloads]:
    async with SimulatedWorkloads(cluster.emulator) as running:
        yield running
    assert not running.errors, running.errors


@pytest.fixture
async def api(cluster: Cluster) -> AsyncIterator[RawApi]:
    async with RawApi(cluster.url) as raw:
        yield raw


def deployment(name: str, replicas: int, image: str = "runtime:1") -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, "model": "fraud"}},
                "spec": {
                    "containers": [
                        {"name": "runtime", "image": image, "ports": [{"name": "http", "containerPort": 8080}]}
                    ]
                },
            },
        },
    }


def status(cluster: Cluster, name: str) -> dict[str, Any]:
    return (cluster.get(DEPLOYMENTS, name) or {}).get("status") or {}


def ready_addresses(cluster: Cluster, service: str) -> list[str]:
    eps = cluster.get(SLICES, service + "-simulated") or {}
    return sorted(a for e in eps.get("endpoints") or [] if e["conditions"]["ready"] for a in e["addresses"])


async def test_a_deployment_becomes_available_and_follows_its_scale(
    cluster: Cluster, workloads: SimulatedWorkloads, api: RawApi
) -> None:
    await api.call("POST", resource_path(*DEPLOYMENTS, "ml"), deployment("fraud-v1", 2))
    await wait_for(lambda: status(cluster, "fraud-v1").get("availableReplicas") == 2, timeout=10, message="2 available")
    dep = cluster.get(DEPLOYMENTS, "fraud-v1")
    assert status(cluster, "fraud-v1")["observedGeneration"] == dep["metadata"]["generation"]
    pods = cluster.list(("", "v1", "pods"))
    assert len(pods) == 2 and len({p["status"]["podIP"] for p in pods}) == 2
    assert all(p["status"]["podIP"].startswith("127.") for p in pods)
    assert all(p["metadata"]["ownerReferences"][0]["uid"] == dep["metadata"]["uid"] for p in pods)

    await api.call(
        "PATCH", resource_path(*DEPLOYMENTS, "ml", "fraud-v1"), {"spec": {"replicas": 3}}, content_type=MERGE
    )
    await wait_for(lambda: status(cluster, "fraud-v1").get("readyReplicas") == 3, timeout=10, message="3 ready")
    await api.call(
        "PATCH", resource_path(*DEPLOYMENTS, "ml", "fraud-v1"), {"spec": {"replicas": 0}}, content_type=MERGE
    )
    await wait_for(lambda: not cluster.list(("", "v1", "pods")), timeout=10, message="no pods at 0 replicas")
    assert status(cluster, "fraud-v1")["replicas"] == 0


async def test_a_service_gets_the_ready_addresses_of_the_pods_its_selector_selects(
    cluster: Cluster, workloads: SimulatedWorkloads, api: RawApi
) -> None:
    workloads.hold("ml", "fraud-v2")
    for name, replicas in (("fraud-v1", 2), ("fraud-v2", 1), ("churn-v1", 1)):
        manifest = deployment(name, replicas)
        if name.startswith("churn"):
            manifest["spec"]["template"]["metadata"]["labels"]["model"] = "churn"
        await api.call("POST", resource_path(*DEPLOYMENTS, "ml"), manifest)
    svc = {
        "metadata": {"name": "fraud"},
        "spec": {"selector": {"model": "fraud"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }
    await api.call("POST", resource_path(*SERVICES, "ml"), svc)
    fraud_v1 = lambda: sorted(p.address for p in workloads.pods_of("ml", "fraud-v1"))  # noqa: E731
    await wait_for(lambda: len(ready_addresses(cluster, "fraud")) == 2, timeout=10, message="fraud-v1's two pods")
    assert ready_addresses(cluster, "fraud") == fraud_v1()  # the held canary is selected but not ready
    eps = cluster.get(SLICES, "fraud-simulated")
    assert len(eps["endpoints"]) == 3 and eps["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    assert status(cluster, "fraud-v2").get("availableReplicas") == 0
    workloads.release("ml", "fraud-v2")
    await wait_for(lambda: len(ready_addresses(cluster, "fraud")) == 3, timeout=10, message="the canary ready")
    assert status(cluster, "fraud-v2")["availableReplicas"] == 1


async def test_a_template_change_replaces_the_pods(
    cluster: Cluster, workloads: SimulatedWorkloads, api: RawApi
) -> None:
    await api.call("POST", resource_path(*DEPLOYMENTS, "ml"), deployment("fraud-v1", 2))
    await wait_for(lambda: status(cluster, "fraud-v1").get("availableReplicas") == 2, timeout=10, message="available")
    before = {p.name for p in workloads.pods_of("ml", "fraud-v1")}
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "runtime", "image": "runtime:2"}]}}}}
    await api.call("PATCH", resource_path(*DEPLOYMENTS, "ml", "fraud-v1"), patch, content_type=MERGE)
    await wait_for(
        lambda: (
            status(cluster, "fraud-v1").get("updatedReplicas") == 2 and status(cluster, "fraud-v1").get("replicas") == 2
        ),
        timeout=10,
        message="two new pods, no old ones",
    )
    assert not before & {p["metadata"]["name"] for p in cluster.list(("", "v1", "pods"))}


async def test_a_thousand_deployments_become_available(cluster: Cluster, workloads: SimulatedWorkloads) -> None:
    """Not a timing assertion: it prints how long the controller and the emulator take, for the benchmark's reader."""
    started = time.monotonic()
    for namespace in ("ml",):
        for i in range(1000):
            await cluster.emulator.write_local("POST", *DEPLOYMENTS, namespace, None, deployment(f"m{i}-v1", 1))
    created = time.monotonic()
    await wait_for(
        lambda: (
            sum(
                (d.get("status") or {}).get("availableReplicas") == 1
                for d in cluster.emulator.live_objects(*DEPLOYMENTS)
            )
            == 1000
        ),
        timeout=240,
        interval=0.5,
        message="1,000 Deployments available",
    )
    done = time.monotonic()
    print(
        f"\n1000 Deployments: created in {created - started:.1f}s, all available {done - created:.1f}s later, "
        f"{workloads.writes} writes by the controller"
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def condition(cluster: Cluster, name: str, kind: str) -> dict[str, Any] | None:
    return next((c for c in status(cluster, name).get("conditions") or [] if c["type"] == kind), None)


async def test_a_quota_that_forbids_more_pods_is_a_replica_failure(cluster: Cluster, api: RawApi) -> None:
    quota = {"metadata": {"name": "pods"}, "spec": {"hard": {"pods": "1"}}}
    await api.call("POST", resource_path("", "v1", "resourcequotas", "ml"), quota)
    async with SimulatedWorkloads(cluster.emulator) as workloads:
        await api.call("POST", resource_path(*DEPLOYMENTS, "ml"), deployment("fraud-v1", 2))
        await wait_for(
            lambda: condition(cluster, "fraud-v1", "ReplicaFailure"), timeout=10, message="a ReplicaFailure condition"
        )
        failure = condition(cluster, "fraud-v1", "ReplicaFailure")
        assert failure["status"] == "True" and failure["reason"] == "FailedCreate"
        assert "exceeded quota: pods" in failure["message"]
        assert status(cluster, "fraud-v1")["readyReplicas"] == 1
        assert condition(cluster, "fraud-v1", "Available")["status"] == "False"
        # The quota grows: the controller's retry creates the pod and the failure goes.
        await api.call(
            "PATCH",
            resource_path("", "v1", "resourcequotas", "ml", "pods"),
            {"spec": {"hard": {"pods": "5"}}},
            content_type=MERGE,
        )
        await wait_for(
            lambda: (
                condition(cluster, "fraud-v1", "ReplicaFailure") is None
                and status(cluster, "fraud-v1").get("readyReplicas") == 2
            ),
            timeout=10,
            message="two ready pods and no failure",
        )
    assert not workloads.errors, workloads.errors


async def test_a_deployment_that_does_not_progress_in_time_exceeds_its_deadline(cluster: Cluster, api: RawApi) -> None:
    clock = Clock()
    async with SimulatedWorkloads(cluster.emulator, clock=clock) as workloads:
        workloads.hold("ml", "fraud-v1")
        manifest = deployment("fraud-v1", 1)
        manifest["spec"]["progressDeadlineSeconds"] = 60
        await api.call("POST", resource_path(*DEPLOYMENTS, "ml"), manifest)
        await wait_for(lambda: condition(cluster, "fraud-v1", "Progressing"), timeout=10, message="Progressing")
        assert condition(cluster, "fraud-v1", "Progressing")["reason"] == "ReplicaSetUpdated"
        clock.now += 61
        workloads.tick()
        await wait_for(
            lambda: condition(cluster, "fraud-v1", "Progressing")["status"] == "False", timeout=10, message="deadline"
        )
        progressing = condition(cluster, "fraud-v1", "Progressing")
        assert progressing["reason"] == "ProgressDeadlineExceeded"
        assert progressing["message"].endswith("has timed out progressing.")
    assert not workloads.errors, workloads.errors


async def test_an_image_that_cannot_be_pulled_leaves_its_pods_waiting(cluster: Cluster, api: RawApi) -> None:
    async with SimulatedWorkloads(cluster.emulator, pullable=lambda image: image.startswith("runtime:")) as workloads:
        await api.call("POST", resource_path(*DEPLOYMENTS, "ml"), deployment("fraud-v1", 1, image="elsewhere.io/x:1"))

        def waiting() -> str | None:
            pods = cluster.list(("", "v1", "pods"))
            statuses = [cs for p in pods for cs in (p.get("status") or {}).get("containerStatuses") or []]
            return statuses[0]["state"].get("waiting", {}).get("reason") if statuses else None

        await wait_for(lambda: waiting() == "ImagePullBackOff", timeout=10, message="ErrImagePull, then back-off")
        [pod] = cluster.list(("", "v1", "pods"))
        assert pod["status"]["containerStatuses"][0]["ready"] is False
        assert status(cluster, "fraud-v1").get("readyReplicas") == 0
    assert not workloads.errors, workloads.errors
