"""The emulated API server stores what a real one stores: defaults, canonical quantities, pruned fields.

Each expectation is a documented default or conversion of Kubernetes
(pkg/apis/*/defaults.go, the Quantity type's canonical form, pruning of unknown
fields and CRD structural-schema defaulting), so that an operator that compares
what it wants with what it reads sees the same drift here as on a cluster.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.integration.harness.client import resource_path
from tests.integration.harness.cluster import Cluster
from tests.integration.harness.quantities import QuantityError, canonical
from tests.integration.harness.rawapi import MERGE, RawApi

DEPLOYMENTS = ("apps", "v1", "deployments")


@pytest.fixture
async def api(cluster: Cluster) -> AsyncIterator[RawApi]:
    async with RawApi(cluster.url, user_agent="kubectl/v1.30.0") as raw:
        yield raw
    # A client of its own User-Agent is recorded like the operator; these requests are not the operator's
    # and must not reach the RBAC replay of the chart.
    cluster.emulator.recorded.clear()
    cluster.emulator.recorded_requests.clear()


async def create(api: RawApi, resource: tuple[str, str, str], obj: dict[str, Any]) -> dict[str, Any]:
    status, body = await api.call("POST", resource_path(*resource, "ml"), obj)
    assert status == 201, body
    return body


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        (1, "1"),
        ("1", "1"),
        (0.5, "500m"),
        ("0.5", "500m"),
        ("1000m", "1"),
        ("1500m", "1500m"),
        ("1024Mi", "1Gi"),
        ("1.5Gi", "1536Mi"),
        ("0.5Gi", "512Mi"),
        ("0.5Ki", "512"),  # a binary quantity below 1024 is written as decimal
        ("2000", "2k"),
        ("1500", "1500"),
        ("129e6", "129e6"),  # the exponent form is kept
        ("1e3", "1e3"),
        ("100Mi", "100Mi"),
        ("0.1n", "1n"),  # below a nano rounds up
        ("0", "0"),
    ],
)
def test_quantities_take_their_canonical_form(written: Any, stored: str) -> None:
    assert canonical(written) == stored


@pytest.mark.parametrize("bad", ["1.2.3", "abc", "1Kb", "", True, None])
def test_a_malformed_quantity_is_refused(bad: Any) -> None:
    with pytest.raises(QuantityError):
        canonical(bad)


def web(**container: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "runtime", "image": "ghcr.io/modelfleet/runtime:1.0", **container}]},
            },
        },
    }


async def test_a_deployment_is_stored_with_the_defaults_and_canonical_quantities_of_a_real_server(api: RawApi) -> None:
    desired = web(
        resources={"limits": {"cpu": 1, "memory": "1024Mi"}, "requests": {"cpu": 0.5}},
        ports=[{"name": "http", "containerPort": 8080}],
        readinessProbe={"httpGet": {"port": "http"}},
        env=[{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
    )
    stored = await create(api, DEPLOYMENTS, copy.deepcopy(desired))
    spec = stored["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}
    assert (spec["revisionHistoryLimit"], spec["progressDeadlineSeconds"]) == (10, 600)
    pod = spec["template"]["spec"]
    assert pod["dnsPolicy"] == "ClusterFirst" and pod["restartPolicy"] == "Always"
    assert pod["schedulerName"] == "default-scheduler" and pod["terminationGracePeriodSeconds"] == 30
    assert pod["securityContext"] == {}
    [runtime] = pod["containers"]
    assert runtime["imagePullPolicy"] == "IfNotPresent"
    assert runtime["terminationMessagePath"] == "/dev/termination-log"
    assert runtime["terminationMessagePolicy"] == "File"
    assert runtime["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert runtime["readinessProbe"] == {
        "httpGet": {"port": "http", "path": "/", "scheme": "HTTP"},
        "timeoutSeconds": 1,
        "periodSeconds": 10,
        "successThreshold": 1,
        "failureThreshold": 3,
    }
    assert runtime["env"][0]["valueFrom"]["fieldRef"] == {"fieldPath": "status.podIP", "apiVersion": "v1"}
    # `cpu: 1` is the string "1", 1024Mi is 1Gi: "desired contained in live" sees drift, as on a cluster.
    assert runtime["resources"] == {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m"}}
    assert runtime["resources"] != desired["spec"]["template"]["spec"]["containers"][0]["resources"]
    # The creator's manager (kubectl, from the User-Agent) owns what it created, defaults included.
    [created] = stored["metadata"]["managedFields"]
    assert created["manager"] == "kubectl" and created["operation"] == "Update"
    assert "f:imagePullPolicy" in str(created["fieldsV1"])


@pytest.mark.parametrize(
    ("image", "policy"),
    [
        ("ghcr.io/modelfleet/runtime:1.0", "IfNotPresent"),
        ("ghcr.io/modelfleet/runtime:latest", "Always"),
        ("ghcr.io/modelfleet/runtime", "Always"),
        ("localhost:5000/runtime", "Always"),  # the registry's port is not a tag
        ("ghcr.io/modelfleet/runtime@sha256:" + "a" * 64, "IfNotPresent"),
    ],
)
async def test_image_pull_policy_defaults_by_the_tag(api: RawApi, image: str, policy: str) -> None:
    stored = await create(api, DEPLOYMENTS, web(image=image))
    assert stored["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == policy


async def test_a_service_gets_its_defaults_and_keeps_its_allocated_address(api: RawApi) -> None:
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "fraud"},
        "spec": {"selector": {"app": "fraud"}, "ports": [{"name": "http", "port": 80}]},
    }
    stored = await create(api, ("", "v1", "services"), svc)
    spec = stored["spec"]
    assert spec["type"] == "ClusterIP" and spec["sessionAffinity"] == "None"
    assert spec["internalTrafficPolicy"] == "Cluster"
    assert spec["ports"] == [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 80}]
    assert spec["clusterIP"].startswith("10.") and spec["clusterIPs"] == [spec["clusterIP"]]
    assert spec["ipFamilies"] == ["IPv4"] and spec["ipFamilyPolicy"] == "SingleStack"
    assert stored["status"] == {"loadBalancer": {}}
    # An update that leaves the address out keeps it.
    replaced = copy.deepcopy(stored)
    for key in ("clusterIP", "clusterIPs"):
        replaced["spec"].pop(key)
    status, body = await api.call("PUT", resource_path("", "v1", "services", "ml", "fraud"), replaced)
    assert status == 200 and body["spec"]["clusterIP"] == spec["clusterIP"]


async def test_a_job_gets_its_generated_selector_and_labels(api: RawApi) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "retrain"},
        "spec": {
            "template": {
                "spec": {"restartPolicy": "Never", "containers": [{"name": "train", "image": "trainer:1"}]},
            }
        },
    }
    stored = await create(api, ("batch", "v1", "jobs"), job)
    uid, spec = stored["metadata"]["uid"], stored["spec"]
    assert spec["selector"] == {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
    assert spec["template"]["metadata"]["labels"] == {
        "batch.kubernetes.io/controller-uid": uid,
        "batch.kubernetes.io/job-name": "retrain",
        "controller-uid": uid,
        "job-name": "retrain",
    }
    assert (spec["completions"], spec["parallelism"], spec["backoffLimit"]) == (1, 1, 6)
    assert spec["completionMode"] == "NonIndexed" and spec["suspend"] is False
    assert spec["podReplacementPolicy"] == "TerminatingOrFailed"
    assert spec["template"]["spec"]["restartPolicy"] == "Never"


async def test_an_hpa_gets_its_minimum_and_the_default_cpu_metric(api: RawApi) -> None:
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}, "maxReplicas": 5},
    }
    stored = await create(api, ("autoscaling", "v2", "horizontalpodautoscalers"), hpa)
    assert stored["spec"]["minReplicas"] == 1
    assert stored["spec"]["metrics"] == [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}
    ]
    assert "behavior" not in stored["spec"]


async def test_unknown_fields_and_nulls_are_pruned_and_empty_maps_omitted(api: RawApi) -> None:
    obj = web()
    obj["spec"]["notAField"] = 1
    obj["spec"]["template"]["spec"]["containers"][0]["env"] = []
    obj["metadata"]["annotations"] = {}
    obj["spec"]["paused"] = None
    stored = await create(api, DEPLOYMENTS, obj)
    assert "notAField" not in stored["spec"] and "paused" not in stored["spec"]
    assert "env" not in stored["spec"]["template"]["spec"]["containers"][0]
    assert "annotations" not in stored["metadata"]


async def test_a_custom_resource_gets_its_schema_defaults_and_loses_fields_its_schema_lacks(api: RawApi) -> None:
    mv = {
        "apiVersion": "serving.modelfleet.dev/v1alpha1",
        "kind": "ModelVersion",
        "metadata": {"name": "fraud-v1"},
        "spec": {
            "model": "fraud",
            "version": "1",
            "source": {"uri": "https://models.example.com/m.onnx"},
            "notInTheSchema": True,
        },
    }
    stored = await create(api, ("serving.modelfleet.dev", "v1alpha1", "modelversions"), mv)
    spec = stored["spec"]
    assert "notInTheSchema" not in spec
    assert spec["replicas"] == 1 and spec["traffic"] == 100
    assert spec["batching"] == {"maxBatchSize": 32, "maxLatencyMs": 100, "maxQueue": 1024}
    # Status written through /status is pruned by the schema too, except where unknown fields are kept.
    path = resource_path("serving.modelfleet.dev", "v1alpha1", "modelversions", "ml", "fraud-v1", "status")
    status, body = await api.call(
        "PATCH", path, {"status": {"phase": "Ready", "madeUp": 1, "kopf": {"progress": {"x": 1}}}}, content_type=MERGE
    )
    assert status == 200
    assert body["status"] == {"phase": "Ready", "kopf": {"progress": {"x": 1}}}


async def test_a_malformed_quantity_answers_422(api: RawApi) -> None:
    status, body = await api.call("POST", resource_path(*DEPLOYMENTS, "ml"), web(resources={"limits": {"cpu": "lots"}}))
    assert status == 422 and "resources.limits.cpu" in body["message"]


async def test_a_namespace_gets_its_name_label_and_finalizer(api: RawApi) -> None:
    status, body = await api.call("POST", resource_path("", "v1", "namespaces"), {"metadata": {"name": "team-a"}})
    assert status == 201, body
    assert body["metadata"]["labels"] == {"kubernetes.io/metadata.name": "team-a"}
    assert body["spec"] == {"finalizers": ["kubernetes"]} and body["status"] == {"phase": "Active"}


async def test_quantities_are_canonical_wherever_the_schema_says_quantity(api: RawApi) -> None:
    quota = {"metadata": {"name": "q"}, "spec": {"hard": {"requests.cpu": "1000m", "requests.memory": "1024Mi"}}}
    stored = await create(api, ("", "v1", "resourcequotas"), quota)
    assert stored["spec"]["hard"] == {"requests.cpu": "1", "requests.memory": "1Gi"}
    pvc = {
        "metadata": {"name": "feedback"},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "2048Mi"}}},
    }
    stored = await create(api, ("", "v1", "persistentvolumeclaims"), pvc)
    assert stored["spec"]["resources"]["requests"] == {"storage": "2Gi"}
    assert stored["spec"]["volumeMode"] == "Filesystem"


GRPCROUTES = ("gateway.networking.k8s.io", "v1", "grpcroutes")


async def test_grpcroutes_are_served_from_their_crd_with_its_defaults_and_pruning(api: RawApi) -> None:
    status, discovery = await api.call("GET", "/apis/gateway.networking.k8s.io/v1")
    assert status == 200 and "grpcroutes" in {r["name"] for r in discovery["resources"]}
    route = await create(
        api,
        GRPCROUTES,
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GRPCRoute",
            "metadata": {"name": "fraud"},
            "spec": {
                "parentRefs": [{"name": "public"}],
                "rules": [
                    {"matches": [{"headers": [{"name": "x-model-version", "value": "1"}]}], "unknown": True},
                    {"backendRefs": [{"name": "fraud-v1", "port": 8081}]},
                ],
            },
        },
    )
    pin, default = route["spec"]["rules"]
    # The Gateway API v1.6.1 CRD's defaults: parent and backend group/kind, header match type, weight.
    assert route["spec"]["parentRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public"}]
    assert pin == {"matches": [{"headers": [{"type": "Exact", "name": "x-model-version", "value": "1"}]}]}
    assert default["backendRefs"] == [{"group": "", "kind": "Service", "name": "fraud-v1", "port": 8081, "weight": 1}]
