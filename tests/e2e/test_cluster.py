"""The integration story on a real cluster (kind or k3d), opt-in: MODELFLEET_E2E_KUBECONFIG=PATH.

Needs the chart installed and the images loaded (docs/install.md). Everything it
creates lives in one namespace that it removes at the end. See docs/testing.md.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.polling import wait_until

KUBECONFIG = os.environ.get("MODELFLEET_E2E_KUBECONFIG", "")
NAMESPACE = os.environ.get("MODELFLEET_E2E_NAMESPACE", "modelfleet-e2e")
GROUP, VERSION, PLURAL = "serving.modelfleet.dev", "v1alpha1", "modelversions"
READY_TIMEOUT = float(os.environ.get("MODELFLEET_E2E_TIMEOUT", "300"))

pytestmark = pytest.mark.skipif(not KUBECONFIG, reason="set MODELFLEET_E2E_KUBECONFIG to run against a cluster")


@pytest.fixture(scope="module")
def api() -> Iterator[Any]:
    import kubernetes

    client = kubernetes.config.new_client_from_config(config_file=KUBECONFIG)
    core = kubernetes.client.CoreV1Api(client)
    core.create_namespace({"metadata": {"name": NAMESPACE}})
    try:
        yield client
    finally:
        core.delete_namespace(NAMESPACE)


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory: pytest.TempPathFactory, api: Any) -> tuple[Path, str]:
    import kubernetes

    path = tmp_path_factory.mktemp("e2e") / "model.onnx"
    runtime = Path(sys.executable).with_name("modelfleet-runtime")
    subprocess.run([str(runtime), "demo-model", "--out", str(path)], check=True, capture_output=True)
    data = path.read_bytes()
    kubernetes.client.CoreV1Api(api).create_namespaced_config_map(
        NAMESPACE,
        {
            "metadata": {"name": "demo-model"},
            "binaryData": {"model.onnx": base64.b64encode(data).decode()},
        },
    )
    return path, hashlib.sha256(data).hexdigest()


def apply_version(api: Any, name: str, sha256: str) -> None:
    import kubernetes

    kubernetes.client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP,
        VERSION,
        NAMESPACE,
        PLURAL,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ModelVersion",
            "metadata": {"name": name},
            "spec": {
                "model": "e2e",
                "version": name.rsplit("-", 1)[-1],
                "source": {"uri": "configmap://demo-model/model.onnx", "sha256": sha256},
            },
        },
    )


def status_of(api: Any, name: str) -> dict[str, Any]:
    import kubernetes

    obj = kubernetes.client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
    return obj.get("status") or {}


def test_a_version_serves_like_onnxruntime_and_goes_with_its_deletion(api: Any, demo_model: tuple[Path, str]) -> None:
    import kubernetes
    import onnxruntime

    path, sha256 = demo_model
    apply_version(api, "e2e-v1", sha256)
    wait_until(
        lambda: status_of(api, "e2e-v1").get("phase") == "Ready", READY_TIMEOUT, interval=1, message="e2e-v1 Ready"
    )
    assert status_of(api, "e2e-v1")["readyReplicas"] == 1

    features = [0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 0.7, -0.8]
    core = kubernetes.client.CoreV1Api(api)
    raw = core.connect_post_namespaced_service_proxy_with_path(
        "e2e-v1:http", NAMESPACE, "predict", body={"features": features}, _preload_content=False
    )
    answer = json.loads(raw.data)
    session = onnxruntime.InferenceSession(str(path))
    expected = session.run(None, {session.get_inputs()[0].name: np.array([features], dtype=np.float32)})[0]
    assert np.allclose(answer["prediction"], expected.ravel()[0], rtol=1e-5)

    kubernetes.client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "e2e-v1")
    apps = kubernetes.client.AppsV1Api(api)
    wait_until(
        lambda: not apps.list_namespaced_deployment(NAMESPACE).items,
        120,
        interval=1,
        message="the Deployment garbage-collected",
    )


def test_a_sha256_mismatch_fails_with_the_runtimes_reason(api: Any, demo_model: tuple[Path, str]) -> None:
    apply_version(api, "e2e-v2", "0" * 64)
    wait_until(
        lambda: status_of(api, "e2e-v2").get("phase") == "Failed", READY_TIMEOUT, interval=1, message="e2e-v2 Failed"
    )
    loaded = next(c for c in status_of(api, "e2e-v2")["conditions"] if c["type"] == "ModelLoaded")
    assert loaded["reason"] == "ModelLoadFailed" and "sha256" in loaded["message"].lower()
