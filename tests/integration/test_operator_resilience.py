"""The operator converges whatever happens to it: restarts midway, API errors, nothing to do."""

from __future__ import annotations

from tests.integration.harness.cluster import DEPLOYMENTS, MV, SERVICES, Cluster
from tests.integration.harness.kubelet import DeploymentController
from tests.integration.harness.operator import InProcessOperator
from tests.integration.model_versions import ModelFile, model_version, wait_for_phase
from tests.support.polling import wait_for

WRITES = ("create", "patch", "update", "delete")


def operator_writes(cluster: Cluster, since: int = 0) -> list:
    """(method, path, body) of every write the operator made since the `since`-th request."""
    emulator = cluster.emulator
    return [
        (full.method.value, full.url.path, full.data)
        for r, full in zip(emulator.recorded[since:], emulator.recorded_requests[since:], strict=True)
        if r.verb in WRITES
    ]


def reads_of(cluster: Cluster, resource: str, since: int) -> int:
    return len([r for r in cluster.emulator.recorded[since:] if r.verb == "get" and r.resource == resource])


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
    assert [d["metadata"]["name"] for d in cluster.list(DEPLOYMENTS)] == ["fraud-v1"]
    assert sorted(s["metadata"]["name"] for s in cluster.list(SERVICES)) == ["fraud", "fraud-v1"]
    assert mv["metadata"]["finalizers"].count("serving.modelfleet.dev/finalizer") == 1
    env = {
        e["name"]: e["value"]
        for e in cluster.get(DEPLOYMENTS, "fraud-v1")["spec"]["template"]["spec"]["containers"][0]["env"]
        if "value" in e
    }
    assert env["MODELFLEET_MAX_BATCH_SIZE"] == "4"
    await wait_for(lambda: len(kubelet.pods_of("ml", "fraud-v1")) == 2, timeout=30, message="two pods, no more")


async def test_reconciling_unchanged_input_writes_nothing(
    cluster: Cluster,
    kubelet: DeploymentController,
    operator: InProcessOperator,
    demo_model: ModelFile,
) -> None:
    await cluster.apply(model_version("fraud-v1", "fraud", "1", demo_model.uri))
    await wait_for_phase(cluster, "fraud-v1", "Ready")
    # Let the status settle (a Ready version takes its traffic share next), then watch the timer work.
    await wait_for(
        lambda: cluster.get(MV, "fraud-v1")["status"].get("servingTraffic") == 100,
        timeout=30,
        message="the version to take all traffic",
    )
    start = len(cluster.emulator.recorded)
    await wait_for(
        lambda: reads_of(cluster, "deployments", start) >= 5, timeout=30, message="five more reconciliations"
    )
    assert operator_writes(cluster, start) == []

    # A restart re-reads everything and still writes nothing.
    await operator.restart()
    start = len(cluster.emulator.recorded)
    await wait_for(
        lambda: reads_of(cluster, "deployments", start) >= 3, timeout=30, message="reconciliations after the restart"
    )
    assert operator_writes(cluster, start) == []


async def test_api_errors_are_retried_until_the_version_serves(
    cluster: Cluster,
    kubelet: DeploymentController,
    operator: InProcessOperator,
    demo_model: ModelFile,
) -> None:
    faults = [
        cluster.emulator.inject_error(500, verb="patch", plural="modelversions", subresource=""),  # kopf's finalizer
        cluster.emulator.inject_error(500, verb="create", plural="deployments"),
        cluster.emulator.inject_error(409, verb="create", plural="services"),
        cluster.emulator.inject_error(
            429, verb="patch", plural="modelversions", subresource="status", retry_after=1, times=2
        ),
        cluster.emulator.inject_error(503, verb="list", plural="pods"),
    ]
    await cluster.apply(model_version("fraud-v1", "fraud", "1", demo_model.uri))

    await wait_for_phase(cluster, "fraud-v1", "Ready")
    assert [f.hits for f in faults] == [1, 1, 1, 2, 1]
    assert [d["metadata"]["name"] for d in cluster.list(DEPLOYMENTS)] == ["fraud-v1"]
    assert sorted(s["metadata"]["name"] for s in cluster.list(SERVICES)) == ["fraud", "fraud-v1"]
    assert len(kubelet.pods_of("ml", "fraud-v1")) == 1


async def test_a_version_deleted_while_the_operator_is_down_is_released_on_start(
    cluster: Cluster,
    kubelet: DeploymentController,
    operator: InProcessOperator,
    demo_model: ModelFile,
) -> None:
    await cluster.apply(model_version("fraud-v1", "fraud", "1", demo_model.uri))
    await wait_for_phase(cluster, "fraud-v1", "Ready")
    await operator.kill()
    await cluster.delete(MV, "fraud-v1")
    assert cluster.get(MV, "fraud-v1") is not None  # held by the finalizer
    await operator.start()
    await wait_for(lambda: cluster.get(MV, "fraud-v1") is None, timeout=30, message="the finalizer to be removed")
    await wait_for(
        lambda: not cluster.list(DEPLOYMENTS) and not cluster.list(SERVICES),
        timeout=30,
        message="children garbage-collected",
    )
