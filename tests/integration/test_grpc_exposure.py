"""The runtime's Open Inference Protocol gRPC service, as the operator exposes it (issue 12).

Every version's Service and the model's Service carry a `grpc` port (8081,
`appProtocol: grpc`) onto the runtime's `grpc` container port; in gateway mode
each model gets a GRPCRoute beside its HTTPRoute, with the same parent, hostname
and weights, when the cluster serves the GRPCRoute CRD (the emulator serves the
Gateway API v1.6.1 CRD; one class here runs a cluster without it).

The test router speaks HTTP/1.1 only, so gRPC is not routed by a Gateway here:
the GRPCRoute the operator wrote is checked against its CRD's schema and the
traffic decision, and real gRPC calls (the runtime's generated stubs) go to the
endpoints of the Services' `grpc` port, as kube-proxy would send them.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import grpc
import jsonschema
import pytest
import yaml

from modelfleet_operator.config import OperatorConfig
from modelfleet_runtime.grpc_predict_v2 import grpc_predict_v2_pb2 as pb
from modelfleet_runtime.grpc_predict_v2 import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.integration.conftest import GRPCROUTE_CRD, modelfleet_crds
from tests.integration.harness.cluster import MV, SERVICES, Cluster
from tests.integration.harness.router import ready_endpoints
from tests.integration.model_versions import LOCAL_SOURCES, ModelFile, model_version, wait_for_phase
from tests.integration.steady_load import FEATURES, route_weights
from tests.operator.conftest import crd_validator
from tests.support.polling import wait_for

GRPCROUTES = ("gateway.networking.k8s.io", "v1", "grpcroutes")
HTTPROUTES = ("gateway.networking.k8s.io", "v1", "httproutes")
GRPC_PORT = 8081


@pytest.fixture
def operator_config() -> OperatorConfig:
    return OperatorConfig(
        namespaces=("ml",), standalone=True, routing="gateway", gateway="ml/public", allowed_uri_schemes=LOCAL_SOURCES
    )


def grpcroute_weights(cluster: Cluster, model: str) -> dict[str, int]:
    """The GRPCRoute's default rule (no matches: every method): backend Service -> weight."""
    route = cluster.get(GRPCROUTES, model)
    if route is None:
        return {}
    default = [r for r in route["spec"]["rules"] if not r.get("matches")]
    return {ref["name"]: ref["weight"] for rule in default for ref in rule.get("backendRefs") or []}


def serving(cluster: Cluster, name: str) -> int | None:
    return ((cluster.get(MV, name) or {}).get("status") or {}).get("servingTraffic")


async def infer(address: str, port: int) -> Any:
    """One ModelInfer of the demo model (one row of FEATURES) over the runtime's gRPC service."""
    request = pb.ModelInferRequest(model_name="fraud")
    tensor = request.inputs.add(name="features", datatype="FP32", shape=[1, len(FEATURES)])
    tensor.contents.fp32_contents.extend(FEATURES)
    async with grpc.aio.insecure_channel(f"{address}:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        ready = await stub.ModelReady(pb.ModelReadyRequest(name="fraud"), timeout=10)
        assert ready.ready
        return await stub.ModelInfer(request, timeout=10)


async def test_gateway_mode_gets_a_grpcroute_with_the_httproutes_split_and_services_answer_grpc(
    cluster: Cluster, kubelet: Any, operator: Any, demo_model: ModelFile
) -> None:
    await cluster.apply(model_version("fraud-v1", "fraud", "1", demo_model.uri, traffic=80))
    await cluster.apply(model_version("fraud-v2", "fraud", "2", demo_model.uri, traffic=20))
    for name in ("fraud-v1", "fraud-v2"):
        await wait_for_phase(cluster, name, "Ready")
    await wait_for(
        lambda: (
            grpcroute_weights(cluster, "fraud") == route_weights(cluster, "fraud") == {"fraud-v1": 80, "fraud-v2": 20}
            and (serving(cluster, "fraud-v1"), serving(cluster, "fraud-v2")) == (80, 20)
        ),
        timeout=60,
        message=lambda: f"GRPCRoute {grpcroute_weights(cluster, 'fraud')}, HTTPRoute {route_weights(cluster, 'fraud')}",
    )
    grpc_route, http_route = cluster.get(GRPCROUTES, "fraud"), cluster.get(HTTPROUTES, "fraud")
    assert grpc_route is not None and http_route is not None
    validator: jsonschema.Validator = crd_validator(yaml.safe_load(GRPCROUTE_CRD.read_text()), "v1")
    stored = {k: grpc_route[k] for k in ("apiVersion", "kind", "spec")}
    assert [e.message for e in validator.iter_errors(stored)] == []
    assert grpc_route["spec"]["parentRefs"] == http_route["spec"]["parentRefs"]
    assert grpc_route["spec"]["hostnames"] == http_route["spec"]["hostnames"] == ["fraud-ml.example.com"]
    assert {ref["port"] for rule in grpc_route["spec"]["rules"] for ref in rule["backendRefs"]} == {GRPC_PORT}
    pins = {
        rule["matches"][0]["headers"][0]["value"]: rule["backendRefs"][0]["name"]
        for rule in grpc_route["spec"]["rules"]
        if rule.get("matches")
    }
    assert pins == {"1": "fraud-v1", "2": "fraud-v2"}

    # Each version's Service pins it over gRPC too.
    for name, version in (("fraud-v1", "1"), ("fraud-v2", "2")):
        service = cluster.get(SERVICES, name)
        assert service is not None
        grpc_port = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
        assert (grpc_port["port"], grpc_port["targetPort"], grpc_port["appProtocol"]) == (GRPC_PORT, "grpc", "grpc")
        [(address, port)] = ready_endpoints(cluster.emulator, "ml", name, GRPC_PORT)
        answer = await infer(address, port)
        assert answer.model_version == version
        assert len(answer.outputs[0].contents.fp32_contents) == 1

    # The model's Service reaches every version's pods on its grpc port.
    endpoints = ready_endpoints(cluster.emulator, "ml", "fraud", GRPC_PORT)
    versions = Counter([(await infer(address, port)).model_version for address, port in endpoints])
    assert versions == Counter({"1": 1, "2": 1})


class TestWithoutTheGrpcRouteCrd:
    @pytest.fixture
    def crds(self) -> list[dict[str, Any]]:
        return modelfleet_crds()

    async def test_the_operator_says_so_once_and_serves_over_the_httproute_alone(
        self,
        cluster: Cluster,
        kubelet: Any,
        operator: Any,
        demo_model: ModelFile,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        await cluster.apply(model_version("fraud-v1", "fraud", "1", demo_model.uri))
        await wait_for_phase(cluster, "fraud-v1", "Ready")
        await wait_for(
            lambda: route_weights(cluster, "fraud") == {"fraud-v1": 100},
            timeout=60,
            message=lambda: f"HTTPRoute {route_weights(cluster, 'fraud')}",
        )
        assert not any(r.resource == "grpcroutes" for r in cluster.emulator.recorded)
        # The operator started (and looked) while the fixtures were set up.
        records = caplog.get_records("setup") + caplog.get_records("call")
        said = [r.getMessage() for r in records if "does not serve GRPCRoute" in r.getMessage()]
        assert len(said) == 1, said
        # The Services still carry the gRPC port: clients inside the cluster reach it without a Gateway.
        [(address, port)] = ready_endpoints(cluster.emulator, "ml", "fraud-v1", GRPC_PORT)
        assert (await infer(address, port)).model_version == "1"
