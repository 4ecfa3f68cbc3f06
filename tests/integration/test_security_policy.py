"""Issue 11 against the real operator: a ModelVersion author runs no code of their own in the trainer,
names only Secrets opted in for it, and the model's pods accept connections only from known namespaces.

The Secret label check runs on the event path: the operator watches only the Secrets that carry the
label (a server-side selector), so labelling a Secret is what lets the waiting version serve.
"""

from __future__ import annotations

import base64

import aiohttp
import pytest

from modelfleet_operator.config import OperatorConfig
from tests.integration.harness.cluster import DEPLOYMENTS, Cluster
from tests.integration.harness.kubelet import DeploymentController
from tests.integration.model_versions import LOCAL_SOURCES, ModelFile, condition, model_version, wait_for_phase
from tests.support.polling import wait_for

SECRETS = ("", "v1", "secrets")
NETWORK_POLICIES = ("networking.k8s.io", "v1", "networkpolicies")
CONSUMABLE = {"serving.modelfleet.dev/consumable": "true"}
TOKEN = "s3cret-predict-token"


@pytest.fixture
def operator_config() -> OperatorConfig:
    return OperatorConfig(
        namespaces=("ml",),
        standalone=True,
        allowed_uri_schemes=LOCAL_SOURCES,
        operator_namespace="modelfleet",
        network_policy_namespaces=("monitoring",),
    )


async def create_secret(cluster: Cluster, name: str, labels: dict[str, str] | None = None) -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": labels or {}},
        "data": {"token": base64.b64encode(TOKEN.encode()).decode()},
    }
    await cluster.client.create(*SECRETS, cluster.namespace, secret)


async def predict_status(address: str, port: int, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://{address}:{port}/predict", json={"features": [0.0] * 8}, headers=headers) as response,
    ):
        return response.status


async def test_a_trainer_command_in_the_runtime_image_fails_the_version_before_anything_runs(
    cluster: Cluster, kubelet: DeploymentController, operator, demo_model: ModelFile
) -> None:
    retraining = {
        "feedbackClaim": "fraud-feedback",
        "image": "ghcr.io/modelfleet/runtime:0.1.0",  # passes allowed-images: the runtime's repository
        "command": ["python", "-c", "print('anything')"],
    }
    await cluster.apply(model_version("fraud-v1", "fraud", "1", demo_model.uri, retraining=retraining))
    await wait_for_phase(cluster, "fraud-v1", "Failed")
    ready = condition(cluster, "fraud-v1", "Ready")
    assert ready is not None and ready["reason"] == "TrainerNotAllowed"
    assert "allowed-trainer-images" in ready["message"]
    assert cluster.get(DEPLOYMENTS, "fraud-v1") is None


async def test_a_secret_without_the_label_cannot_be_referenced_until_it_is_labelled(
    cluster: Cluster, kubelet: DeploymentController, operator, demo_model: ModelFile
) -> None:
    await create_secret(cluster, "predict-token")  # no opt-in label
    mv = model_version("fraud-v1", "fraud", "1", demo_model.uri, predictToken={"name": "predict-token"})
    await cluster.apply(mv)
    await wait_for_phase(cluster, "fraud-v1", "Failed")
    ready = condition(cluster, "fraud-v1", "Ready")
    assert ready is not None and ready["reason"] == "SecretNotConsumable"
    assert "'predict-token'" in ready["message"] and "serving.modelfleet.dev/consumable=true" in ready["message"]
    assert cluster.get(DEPLOYMENTS, "fraud-v1") is None  # nothing mounts it

    # The Secret's owner opts it in: the labelled watch sees it and the version serves, token required.
    await cluster.client.merge_patch(*SECRETS, cluster.namespace, "predict-token", {"metadata": {"labels": CONSUMABLE}})
    await wait_for_phase(cluster, "fraud-v1", "Ready")
    [pod] = [p for p in kubelet.pods_of("ml", "fraud-v1") if p.ready]
    assert await predict_status(pod.address, pod.port("http"), None) == 401
    assert await predict_status(pod.address, pod.port("http"), "wrong") == 401
    assert await predict_status(pod.address, pod.port("http"), TOKEN) == 200

    # Taking the label away again stops the operator from using it for this version.
    await cluster.client.merge_patch(
        *SECRETS,
        cluster.namespace,
        "predict-token",
        {"metadata": {"labels": {"serving.modelfleet.dev/consumable": None}}},
    )
    await wait_for_phase(cluster, "fraud-v1", "Failed")
    # The operator never read a Secret: it listed and watched the labelled ones, and created none here.
    secret_requests = {(r.verb, r.resource) for r in cluster.emulator.recorded if r.resource == "secrets"}
    assert secret_requests <= {("list", "secrets"), ("watch", "secrets")}


async def test_each_model_gets_a_network_policy_admitting_only_the_namespaces_that_need_it(
    cluster: Cluster, kubelet: DeploymentController, operator, demo_model: ModelFile
) -> None:
    await cluster.apply(model_version("fraud-v1", "fraud", "1", demo_model.uri))
    await wait_for_phase(cluster, "fraud-v1", "Ready")
    policy = cluster.get(NETWORK_POLICIES, "fraud")
    assert policy is not None
    assert policy["spec"]["podSelector"] == {"matchLabels": {"serving.modelfleet.dev/model": "fraud"}}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    [rule] = policy["spec"]["ingress"]
    [peer] = rule["from"]
    [expression] = peer["namespaceSelector"]["matchExpressions"]
    assert expression["values"] == ["ml", "modelfleet", "monitoring"]
    # selected by the runtime pods the kubelet runs
    [pod] = cluster.list(("", "v1", "pods"))
    assert pod["metadata"]["labels"]["serving.modelfleet.dev/model"] == "fraud"
    # and gone with the model, like its other shared objects
    await cluster.delete(("serving.modelfleet.dev", "v1alpha1", "modelversions"), "fraud-v1")
    await wait_for(lambda: cluster.get(NETWORK_POLICIES, "fraud") is None, timeout=30, message="the policy to go")
