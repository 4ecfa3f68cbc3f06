"""A ModelVersion's life on the emulated cluster, with the real operator and real runtime processes."""

from __future__ import annotations

import copy
from pathlib import Path

import aiohttp
import numpy as np
import onnxruntime
import pytest
import yaml

from modelfleet_operator.config import OperatorConfig
from tests.integration.harness.cluster import DEPLOYMENTS, HPAS, MV, PDBS, PODS, SERVICES, Cluster
from tests.integration.harness.kubelet import DeploymentController
from tests.integration.model_versions import LOCAL_SOURCES, ModelFile, condition, model_version, phase, wait_for_phase
from tests.support.paths import EXAMPLES
from tests.support.polling import wait_for


@pytest.fixture
def operator_config() -> OperatorConfig:
    # A version that hands its traffic over keeps its pods this long; the resync stays the default.
    return OperatorConfig(
        namespaces=("ml",),
        standalone=True,
        allowed_uri_schemes=LOCAL_SOURCES,
        log_level="debug",
        scale_down_delay_seconds=2,
    )


def minimal_example(model: ModelFile) -> dict:
    """examples/minimal.yaml, with its source pointing at the demo model on this machine."""
    manifest = yaml.safe_load((EXAMPLES / "minimal.yaml").read_text())
    manifest = copy.deepcopy(manifest)
    manifest["spec"]["source"] = {"uri": model.uri, "sha256": model.sha256}
    return manifest


def ready_pods(kubelet: DeploymentController, deployment: str) -> list:
    return [p for p in kubelet.pods_of("ml", deployment) if p.ready]


async def predict(address: str, port: int, features: list[float]) -> dict:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://{address}:{port}/predict", json={"features": features}) as response,
    ):
        assert response.status == 200, await response.text()
        return await response.json()


async def test_minimal_example_becomes_ready_and_serves_predictions_like_onnxruntime(
    cluster: Cluster,
    kubelet: DeploymentController,
    operator,
    demo_model: ModelFile,
) -> None:
    manifest = minimal_example(demo_model)
    name, model = manifest["metadata"]["name"], manifest["spec"]["model"]
    await cluster.apply(manifest)

    mv = await wait_for_phase(cluster, name, "Ready")
    assert mv["status"]["readyReplicas"] == 1
    assert mv["status"]["observedGeneration"] == mv["metadata"]["generation"]
    assert condition(cluster, name, "ModelLoaded")["status"] == "True"
    assert mv["status"]["endpoint"] == f"http://{model}.ml.svc.cluster.local"
    assert mv["status"]["versionEndpoint"] == f"http://{name}.ml.svc.cluster.local"

    # The children, owned by the version; the model's Service by every live version.
    deployment = cluster.get(DEPLOYMENTS, name)
    assert deployment is not None and deployment["metadata"]["ownerReferences"][0]["uid"] == mv["metadata"]["uid"]
    assert {s["metadata"]["name"] for s in cluster.owned_by(SERVICES, mv)} == {name, model}
    assert cluster.owned_by(PDBS, mv) == []  # one replica: no PodDisruptionBudget

    # The runtime runs from the manifest, on its own address, and answers like onnxruntime.
    [pod] = ready_pods(kubelet, name)
    assert cluster.get(PODS, pod.name)["status"]["podIP"] == pod.address
    features = [0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 0.7, -0.8]
    answer = await predict(pod.address, pod.port("http"), features)
    session = onnxruntime.InferenceSession(str(demo_model.path))
    expected = session.run(None, {session.get_inputs()[0].name: np.array([features], dtype=np.float32)})[0]
    assert answer["model_version"] == manifest["spec"]["version"]
    assert np.allclose(answer["prediction"], expected.ravel()[0], rtol=1e-5)


async def test_changing_batching_and_replicas_updates_the_one_deployment(
    cluster: Cluster,
    kubelet: DeploymentController,
    operator,
    demo_model: ModelFile,
) -> None:
    await cluster.apply(model_version("fraud-v1", "fraud", "1", demo_model.uri))
    await wait_for_phase(cluster, "fraud-v1", "Ready")
    first_uid = cluster.get(DEPLOYMENTS, "fraud-v1")["metadata"]["uid"]

    await cluster.patch_spec("fraud-v1", {"replicas": 2, "batching": {"maxBatchSize": 8, "maxLatencyMs": 5}})

    def rolled_out() -> bool:
        mv = cluster.get(MV, "fraud-v1")
        status = mv.get("status") or {}
        return (
            status.get("phase") == "Ready"
            and status.get("readyReplicas") == 2
            and status.get("observedGeneration") == mv["metadata"]["generation"]
        )

    await wait_for(rolled_out, timeout=90, message=lambda: f"{cluster.get(MV, 'fraud-v1').get('status')}")
    [deployment] = cluster.list(DEPLOYMENTS)
    assert deployment["metadata"]["uid"] == first_uid
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MODELFLEET_MAX_BATCH_SIZE"] == "8" and env["MODELFLEET_MAX_LATENCY_MS"] == "5"
    assert deployment["spec"]["replicas"] == 2
    assert cluster.get(PDBS, "fraud-v1") is not None  # more than one replica: a disruption budget
    # Every running pod runs the new settings.
    assert len(ready_pods(kubelet, "fraud-v1")) == 2
    for pod in ready_pods(kubelet, "fraud-v1"):
        _, pod_env = pod.command_line()
        assert pod_env["MODELFLEET_MAX_BATCH_SIZE"] == "8"


async def test_sha256_mismatch_fails_with_the_runtimes_reason(
    cluster: Cluster,
    kubelet: DeploymentController,
    operator,
    demo_model: ModelFile,
) -> None:
    wrong = "0" * 64
    await cluster.apply(
        model_version("fraud-v1", "fraud", "1", demo_model.uri, source={"uri": demo_model.uri, "sha256": wrong})
    )
    await wait_for_phase(cluster, "fraud-v1", "Failed")
    loaded = condition(cluster, "fraud-v1", "ModelLoaded")
    assert loaded["status"] == "False" and loaded["reason"] == "ModelLoadFailed"
    assert "sha256" in loaded["message"].lower()


async def test_missing_model_file_fails_with_the_runtimes_reason(
    cluster: Cluster,
    kubelet: DeploymentController,
    operator,
    tmp_path: Path,
) -> None:
    missing = (tmp_path / "nowhere" / "model.onnx").as_uri()
    await cluster.apply(model_version("fraud-v1", "fraud", "1", missing))
    await wait_for_phase(cluster, "fraud-v1", "Failed")
    message = condition(cluster, "fraud-v1", "ModelLoaded")["message"]
    assert "nowhere" in message or "not found" in message.lower() or "no such file" in message.lower()


class TestInputTheSchemaCannotCatch:
    @pytest.fixture
    def operator_config(self) -> OperatorConfig:
        return OperatorConfig(namespaces=("ml",), standalone=True, allowed_uri_schemes=("file", "pvc"))

    async def test_a_uri_scheme_the_operator_does_not_allow_fails_without_children(
        self,
        cluster: Cluster,
        kubelet: DeploymentController,
        operator,
    ) -> None:
        await cluster.apply(model_version("fraud-v1", "fraud", "1", "https://models.example.com/m.onnx"))
        await wait_for_phase(cluster, "fraud-v1", "Failed")
        ready = condition(cluster, "fraud-v1", "Ready")
        assert ready["reason"] == "UriSchemeNotAllowed" and "https://" in ready["message"]
        assert cluster.get(DEPLOYMENTS, "fraud-v1") is None and cluster.get(SERVICES, "fraud") is None

    async def test_fixing_a_rejected_spec_serves_it(
        self,
        cluster: Cluster,
        kubelet: DeploymentController,
        operator,
        demo_model: ModelFile,
    ) -> None:
        await cluster.apply(model_version("fraud-v1", "fraud", "1", "https://models.example.com/m.onnx"))
        await wait_for_phase(cluster, "fraud-v1", "Failed")
        await cluster.patch_spec("fraud-v1", {"source": {"uri": demo_model.uri}})
        await wait_for_phase(cluster, "fraud-v1", "Ready")


async def test_deleting_a_version_removes_its_children_and_finalizer(
    cluster: Cluster,
    kubelet: DeploymentController,
    operator,
    demo_model: ModelFile,
) -> None:
    await cluster.apply(model_version("fraud-v1", "fraud", "1", demo_model.uri))
    await wait_for_phase(cluster, "fraud-v1", "Ready")
    [pod] = ready_pods(kubelet, "fraud-v1")

    await cluster.delete(MV, "fraud-v1")

    await wait_for(lambda: cluster.get(MV, "fraud-v1") is None, timeout=30, message="the ModelVersion to go")
    await wait_for(
        lambda: not cluster.list(DEPLOYMENTS) and not cluster.list(SERVICES),
        timeout=30,
        message="children to be garbage-collected",
    )
    await wait_for(lambda: pod.exited() is not None, timeout=30, message="the runtime process to stop")


async def test_the_shared_service_stays_while_any_version_lives(
    cluster: Cluster,
    kubelet: DeploymentController,
    operator,
    demo_model: ModelFile,
) -> None:
    await cluster.apply(model_version("fraud-v1", "fraud", "1", demo_model.uri))
    await cluster.apply(model_version("fraud-v2", "fraud", "2", demo_model.uri))
    await wait_for_phase(cluster, "fraud-v1", "Ready")
    await wait_for_phase(cluster, "fraud-v2", "Ready")
    uids = {cluster.get(MV, n)["metadata"]["uid"] for n in ("fraud-v1", "fraud-v2")}
    await wait_for(
        lambda: {r["uid"] for r in cluster.get(SERVICES, "fraud")["metadata"]["ownerReferences"]} == uids,
        timeout=30,
        message="the shared Service owned by both versions",
    )

    await cluster.delete(MV, "fraud-v1")
    await wait_for(lambda: cluster.get(DEPLOYMENTS, "fraud-v1") is None, timeout=30, message="v1's Deployment gone")
    shared = cluster.get(SERVICES, "fraud")
    assert shared is not None
    assert {r["uid"] for r in shared["metadata"]["ownerReferences"]} == {cluster.get(MV, "fraud-v2")["metadata"]["uid"]}
    assert phase(cluster, "fraud-v2") == "Ready"


async def test_autoscaler_and_disruption_budget_come_and_go_with_the_spec(
    cluster: Cluster,
    kubelet: DeploymentController,
    operator,
    demo_model: ModelFile,
) -> None:
    autoscaled = {"replicas": 2, "autoscaling": {"minReplicas": 2, "maxReplicas": 4, "targetCPUUtilization": 60}}
    # No HPA controller runs here, so the version stays below minReplicas: only the children matter.
    mv = await cluster.apply(model_version("fraud-v1", "fraud", "1", demo_model.uri, **autoscaled))
    await wait_for(lambda: cluster.owned_by(HPAS, mv) and cluster.owned_by(PDBS, mv), timeout=60)
    [hpa] = cluster.owned_by(HPAS, mv)
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)

    # A merge patch with null removes autoscaling; one replica needs no disruption budget.
    await cluster.patch_spec("fraud-v1", {"autoscaling": None, "replicas": 1})
    await wait_for(lambda: not cluster.owned_by(HPAS, mv) and not cluster.owned_by(PDBS, mv), timeout=60)
    await wait_for_phase(cluster, "fraud-v1", "Ready")


async def test_a_version_requesting_two_cpus_runs_two_workers_that_serve(
    cluster: Cluster,
    kubelet: DeploymentController,
    operator,
    demo_model: ModelFile,
) -> None:
    resources = {"requests": {"cpu": "2", "memory": "512Mi"}, "limits": {"memory": "2Gi"}}
    await cluster.apply(model_version("fraud-v1", "fraud", "1", demo_model.uri, resources=resources))
    await wait_for_phase(cluster, "fraud-v1", "Ready")
    deployment = cluster.get(DEPLOYMENTS, "fraud-v1")
    assert deployment is not None
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env["MODELFLEET_WORKERS"], env["MODELFLEET_INTRA_OP_THREADS"]) == ("2", "1")

    # The kubelet ran the runtime with that env: the pod is ready because both of its workers are.
    [pod] = ready_pods(kubelet, "fraud-v1")
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://{pod.address}:{pod.port('http')}/v2/health/ready") as r,
    ):
        assert r.status == 200
        readiness = await r.json()
    assert [(w["worker"], w["state"]) for w in readiness["workers"]] == [(0, "ready"), (1, "ready")]
    answer = await predict(pod.address, pod.port("http"), [0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 0.7, -0.8])
    assert answer["model_version"] == "1"
