"""Fixtures of the integration suite: an emulated cluster, the test kubelet, the real operator.

    async def test_something(cluster, kubelet, operator, demo_model):
        await cluster.apply(model_version("fraud-v1", "fraud", "1", demo_model.uri))
        await wait_for_phase(cluster, "fraud-v1", "Ready")

(`model_version`, `phase`, `condition`, `wait_for_phase`: tests/integration/model_versions.py;
`wait_for`: tests/support/polling.py.)

- `cluster` (harness.cluster.Cluster): the emulated API server with the CRDs of
  crds/ and the Gateway API's GRPCRoute CRD (`crds`; a module may override it to
  leave one out) registered, namespace `ml`, KUBECONFIG pointing at it;
- `kubelet` (harness.kubelet.DeploymentController): runs the pods the operator
  asks for as real processes; `kubelet.pods` maps (namespace, name) to PodProcess;
- `jobs` (harness.jobs.JobController): runs the Jobs the operator creates (the
  trainer) as real processes, with the kubelet's volume mapping; `jobs.hold`;
- `operator` (harness.operator.InProcessOperator): started; `kill()`, `start()`,
  `restart()`, `stop()`;
- `operator_config`: the OperatorConfig the operator runs with (override it in a module);
- `demo_model`: the runtime's demo model written by `modelfleet-runtime demo-model`;
- `api_requests` (session, from tests/support/rbac_replay.py): every request the operators
  made, as `ApiRequest`s, replayed against the chart's RBAC when the session ends.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelfleet_operator.config import OperatorConfig
from tests.integration.harness.cluster import Cluster, running_cluster
from tests.integration.harness.emulator import ApiRequest
from tests.integration.harness.jobs import JobController
from tests.integration.harness.kubelet import DeploymentController, EndpointSliceController
from tests.integration.harness.operator import InProcessOperator
from tests.integration.model_versions import LOCAL_SOURCES, ModelFile
from tests.support.paths import CRDS, GATEWAY_API_SCHEMAS

# Served from its CRD (schema, defaults, list types); HTTPRoutes and Gateways are built into the emulator.
GRPCROUTE_CRD = GATEWAY_API_SCHEMAS / "gateway.networking.k8s.io_grpcroutes.yaml"


def modelfleet_crds() -> list[dict[str, Any]]:
    return [doc for path in sorted(CRDS.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="session")
def crds() -> list[dict[str, Any]]:
    """The CRDs the emulated cluster serves: ModelFleet's and the Gateway API's GRPCRoute."""
    return [*modelfleet_crds(), yaml.safe_load(GRPCROUTE_CRD.read_text())]


@pytest.fixture
async def cluster(
    crds: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api_requests: set[ApiRequest]
) -> AsyncIterator[Cluster]:
    async with running_cluster(crds, tmp_path / "cluster") as emulated:
        monkeypatch.setenv("KUBECONFIG", str(emulated.kubeconfig))
        try:
            yield emulated
        finally:
            api_requests.update(emulated.emulator.recorded)


@pytest.fixture
async def kubelet(cluster: Cluster) -> AsyncIterator[DeploymentController]:
    async with (
        DeploymentController(cluster.emulator, cluster.client, cluster.volumes) as deployments,
        EndpointSliceController(cluster.emulator, cluster.client) as slices,
    ):
        yield deployments
    errors = deployments.errors + slices.errors
    assert not errors, f"the test controllers failed: {errors!r}"
    assert not deployments.still_running(), "pod processes outlived the test kubelet"


@pytest.fixture
async def jobs(cluster: Cluster) -> AsyncIterator[JobController]:
    async with JobController(cluster.emulator, cluster.client, cluster.volumes) as controller:
        yield controller
    assert not controller.errors, f"the test Job controller failed: {controller.errors!r}"
    assert not controller.still_running(), "trainer processes outlived the test Job controller"


@pytest.fixture
def operator_config() -> OperatorConfig:
    return OperatorConfig(namespaces=("ml",), standalone=True, allowed_uri_schemes=LOCAL_SOURCES, log_level="debug")


@pytest.fixture
async def operator(cluster: Cluster, operator_config: OperatorConfig) -> AsyncIterator[InProcessOperator]:
    running = InProcessOperator(operator_config)
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> ModelFile:
    path = tmp_path_factory.mktemp("models") / "demo.onnx"
    runtime = Path(sys.executable).with_name("modelfleet-runtime")
    subprocess.run([str(runtime), "demo-model", "--out", str(path)], check=True, capture_output=True, timeout=120)
    return ModelFile(path=path, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
