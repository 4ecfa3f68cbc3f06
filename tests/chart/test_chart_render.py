"""The chart lints, renders, and every object it renders is valid Kubernetes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from tests.chart.chart_render import VALUE_SETS, env_of, find, operator_container, run_helm, write_values
from tests.support.paths import CHART

KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_helm_lint_strict_passes(helm: str, tmp_path: Path, value_set: str) -> None:
    values = write_values(tmp_path, VALUE_SETS[value_set])
    proc = run_helm(helm, "lint", "--strict", str(CHART), "--values", str(values))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def custom_resource_schemas(objects: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[str, dict]]:
    """(apiVersion, kind) -> (scope, openAPIV3Schema) of the CRDs in the rendered set."""
    schemas = {}
    for crd in find(objects, "CustomResourceDefinition"):
        spec = crd["spec"]
        for version in spec["versions"]:
            key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
            schemas[key] = (spec["scope"], version["schema"]["openAPIV3Schema"])
    return schemas


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_rendered_object_is_valid(render, value_set: str, version: str) -> None:
    objects = render(VALUE_SETS[value_set])
    custom = custom_resource_schemas(objects)
    for obj in objects:
        key = (obj["apiVersion"], obj["kind"])
        if key in custom:
            # kubernetes-validate knows no custom kinds: check them against
            # the CRD shipped in the same chart, as the API server would.
            scope, schema = custom[key]
            assert ("namespace" in obj["metadata"]) == (scope == "Namespaced"), obj
            jsonschema.validate({k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}, schema)
        else:
            kubernetes_validate.validate(obj, version, strict=True)


def test_default_values_run_one_standalone_operator_over_all_namespaces(render) -> None:
    objects = render(VALUE_SETS["default"])
    [deployment] = find(objects, "Deployment")
    args = operator_container(objects)["args"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert args[0] == "run"
    assert "--all-namespaces" in args and "--standalone" in args
    assert not [a for a in args if a.startswith("--namespace")]
    assert "MODELFLEET_OPERATOR_PEERING" not in env_of(operator_container(objects))
    assert not find(objects, "ClusterKopfPeering") and not find(objects, "KopfPeering")
    assert [cr["metadata"]["name"] for cr in find(objects, "ClusterRole")] == ["modelfleet"]
    assert not find(objects, "Role")


def test_operator_configuration_comes_from_values(render) -> None:
    env = env_of(operator_container(render(VALUE_SETS["gateway"])))
    assert env["MODELFLEET_OPERATOR_ROUTING"] == "gateway"
    assert env["MODELFLEET_OPERATOR_GATEWAY"] == "gateway-system/public"
    assert env["MODELFLEET_OPERATOR_RUNTIME_IMAGE"] == "ghcr.io/modelfleet/runtime:0.1.0"
    assert env["MODELFLEET_OPERATOR_ALLOWED_IMAGES"] == "registry.example.com/ml/"
    assert env["MODELFLEET_OPERATOR_ALLOWED_URI_SCHEMES"] == "https,pvc"
    assert env["MODELFLEET_OPERATOR_LOG_LEVEL"] == "debug"
    assert env["MODELFLEET_OPERATOR_LOG_FORMAT"] == "text"
    assert env["MODELFLEET_OPERATOR_CLUSTER_DOMAIN"] == "cluster.local"


def test_service_routing_leaves_the_gateway_unset(render) -> None:
    env = env_of(operator_container(render(VALUE_SETS["default"])))
    assert env["MODELFLEET_OPERATOR_ROUTING"] == "service"
    assert "MODELFLEET_OPERATOR_GATEWAY" not in env
    # Empty lists mean "the operator's defaults", not "allow nothing".
    assert "MODELFLEET_OPERATOR_ALLOWED_IMAGES" not in env
    assert "MODELFLEET_OPERATOR_ALLOWED_URI_SCHEMES" not in env


def test_image_tags_default_to_the_app_version_and_follow_values(render) -> None:
    objects = render(
        {
            "image": {"repository": "r.example.com/op", "tag": "dev"},
            "runtimeImage": {"repository": "r.example.com/rt", "tag": "dev2"},
        }
    )
    container = operator_container(objects)
    assert container["image"] == "r.example.com/op:dev"
    assert env_of(container)["MODELFLEET_OPERATOR_RUNTIME_IMAGE"] == "r.example.com/rt:dev2"


def test_operator_pod_runs_locked_down(render) -> None:
    objects = render(VALUE_SETS["default"])
    [deployment] = find(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = operator_container(objects)
    security = container["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["runAsUser"] == 10001
    # A writable /tmp, since the root filesystem is read-only.
    [mount] = container["volumeMounts"]
    assert mount["mountPath"] == "/tmp"
    assert {"name": mount["name"], "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    assert pod["serviceAccountName"] == "modelfleet"


def test_liveness_probe_asks_kopfs_health_endpoint(render) -> None:
    container = operator_container(render({"livenessPort": 9090}))
    assert env_of(container)["MODELFLEET_OPERATOR_LIVENESS_PORT"] == "9090"
    assert container["ports"][0] == {"name": "healthz", "containerPort": 9090, "protocol": "TCP"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}


def test_the_operators_metrics_port_is_on_by_default_and_can_be_turned_off(render) -> None:
    container = operator_container(render({}))
    assert env_of(container)["MODELFLEET_OPERATOR_METRICS_PORT"] == "8080"
    assert {"name": "metrics", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
    off = operator_container(render({"metricsPort": 0}))
    assert env_of(off)["MODELFLEET_OPERATOR_METRICS_PORT"] == "0"
    assert [p["name"] for p in off["ports"]] == ["healthz"]


def test_traffic_settings_and_the_gateway_hostname_reach_the_operator(render) -> None:
    values = {
        "traffic": {"resyncSeconds": 120, "scaleDownDelaySeconds": 10, "retireAfterSeconds": 60},
        "routing": {
            "mode": "gateway",
            "gateway": {
                "name": "public",
                "hostnameTemplate": "{model}.{namespace}.{domain}",
                "domain": "ml.example.org",
            },
        },
    }
    env = env_of(operator_container(render(values)))
    assert env["MODELFLEET_OPERATOR_RESYNC_SECONDS"] == "120"
    assert env["MODELFLEET_OPERATOR_SCALE_DOWN_DELAY_SECONDS"] == "10"
    assert env["MODELFLEET_OPERATOR_RETIRE_AFTER_SECONDS"] == "60"
    assert env["MODELFLEET_OPERATOR_GATEWAY_HOSTNAME_TEMPLATE"] == "{model}.{namespace}.{domain}"
    assert env["MODELFLEET_OPERATOR_GATEWAY_DOMAIN"] == "ml.example.org"
    defaults = env_of(operator_container(render({})))
    assert defaults["MODELFLEET_OPERATOR_RESYNC_SECONDS"] == "300"
    assert "MODELFLEET_OPERATOR_GATEWAY_DOMAIN" not in defaults  # service routing has no gateway


def test_resources_follow_values(render) -> None:
    resources = {"requests": {"cpu": "200m", "memory": "300Mi"}, "limits": {"cpu": 1, "memory": "1Gi"}}
    assert operator_container(render({"resources": resources}))["resources"] == resources


def test_several_replicas_peer_cluster_wide_instead_of_standalone(render) -> None:
    objects = render(VALUE_SETS["peering"])
    [deployment] = find(objects, "Deployment")
    args = operator_container(objects)["args"]
    assert deployment["spec"]["replicas"] == 2
    assert "strategy" not in deployment["spec"]
    assert "--standalone" not in args
    assert env_of(operator_container(objects))["MODELFLEET_OPERATOR_PEERING"] == "modelfleet"
    [peering] = find(objects, "ClusterKopfPeering")
    assert peering["apiVersion"] == "kopf.dev/v1"
    assert peering["metadata"]["name"] == "modelfleet"
    crds = {crd["metadata"]["name"] for crd in find(objects, "CustomResourceDefinition")}
    assert {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"} <= crds


def test_namespaced_replicas_peer_in_every_watched_namespace(render) -> None:
    objects = render({"replicas": 2, "watchNamespaces": ["ml", "team-b"]})
    peerings = find(objects, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["ml", "team-b"]
    assert {p["metadata"]["name"] for p in peerings} == {"modelfleet"}
    assert not find(objects, "ClusterKopfPeering")


def test_watch_namespaces_become_namespace_flags(render) -> None:
    args = operator_container(render(VALUE_SETS["namespaced"]))["args"]
    assert args == ["run", "--namespace=ml", "--namespace=team-b", "--standalone"]


def test_existing_service_account_can_be_used(render) -> None:
    objects = render({"serviceAccount": {"create": False, "name": "platform-operator"}})
    assert not find(objects, "ServiceAccount")
    [deployment] = find(objects, "Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "platform-operator"
    [binding] = find(objects, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "platform-operator", "namespace": "modelfleet"}]


def test_gateway_in_the_models_own_namespace_is_passed_by_name(render) -> None:
    env = env_of(operator_container(render({"routing": {"mode": "gateway", "gateway": {"name": "public"}}})))
    assert env["MODELFLEET_OPERATOR_GATEWAY"] == "public"


def test_default_runtime_resources_are_passed_as_json(render) -> None:
    resources = {"requests": {"cpu": "500m"}, "limits": {"memory": "4Gi"}}
    env = env_of(operator_container(render({"runtimeDefaultResources": resources})))
    assert json.loads(env["MODELFLEET_OPERATOR_DEFAULT_RESOURCES"]) == resources
    assert "MODELFLEET_OPERATOR_DEFAULT_RESOURCES" not in env_of(operator_container(render({})))
