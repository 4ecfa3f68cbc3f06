"""Pod Security admission in the emulated API server, as the Pod Security Standards define the levels.

https://kubernetes.io/docs/concepts/security/pod-security-standards/ and
https://kubernetes.io/docs/concepts/security/pod-security-admission/: a namespace's
`pod-security.kubernetes.io/enforce` label decides; a violating Pod is refused with 403.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.integration.harness.client import resource_path
from tests.integration.harness.cluster import Cluster
from tests.integration.harness.kubelet import DeploymentController
from tests.integration.harness.rawapi import MERGE, RawApi
from tests.integration.model_versions import ModelFile, model_version, wait_for_phase

PODS = ("", "v1", "pods")


@pytest.fixture
async def api(cluster: Cluster) -> AsyncIterator[RawApi]:
    async with RawApi(cluster.url) as raw:
        for name, level in (("strict", "restricted"), ("base", "baseline")):
            labels = {"pod-security.kubernetes.io/enforce": level}
            status, body = await raw.call(
                "POST", resource_path("", "v1", "namespaces"), {"metadata": {"name": name, "labels": labels}}
            )
            assert status == 201, body
        yield raw


def pod(name: str, container_context: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    container = {"name": "c", "image": "x:1", "securityContext": container_context or {}}
    return {"metadata": {"name": name}, "spec": {"containers": [container], **spec}}


HARDENED = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


async def test_restricted_admits_a_hardened_pod_and_says_what_a_bare_one_lacks(api: RawApi) -> None:
    status, body = await api.call("POST", resource_path(*PODS, "strict"), pod("hardened", HARDENED))
    assert status == 201, body
    status, body = await api.call("POST", resource_path(*PODS, "strict"), pod("bare"))
    assert status == 403 and body["reason"] == "Forbidden"
    assert body["message"] == (
        'pods "bare" is forbidden: violates PodSecurity "restricted:latest": '
        'allowPrivilegeEscalation != false (container "c" must set securityContext.allowPrivilegeEscalation=false), '
        'unrestricted capabilities (container "c" must set securityContext.capabilities.drop=["ALL"]), '
        'runAsNonRoot != true (pod or container "c" must set securityContext.runAsNonRoot=true), '
        'seccompProfile (pod or container "c" must set securityContext.seccompProfile.type to '
        '"RuntimeDefault" or "Localhost")'
    )
    hostpath = pod("hostpath", HARDENED, volumes=[{"name": "h", "hostPath": {"path": "/"}}])
    status, body = await api.call("POST", resource_path(*PODS, "strict"), hostpath)
    assert status == 403 and "hostPath volumes" in body["message"]


async def test_baseline_refuses_privileged_pods_and_the_default_namespace_admits_anything(api: RawApi) -> None:
    status, _ = await api.call("POST", resource_path(*PODS, "base"), pod("bare"))
    assert status == 201
    status, body = await api.call("POST", resource_path(*PODS, "base"), pod("root", {"privileged": True}))
    assert status == 403 and 'violates PodSecurity "baseline:latest": privileged' in body["message"]
    status, _ = await api.call("POST", resource_path(*PODS, "base"), pod("net", hostNetwork=True))
    assert status == 403
    status, _ = await api.call("POST", resource_path(*PODS, "ml"), pod("root", {"privileged": True}))
    assert status == 201


async def test_the_operators_runtime_pods_are_admitted_in_a_restricted_namespace(
    cluster: Cluster, api: RawApi, kubelet: DeploymentController, operator: Any, demo_model: ModelFile
) -> None:
    labels = {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    status, body = await api.call(
        "PATCH", resource_path("", "v1", "namespaces", None, "ml"), labels, content_type=MERGE
    )
    assert status == 200, body
    await cluster.apply(model_version("fraud-v1", "fraud", "1", demo_model.uri))
    await wait_for_phase(cluster, "fraud-v1", "Ready")
