"""Writes that converge (issue 10, point 3): what the operator applies is what the objects become,
defaults and canonical quantities never cause a write, and a name someone else holds is left alone.

The operator runs with its default resync (300 s). A reconcile that a resync would start is started
here by an event instead (a change of a ModelVersion's annotations: the same reconcile, from the
cache); the operator's own /metrics say when it ran.
"""

from __future__ import annotations

import dataclasses
import socket
from typing import Any

import pytest

from modelfleet_operator.config import OperatorConfig
from tests.integration.harness.cluster import DEPLOYMENTS, MV, SERVICES, Cluster
from tests.integration.harness.kubelet import DeploymentController
from tests.integration.harness.operator import InProcessOperator
from tests.integration.model_versions import LOCAL_SOURCES, ModelFile, condition, model_version, wait_for_phase
from tests.integration.steady_load import operator_metric
from tests.support.polling import wait_for

WRITES = ("create", "patch", "update", "delete")
RECONCILES = "modelfleet_operator_reconciles_total"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def metrics_port() -> int:
    return free_port()


@pytest.fixture
def operator_config(metrics_port: int) -> OperatorConfig:
    return OperatorConfig(
        namespaces=("ml",), standalone=True, allowed_uri_schemes=LOCAL_SOURCES, metrics_port=metrics_port
    )


def operator_writes(cluster: Cluster, since: int = 0) -> list[tuple[str, str, Any]]:
    """(method, path, body) of every write the operator made since the `since`-th request."""
    emulator = cluster.emulator
    return [
        (full.method.value, full.url.path, full.data)
        for r, full in zip(emulator.recorded[since:], emulator.recorded_requests[since:], strict=True)
        if r.verb in WRITES
    ]


def container(cluster: Cluster, name: str) -> dict[str, Any]:
    return cluster.get(DEPLOYMENTS, name)["spec"]["template"]["spec"]["containers"][0]


async def reconciled(cluster: Cluster, url: str, name: str, touch: int) -> None:
    """Start one reconcile of `name`'s model with an event (a new annotation) and wait until it ran."""
    before = await operator_metric(url, RECONCILES, outcome="ok")
    await cluster.client.merge_patch(
        *MV, cluster.namespace, name, {"metadata": {"annotations": {"example.com/touched": str(touch)}}}
    )

    async def ran() -> bool:
        return await operator_metric(url, RECONCILES, outcome="ok") > before

    await wait_for(ran, timeout=30, message=f"a reconcile after touch {touch}")


async def test_removing_limits_from_the_spec_removes_them_from_the_deployment(
    cluster: Cluster, kubelet: DeploymentController, operator: InProcessOperator, demo_model: ModelFile
) -> None:
    resources = {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi", "cpu": 2}}
    await cluster.apply(model_version("fraud-v1", "fraud", "1", demo_model.uri, resources=resources))
    await wait_for_phase(cluster, "fraud-v1", "Ready")
    assert container(cluster, "fraud-v1")["resources"]["limits"] == {"memory": "1Gi", "cpu": "2"}

    await cluster.patch_spec("fraud-v1", {"resources": {"limits": None}})
    await wait_for(
        lambda: "limits" not in container(cluster, "fraud-v1")["resources"],
        timeout=30,
        message=lambda: f"limits removed; resources now {container(cluster, 'fraud-v1')['resources']}",
    )
    assert container(cluster, "fraud-v1")["resources"] == {"requests": {"cpu": "250m", "memory": "256Mi"}}
    await wait_for_phase(cluster, "fraud-v1", "Ready")


async def test_an_unchanged_spec_with_quantities_the_server_rewrites_is_never_written_again(
    cluster: Cluster,
    kubelet: DeploymentController,
    operator: InProcessOperator,
    demo_model: ModelFile,
    metrics_port: int,
) -> None:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    resources = {"requests": {"cpu": 1, "memory": "1024Mi"}, "limits": {"memory": "1024Mi"}}
    await cluster.apply(model_version("fraud-v1", "fraud", "1", demo_model.uri, resources=resources))
    await wait_for_phase(cluster, "fraud-v1", "Ready")
    await wait_for(
        lambda: cluster.get(MV, "fraud-v1")["status"].get("servingTraffic") == 100,
        timeout=30,
        message="the version to take all traffic",
    )
    # The API server stored the canonical forms, which differ from what the spec says.
    stored = container(cluster, "fraud-v1")["resources"]
    assert stored == {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "1Gi"}}

    start = len(cluster.emulator.recorded)
    for touch in range(3):
        await reconciled(cluster, url, "fraud-v1", touch)
    assert operator_writes(cluster, start) == []

    # A restart lists everything again and reconciles it from scratch: still nothing to write. (A killed
    # in-process operator keeps its listening socket until collected: the new one gets a port of its own.)
    await operator.kill()
    operator.config = dataclasses.replace(operator.config, metrics_port=free_port())
    start = len(cluster.emulator.recorded)
    await operator.start()
    url = f"http://127.0.0.1:{operator.config.metrics_port}/metrics"
    await reconciled(cluster, url, "fraud-v1", 3)
    assert operator_writes(cluster, start) == []


async def test_a_service_named_like_the_model_that_another_controller_owns_fails_the_version_untouched(
    cluster: Cluster, kubelet: DeploymentController, operator: InProcessOperator, demo_model: ModelFile
) -> None:
    foreign = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "fraud", "labels": {"app.kubernetes.io/managed-by": "Helm", "app": "fraud-legacy"}},
        "spec": {"selector": {"app": "fraud-legacy"}, "ports": [{"name": "http", "port": 80, "targetPort": 9000}]},
    }
    await cluster.client.create(*SERVICES, cluster.namespace, foreign)
    before = cluster.get(SERVICES, "fraud")

    await cluster.apply(model_version("fraud-v1", "fraud", "1", demo_model.uri))
    mv = await wait_for_phase(cluster, "fraud-v1", "Failed")
    ready = condition(cluster, "fraud-v1", "Ready")
    assert ready["reason"] == "ObjectConflict"
    assert ready["message"].startswith(
        "Service ml/fraud is managed by Helm; it would be the shared Service of model fraud"
    )
    assert mv["status"]["servingTraffic"] == 0
    assert cluster.get(SERVICES, "fraud") == before  # not one field changed, not even its resourceVersion
    assert cluster.get(DEPLOYMENTS, "fraud-v1") is None and cluster.get(SERVICES, "fraud-v1") is None

    # Once the other Service is gone, the version serves (the conflict is looked at again).
    await cluster.client.delete(*SERVICES, cluster.namespace, "fraud")
    await wait_for_phase(cluster, "fraud-v1", "Ready", timeout=120)
    assert cluster.get(SERVICES, "fraud")["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "modelfleet-operator"
