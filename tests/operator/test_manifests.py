"""The manifests of a ModelVersion: valid Kubernetes objects that run the runtime as the spec says."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from modelfleet_operator.config import OperatorConfig
from modelfleet_operator.core.manifests import (
    ImageNotAllowed,
    SpecRejected,
    UriSchemeNotAllowed,
    build_children,
    label_selector,
    version_endpoint,
)
from modelfleet_operator.core.model_objects import (
    ModelObjects,
    build_grpcroute,
    build_httproute,
    build_model_objects,
    build_model_service,
    endpoint,
)
from modelfleet_operator.core.render import render_manifests
from modelfleet_operator.core.traffic import Scale
from modelfleet_runtime.settings import Settings, load_settings

KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
CONFIG = OperatorConfig()
# The default configuration with file:// sources allowed (the "file source" case).
FILE_CONFIG = OperatorConfig(allowed_uri_schemes=("https", "pvc", "configmap", "file"))
MakeMV = Callable[..., dict[str, Any]]

FULL_SPEC: dict[str, Any] = {
    "source": {"uri": "https://models.example.com/fraud/2/model.onnx", "sha256": "AB" * 32},
    "replicas": 3,
    "autoscaling": {"minReplicas": 2, "maxReplicas": 8, "targetCPUUtilization": 60},
    "batching": {"maxBatchSize": 64, "maxLatencyMs": 5, "maxQueue": 256},
    "warmup": {"iterations": 3},
    "traffic": 50,
    "features": {
        "redis": {
            "url": "redis://store:6379/0",
            "keyPrefix": "user:",
            "passwordSecretRef": {"name": "store", "key": "password"},
        },
        "fields": ["age", "tenure_days"],
        "cacheTTLSeconds": 60,
        "cacheSize": 500,
    },
    "retraining": {"feedbackClaim": "fraud-feedback", "minSamples": 100},
    "rollout": {"maxErrorRate": 0.1},
    "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
    "runtimeImage": "ghcr.io/modelfleet/runtime:0.2.0",
}

REPRESENTATIVE: dict[str, dict[str, Any]] = {
    "minimal": {},
    "full": FULL_SPEC,
    "pvc source, fixed replicas": {"source": {"uri": "pvc://models/fraud/model.onnx"}, "replicas": 4},
    "configmap source": {"source": {"uri": "configmap://tiny/model.onnx"}},
    "file source, scaled to zero": {"source": {"uri": "file:///opt/demo.onnx"}, "replicas": 0},
    "autoscaling": {"autoscaling": {"maxReplicas": 5}},
}


def shared_of(
    versions: list[dict[str, Any]],
    config: OperatorConfig = CONFIG,
    served: frozenset[str] = frozenset(),
    **shares: int,
) -> ModelObjects:
    live = [v for v in versions if not v["metadata"].get("deletionTimestamp")]
    return ModelObjects(
        model="fraud",
        namespace="ml",
        versions=sorted(versions, key=lambda v: v["metadata"]["name"]),
        owners_of=sorted(live, key=lambda v: v["metadata"]["name"]),
        shares=shares,
        version_of={v["metadata"]["name"]: v["spec"]["version"] for v in versions},
        config=config,
        served=served,
    )


def _kinds(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in objs}


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("case", sorted(REPRESENTATIVE))
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_children_are_valid_kubernetes_objects(make_mv: MakeMV, case: str, version: str) -> None:
    mv = make_mv(**REPRESENTATIVE[case])
    children = build_children(mv, FILE_CONFIG)
    for obj in [*children, *build_model_objects(shared_of([mv]))]:
        kubernetes_validate.validate(obj, version, strict=True)


def test_minimal_version_gets_a_deployment_and_a_service_only(make_mv: MakeMV) -> None:
    assert [o["kind"] for o in build_children(make_mv(), CONFIG)] == ["Deployment", "Service"]


def test_every_runtime_env_var_is_a_runtime_setting_the_runtime_accepts(make_mv: MakeMV) -> None:
    deployment = _kinds(build_children(make_mv(**FULL_SPEC), CONFIG))["Deployment"]
    env = _env(_container(deployment))
    fields = {"MODELFLEET_" + name.upper() for name in Settings.__dataclass_fields__}
    assert set(env) <= fields, set(env) - fields
    plain = {k: v for k, v in env.items() if isinstance(v, str)}
    settings = load_settings({}, plain)
    assert settings.model == FULL_SPEC["source"]["uri"]
    assert settings.sha256 == "ab" * 32
    assert (settings.name, settings.model_version) == ("fraud", "1")
    assert (settings.host, settings.port, settings.grpc_port) == ("0.0.0.0", 8080, 8081)
    assert (settings.max_batch_size, settings.max_latency_ms, settings.max_queue) == (64, 5.0, 256)
    assert settings.warmup_iterations == 3
    assert (settings.model_root, settings.cache_dir) == ("/mnt/models", "/var/cache/modelfleet")
    assert settings.feature_store == "redis://store:6379/0" and settings.feature_prefix == "user:"
    assert settings.feature_fields == ("age", "tenure_days")
    assert (settings.feature_cache_ttl, settings.feature_cache_size) == (60.0, 500)
    assert settings.feedback_dir == "/var/lib/modelfleet/feedback"
    assert settings.feedback_token_file == "/var/run/secrets/modelfleet/feedback/token"
    # the password is a file from the Secret, never a variable (kubectl describe shows variables' sources)
    assert "MODELFLEET_FEATURE_STORE_PASSWORD" not in env
    assert settings.feature_store_password_file == "/var/run/secrets/modelfleet/feature-store/password"
    pod = deployment["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "feature-store-password"]
    assert volume["secret"]["secretName"] == "store" and volume["secret"]["items"] == [
        {"key": "password", "path": "password"}
    ]
    # the download rules the operator enforces are the runtime's too
    assert settings.allowed_uri_schemes == CONFIG.allowed_uri_schemes == ("https", "pvc", "configmap")
    assert settings.max_model_bytes == CONFIG.max_model_bytes
    assert settings.download_timeout_seconds == CONFIG.download_timeout_seconds


def test_runtime_container_runs_the_serve_command_and_probes_the_v2_health_endpoints(make_mv: MakeMV) -> None:
    container = _container(build_children(make_mv(), CONFIG)[0])
    assert container["command"] == ["modelfleet-runtime", "serve"]
    assert container["image"] == "ghcr.io/modelfleet/runtime:0.1.0"
    assert container["ports"] == [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "grpc", "containerPort": 8081, "protocol": "TCP"},
    ]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/v2/health/live"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # slow downloads are not crashes


def test_pods_drain_before_they_are_killed(make_mv: MakeMV) -> None:
    deployment = build_children(make_mv(), CONFIG)[0]
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = float(_env(container)["MODELFLEET_DRAIN_TIMEOUT_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] > sleep + drain
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_runtime_pods_are_locked_down(make_mv: MakeMV) -> None:
    deployment = build_children(make_mv(), CONFIG)[0]
    pod = deployment["spec"]["template"]["spec"]
    security = _container(deployment)["securityContext"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["mountPath"]: m["name"] for m in _container(deployment)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    # the only writable paths are emptyDirs, the download folder no larger than the largest model allowed
    assert volumes[mounts["/var/cache/modelfleet"]] == {"name": "cache", "emptyDir": {"sizeLimit": "4160Mi"}}
    assert volumes[mounts["/tmp"]] == {"name": "tmp", "emptyDir": {}}


def test_pvc_source_is_mounted_read_only_where_the_runtime_looks(make_mv: MakeMV) -> None:
    deployment = build_children(make_mv(source={"uri": "pvc://models/fraud/model.onnx"}), CONFIG)[0]
    pod = deployment["spec"]["template"]["spec"]
    mount = next(m for m in _container(deployment)["volumeMounts"] if m["mountPath"] == "/mnt/models/pvc/models")
    assert mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}


def test_configmap_source_is_mounted_where_the_runtime_looks(make_mv: MakeMV) -> None:
    deployment = build_children(make_mv(source={"uri": "configmap://tiny/model.onnx"}), CONFIG)[0]
    pod = deployment["spec"]["template"]["spec"]
    mount = next(m for m in _container(deployment)["volumeMounts"] if m["mountPath"] == "/mnt/models/configmap/tiny")
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"] == {"name": "tiny"}


def test_feedback_volume_is_writable_and_the_token_comes_from_the_secret(make_mv: MakeMV) -> None:
    mv = make_mv(retraining={"feedbackClaim": "fb", "tokenSecretRef": {"name": "tok", "key": "t"}})
    deployment = build_children(mv, CONFIG)[0]
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["feedback"]["persistentVolumeClaim"] == {"claimName": "fb"}
    assert volumes["feedback-token"]["secret"]["secretName"] == "tok"
    assert volumes["feedback-token"]["secret"]["items"] == [{"key": "t", "path": "token"}]
    default = build_children(make_mv(retraining={"feedbackClaim": "fb"}), CONFIG)[0]
    secret = next(v for v in default["spec"]["template"]["spec"]["volumes"] if v["name"] == "feedback-token")
    assert secret["secret"]["secretName"] == "fraud-feedback-token"


def test_resources_come_from_the_spec_or_the_operator_default(make_mv: MakeMV) -> None:
    given = _container(build_children(make_mv(resources={"limits": {"memory": "1Gi"}}), CONFIG)[0])
    assert given["resources"] == {"limits": {"memory": "1Gi"}}
    config = OperatorConfig(default_resources={"requests": {"cpu": "100m"}})
    assert _container(build_children(make_mv(), config)[0])["resources"] == {"requests": {"cpu": "100m"}}


def test_all_children_carry_the_labels_and_a_controller_owner(make_mv: MakeMV) -> None:
    mv = make_mv(replicas=3, autoscaling={"maxReplicas": 4})
    children = build_children(mv, CONFIG)
    assert sorted(o["kind"] for o in children) == [
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Service",
    ]
    for obj in children:
        labels = obj["metadata"]["labels"]
        assert labels["serving.modelfleet.dev/model"] == "fraud"
        assert labels["serving.modelfleet.dev/version"] == "1"
        for key in ("name", "instance", "version", "component", "managed-by", "part-of"):
            assert labels[f"app.kubernetes.io/{key}"]
        assert obj["metadata"]["name"] == "fraud-v1" and obj["metadata"]["namespace"] == "ml"
        assert obj["metadata"]["ownerReferences"] == [
            {
                "apiVersion": "serving.modelfleet.dev/v1alpha1",
                "kind": "ModelVersion",
                "name": "fraud-v1",
                "uid": "uid-1",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]


def test_version_service_pins_one_version_and_model_service_selects_all(make_mv: MakeMV) -> None:
    v1, v2 = make_mv(), make_mv(name="fraud-v2", uid="uid-2", version="2")
    service = build_children(v1, CONFIG)[1]
    assert service["spec"]["selector"] == {
        "serving.modelfleet.dev/model": "fraud",
        "serving.modelfleet.dev/version": "1",
    }
    assert service["spec"]["ports"][0]["port"] == 80 and service["spec"]["ports"][0]["targetPort"] == "http"
    shared = build_model_service(shared_of([v2, v1]))
    assert shared["metadata"]["name"] == "fraud"
    assert shared["spec"]["selector"] == {"serving.modelfleet.dev/model": "fraud"}
    owners = shared["metadata"]["ownerReferences"]
    assert [(o["name"], o["uid"], o["controller"]) for o in owners] == [
        ("fraud-v1", "uid-1", False),
        ("fraud-v2", "uid-2", False),
    ]
    pod_labels = build_children(v1, CONFIG)[0]["spec"]["template"]["metadata"]["labels"]
    assert shared["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_hpa_only_with_autoscaling_and_then_the_deployment_leaves_replicas_to_it(make_mv: MakeMV) -> None:
    fixed = _kinds(build_children(make_mv(replicas=3), CONFIG))
    assert fixed["Deployment"]["spec"]["replicas"] == 3 and "HorizontalPodAutoscaler" not in fixed
    auto = _kinds(build_children(make_mv(autoscaling={"minReplicas": 2, "maxReplicas": 6}), CONFIG))
    assert "replicas" not in auto["Deployment"]["spec"]
    hpa = auto["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "fraud-v1"}
    assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == 70


def test_pdb_only_when_more_than_one_replica(make_mv: MakeMV) -> None:
    assert "PodDisruptionBudget" not in _kinds(build_children(make_mv(replicas=1), CONFIG))
    pdb = _kinds(build_children(make_mv(replicas=2), CONFIG))["PodDisruptionBudget"]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"]["serving.modelfleet.dev/version"] == "1"


def test_replicas_come_from_the_traffic_plan_when_given(make_mv: MakeMV) -> None:
    mv = make_mv(replicas=4, autoscaling=None)
    assert build_children(mv, CONFIG, Scale(replicas=0))[0]["spec"]["replicas"] == 0
    scaled = _kinds(
        build_children(make_mv(autoscaling={"minReplicas": 2, "maxReplicas": 10}), CONFIG, Scale(1, (1, 3)))
    )
    assert scaled["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == 1
    assert scaled["HorizontalPodAutoscaler"]["spec"]["maxReplicas"] == 3
    parked = _kinds(build_children(make_mv(autoscaling={"maxReplicas": 10}), CONFIG, Scale(replicas=0)))
    assert parked["Deployment"]["spec"]["replicas"] == 0 and "HorizontalPodAutoscaler" not in parked


def test_without_a_uid_children_have_no_owner_references(make_mv: MakeMV) -> None:
    for obj in build_children(make_mv(uid=None), CONFIG):
        assert "ownerReferences" not in obj["metadata"]


def test_a_runtime_image_outside_the_allowed_images_is_rejected_with_what_to_do(make_mv: MakeMV) -> None:
    with pytest.raises(ImageNotAllowed, match=r"not an allowed image.*ghcr.io/modelfleet/runtime") as err:
        build_children(make_mv(runtimeImage="docker.io/evil/miner:latest"), CONFIG)
    assert err.value.reason == "ImageNotAllowed"
    with pytest.raises(ImageNotAllowed):
        build_children(make_mv(runtimeImage="ghcr.io/modelfleet/runtime-evil:1"), CONFIG)
    ok = build_children(make_mv(runtimeImage="ghcr.io/modelfleet/runtime@sha256:" + "a" * 64), CONFIG)
    assert _container(ok[0])["image"].startswith("ghcr.io/modelfleet/runtime@sha256:")


def test_a_trainer_image_outside_the_allowed_images_is_rejected(make_mv: MakeMV) -> None:
    mv = make_mv(retraining={"feedbackClaim": "fb", "image": "python:3.12", "command": ["python", "-c", "1"]})
    with pytest.raises(ImageNotAllowed, match=r"spec.retraining.image"):
        build_children(mv, CONFIG)
    allowed = OperatorConfig(
        allowed_images=("ghcr.io/modelfleet/runtime", "python:3.12"), allowed_trainer_images=("python:3.12",)
    )
    assert build_children(mv, allowed)


def test_a_uri_scheme_the_operator_does_not_allow_is_rejected(make_mv: MakeMV) -> None:
    config = OperatorConfig(allowed_uri_schemes=("https", "pvc"))
    with pytest.raises(UriSchemeNotAllowed, match=r"http://.*allowed-uri-schemes: https://, pvc://") as err:
        build_children(make_mv(source={"uri": "http://insecure/model.onnx"}), config)
    assert err.value.reason == "UriSchemeNotAllowed"


def test_a_version_named_like_its_model_is_rejected(make_mv: MakeMV) -> None:
    with pytest.raises(SpecRejected, match="shared Service"):
        build_children(make_mv(name="fraud"), CONFIG)


def test_an_invalid_spec_is_rejected_naming_the_field(make_mv: MakeMV) -> None:
    with pytest.raises(SpecRejected, match=r"spec\.traffic") as err:
        build_children(make_mv(traffic=101), CONFIG)
    assert err.value.reason == "InvalidSpec"


def test_building_twice_gives_identical_manifests(make_mv: MakeMV) -> None:
    assert build_children(make_mv(**FULL_SPEC), CONFIG) == build_children(make_mv(**FULL_SPEC), CONFIG)


def test_status_helpers(make_mv: MakeMV) -> None:
    mv = make_mv()
    config = OperatorConfig(cluster_domain="k8s.local")
    assert version_endpoint(mv, config) == "http://fraud-v1.ml.svc.k8s.local"
    assert endpoint("fraud", "ml", config) == "http://fraud.ml.svc.k8s.local"
    assert label_selector(mv) == "serving.modelfleet.dev/model=fraud,serving.modelfleet.dev/version=1"


def test_the_model_endpoint_in_gateway_mode_is_the_models_hostname_on_the_gateway() -> None:
    config = OperatorConfig(routing="gateway", gateway="infra/public", gateway_domain="models.example.org")
    assert endpoint("fraud", "ml", config) == "http://fraud-ml.models.example.org"


def test_versions_being_deleted_do_not_own_the_shared_service(make_mv: MakeMV) -> None:
    v1 = make_mv(traffic=50)
    v2 = make_mv(name="fraud-v2", uid="uid-2", version="2", traffic=50)
    v2["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    for shared in build_model_objects(shared_of([v1, v2])):
        assert [o["name"] for o in shared["metadata"]["ownerReferences"]] == ["fraud-v1"]


def test_gateway_mode_adds_the_httproute(make_mv: MakeMV) -> None:
    config = OperatorConfig(routing="gateway", gateway="infra/public")
    kinds = ["Service", "HTTPRoute", "NetworkPolicy"]
    assert [m["kind"] for m in build_model_objects(shared_of([make_mv()], config))] == kinds


GRPC = frozenset({"GRPCRoute"})


def test_both_services_expose_http_and_grpc_with_their_app_protocols(make_mv: MakeMV) -> None:
    v1 = make_mv()
    version_service = build_children(v1, CONFIG)[1]
    model_service = build_model_service(shared_of([v1]))
    for service in (version_service, model_service):
        assert service["spec"]["ports"] == [
            {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"},
            {"name": "grpc", "port": 8081, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"},
        ]
    # The target ports name container ports of the runtime, which serves gRPC where the env says.
    container = _container(build_children(v1, CONFIG)[0])
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8080, "grpc": 8081}
    assert _env(container)["MODELFLEET_GRPC_PORT"] == "8081"


def test_gateway_mode_adds_a_grpcroute_only_where_the_cluster_serves_it(make_mv: MakeMV) -> None:
    gateway = OperatorConfig(routing="gateway", gateway="infra/public")
    kinds = [m["kind"] for m in build_model_objects(shared_of([make_mv()], gateway, served=GRPC))]
    assert kinds == ["Service", "HTTPRoute", "GRPCRoute", "NetworkPolicy"]
    assert build_grpcroute(shared_of([make_mv()], gateway)) is None  # no GRPCRoute CRD in the cluster
    assert build_grpcroute(shared_of([make_mv()], CONFIG, served=GRPC)) is None  # service mode


def test_the_grpcroute_splits_like_the_httproute_on_the_grpc_port(
    make_mv: MakeMV, grpcroute_validator: jsonschema.Validator, httproute_validator: jsonschema.Validator
) -> None:
    config = OperatorConfig(routing="gateway", gateway="infra/public", gateway_domain="models.example.org")
    versions = [
        make_mv(),
        make_mv(name="fraud-v2", uid="uid-2", version="2"),
        make_mv(name="fraud-v3", uid="uid-3", version="3"),
    ]
    shared = shared_of(versions, config, served=GRPC, **{"fraud-v1": 80, "fraud-v2": 20})
    grpc, http = build_grpcroute(shared), build_httproute(shared)
    assert grpc is not None and http is not None
    assert [e.message for e in grpcroute_validator.iter_errors(grpc)] == []
    assert [e.message for e in httproute_validator.iter_errors(http)] == []
    assert grpc["metadata"] == http["metadata"]
    assert (
        grpc["spec"]["parentRefs"]
        == http["spec"]["parentRefs"]
        == [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public", "namespace": "infra"}]
    )
    assert grpc["spec"]["hostnames"] == http["spec"]["hostnames"] == ["fraud-ml.models.example.org"]

    def backends(route: dict[str, Any]) -> list[list[tuple[str, int, int]]]:
        return [[(b["name"], b["port"], b["weight"]) for b in r["backendRefs"]] for r in route["spec"]["rules"]]

    assert backends(grpc) == [
        [("fraud-v1", 8081, 1)],
        [("fraud-v2", 8081, 1)],
        [("fraud-v3", 8081, 1)],
        [("fraud-v1", 8081, 80), ("fraud-v2", 8081, 20)],
    ]
    assert [[(n, w) for n, _, w in rule] for rule in backends(grpc)] == [
        [(n, w) for n, _, w in rule] for rule in backends(http)
    ]
    pins = [r["matches"] for r in grpc["spec"]["rules"][:-1]]
    assert pins == [[{"headers": [{"type": "Exact", "name": "x-model-version", "value": v}]}] for v in "123"]
    assert "matches" not in grpc["spec"]["rules"][-1]  # no matches: every method of every service


def test_render_groups_versions_by_model_and_splits_their_traffic(make_mv: MakeMV) -> None:
    objs = [
        make_mv(name="fraud-v1", replicas=4, traffic=90),
        make_mv(name="fraud-v2", version="2", replicas=4, traffic=10),
        make_mv(name="churn-v1", model="churn", uid="uid-3"),
    ]
    rendered = render_manifests(objs, CONFIG)
    names = [(o["kind"], o["metadata"]["name"]) for o in rendered]
    churn = [("Service", "churn"), ("NetworkPolicy", "churn"), ("Deployment", "churn-v1"), ("Service", "churn-v1")]
    assert names[:4] == churn
    deployments = {o["metadata"]["name"]: o["spec"]["replicas"] for o in rendered if o["kind"] == "Deployment"}
    assert deployments == {"churn-v1": 1, "fraud-v1": 4, "fraud-v2": 1}  # ceil(4 * 10 / 100)


def test_only_versions_being_deleted_build_no_shared_object(make_mv: MakeMV) -> None:
    gone = make_mv()
    gone["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    assert build_model_objects(shared_of([gone])) == []
