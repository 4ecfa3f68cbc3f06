"""What the operator creates for ModelVersions, as pure functions returning plain dicts.

`build_children(mv, config, scale)` gives one version's Deployment, Service,
HorizontalPodAutoscaler and PodDisruptionBudget, with the replicas the model's
traffic plan gives it (`core.model`). The objects the versions of a model share
are built in `core.model_objects`. The model reconciler and `modelfleet-operator
render` call the same functions.

Rules the schema cannot express (images and URI schemes the operator's
configuration allows) raise `SpecRejected`; the handlers map it to phase Failed
with `reason` and the message, which says what to change.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from modelfleet_operator import spec as crd
from modelfleet_operator.config import OperatorConfig, image_allowed
from modelfleet_operator.core import policy
from modelfleet_operator.core.errors import SpecRejected
from modelfleet_operator.core.policy import UriSchemeNotAllowed
from modelfleet_operator.core.traffic import GRPC_SERVICE_PORT, SERVICE_PORT, Scale, scale_from_spec
from modelfleet_operator.core.workers import plan_workers
from modelfleet_operator.spec import ModelVersionSpec, SpecError, parse_spec

LABEL_MODEL = f"{crd.GROUP}/model"
TEMPLATE_ANNOTATION = f"{crd.GROUP}/template"
LABEL_VERSION = f"{crd.GROUP}/version"
MANAGED_BY = "modelfleet-operator"
PART_OF = "modelfleet"

RUNTIME_COMMAND = ["modelfleet-runtime", "serve"]
CONTAINER_NAME = "runtime"
CONTAINER_PORT = 8080
PORT_NAME = "http"
# The runtime's Open Inference Protocol gRPC service (--grpc-port).
GRPC_CONTAINER_PORT = 8081
GRPC_PORT_NAME = "grpc"
RUNTIME_UID = 10001
MODEL_ROOT = "/mnt/models"
CACHE_DIR = "/var/cache/modelfleet"
FEEDBACK_DIR = "/var/lib/modelfleet/feedback"
FEEDBACK_TOKEN_DIR = "/var/run/secrets/modelfleet/feedback"
FEEDBACK_TOKEN_FILE = f"{FEEDBACK_TOKEN_DIR}/token"
PREDICT_TOKEN_DIR = "/var/run/secrets/modelfleet/predict"
PREDICT_TOKEN_FILE = f"{PREDICT_TOKEN_DIR}/token"
FEATURE_PASSWORD_DIR = "/var/run/secrets/modelfleet/feature-store"
FEATURE_PASSWORD_FILE = f"{FEATURE_PASSWORD_DIR}/password"
# Room in the download emptyDir beyond the largest model (the runtime's partial-file bookkeeping).
CACHE_SLACK_BYTES = 64 * 1024 * 1024
READY_PATH = "/v2/health/ready"
LIVE_PATH = "/v2/health/live"
# SIGTERM handling: the endpoint is removed while the preStop sleep runs, then the
# runtime drains its queue for at most DRAIN_SECONDS; the grace period covers both.
PRESTOP_SLEEP_SECONDS = 5
DRAIN_SECONDS = 30
TERMINATION_GRACE_SECONDS = PRESTOP_SLEEP_SECONDS + DRAIN_SECONDS + 10
# The startup probe allows this long for the first answer (slow image pulls are not
# counted; slow model downloads and slow imports are).
STARTUP_PERIOD_SECONDS = 10
STARTUP_FAILURE_THRESHOLD = 60
PROGRESS_DEADLINE_SECONDS = STARTUP_PERIOD_SECONDS * STARTUP_FAILURE_THRESHOLD + 300


class ImageNotAllowed(SpecRejected):
    reason = "ImageNotAllowed"


# --- reading a ModelVersion object -------------------------------------------


def version_spec(mv: Mapping[str, Any]) -> ModelVersionSpec:
    """The validated spec of a ModelVersion object; SpecRejected when the schema would reject it."""
    try:
        return parse_spec(mv.get("spec") or {})
    except SpecError as err:
        raise SpecRejected(str(err)) from None


def _meta(mv: Mapping[str, Any]) -> Mapping[str, Any]:
    return mv.get("metadata") or {}


def _name(mv: Mapping[str, Any]) -> str:
    return str(_meta(mv)["name"])


def namespace_of(mv: Mapping[str, Any]) -> str:
    return str(_meta(mv).get("namespace") or "default")


def check_policy(name: str, spec: ModelVersionSpec, config: OperatorConfig) -> None:
    """Rules of the operator's configuration and of naming that the CRD schema cannot check."""
    if name == spec.model:
        raise SpecRejected(
            f"metadata.name {name!r} equals spec.model: the model's shared Service uses that name; "
            f"rename the ModelVersion, for example to {spec.model}-v{spec.version}"
        )
    allowed = ", ".join(config.allowed_images)
    if spec.runtime_image and not image_allowed(spec.runtime_image, config.allowed_images):
        raise ImageNotAllowed(
            f"spec.runtimeImage {spec.runtime_image!r} is not an allowed image (allowed: {allowed}); "
            "remove runtimeImage to use the default, or ask the operator's administrator to allow it"
        )
    trainer = spec.retraining.image if spec.retraining else None
    if trainer and not image_allowed(trainer, config.allowed_images):
        raise ImageNotAllowed(
            f"spec.retraining.image {trainer!r} is not an allowed image (allowed: {allowed}); "
            "remove it to train with the runtime image, or ask the operator's administrator to allow it"
        )
    policy.check(spec, config)


def validated(mv: Mapping[str, Any], config: OperatorConfig) -> ModelVersionSpec:
    """version_spec + check_policy: everything that makes a version Failed before it runs."""
    spec = version_spec(mv)
    check_policy(_name(mv), spec, config)
    return spec


# --- labels and owners --------------------------------------------------------


def selector_labels(model: str, version: str) -> dict[str, str]:
    return {LABEL_MODEL: model, LABEL_VERSION: version}


def label_selector(mv: Mapping[str, Any]) -> str:
    """The version's pods as a selector string (status.selector, for the scale subresource)."""
    spec = mv["spec"]
    return ",".join(f"{k}={v}" for k, v in selector_labels(spec["model"], str(spec["version"])).items())


def version_labels(name: str, spec: ModelVersionSpec) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": spec.model,
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/version": spec.version,
        "app.kubernetes.io/component": "inference-server",
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_MODEL: spec.model,
        LABEL_VERSION: spec.version,
    }


def model_labels(model: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": model,
        "app.kubernetes.io/instance": model,
        "app.kubernetes.io/component": "model-endpoint",
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_MODEL: model,
    }


def owner_reference(mv: Mapping[str, Any], *, controller: bool = True) -> dict[str, Any] | None:
    """An ownerReference to the ModelVersion; None when it has no uid yet (render from a file)."""
    uid = _meta(mv).get("uid")
    if not uid:
        return None
    return {
        "apiVersion": crd.API_VERSION,
        "kind": crd.KIND,
        "name": _name(mv),
        "uid": str(uid),
        "controller": controller,
        "blockOwnerDeletion": controller,
    }


def _metadata(
    name: str, namespace: str, labels: Mapping[str, str], owners: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if owners:
        meta["ownerReferences"] = [dict(o) for o in owners]
    return meta


def version_endpoint(mv: Mapping[str, Any], config: OperatorConfig) -> str:
    """status.versionEndpoint: the URL of the version's own Service."""
    return f"http://{_name(mv)}.{namespace_of(mv)}.svc.{config.cluster_domain}"


# --- the runtime pod ----------------------------------------------------------


@dataclass
class PodParts:
    """Env, volumes and mounts a feature of the spec adds to the runtime pod."""

    env: list[dict[str, Any]] = field(default_factory=list)
    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)

    def extend(self, other: PodParts) -> None:
        self.env.extend(other.env)
        self.volumes.extend(other.volumes)
        self.mounts.extend(other.mounts)


def _env(name: str, value: Any) -> dict[str, Any]:
    return {"name": name, "value": str(value)}


def runtime_image(spec: ModelVersionSpec, config: OperatorConfig) -> str:
    return spec.runtime_image or config.runtime_image


def source_parts(spec: ModelVersionSpec) -> PodParts:
    """The model source: env for the runtime and, for pvc:// and configmap://, a read-only volume
    at MODEL_ROOT/pvc/CLAIM or MODEL_ROOT/configmap/NAME (where the runtime looks for them)."""
    parts = PodParts(env=[_env("MODELFLEET_MODEL", spec.source.uri)])
    if spec.source.sha256:
        parts.env.append(_env("MODELFLEET_SHA256", spec.source.sha256.lower()))
    uri = urlsplit(spec.source.uri)
    if uri.scheme == "pvc":
        parts.volumes.append(
            {"name": "model-pvc", "persistentVolumeClaim": {"claimName": uri.netloc, "readOnly": True}}
        )
        parts.mounts.append({"name": "model-pvc", "mountPath": f"{MODEL_ROOT}/pvc/{uri.netloc}", "readOnly": True})
    elif uri.scheme == "configmap":
        parts.volumes.append({"name": "model-configmap", "configMap": {"name": uri.netloc}})
        parts.mounts.append(
            {"name": "model-configmap", "mountPath": f"{MODEL_ROOT}/configmap/{uri.netloc}", "readOnly": True}
        )
    return parts


def feature_parts(spec: ModelVersionSpec) -> PodParts:
    """Real-time feature lookup (DESIGN.md section 4); the password only ever comes from a Secret."""
    features = spec.features
    if features is None:
        return PodParts()
    env = [
        _env("MODELFLEET_FEATURE_STORE", features.redis.url),
        _env("MODELFLEET_FEATURE_PREFIX", features.redis.key_prefix),
        _env("MODELFLEET_FEATURE_FIELDS", ",".join(features.fields)),
        _env("MODELFLEET_FEATURE_CACHE_TTL", features.cache_ttl_seconds),
        _env("MODELFLEET_FEATURE_CACHE_SIZE", features.cache_size),
    ]
    parts = PodParts(env=env)
    ref = features.redis.password_secret_ref
    if ref is not None:
        # A file rather than a variable: it is not in the process environment, nor in `kubectl describe`.
        parts.extend(_secret_file("feature-store-password", ref.name, ref.key, FEATURE_PASSWORD_FILE))
        parts.env.append(_env("MODELFLEET_FEATURE_STORE_PASSWORD_FILE", FEATURE_PASSWORD_FILE))
    return parts


def _secret_file(volume: str, secret: str, key: str, path: str) -> PodParts:
    """One key of a Secret as a read-only file at `path` (its folder is the mount)."""
    folder, _, filename = path.rpartition("/")
    return PodParts(
        volumes=[
            {
                "name": volume,
                "secret": {"secretName": secret, "items": [{"key": key, "path": filename}], "defaultMode": 0o440},
            }
        ],
        mounts=[{"name": volume, "mountPath": folder, "readOnly": True}],
    )


def predict_token_parts(spec: ModelVersionSpec) -> PodParts:
    """spec.predictToken: the bearer token predictions need, as a file the runtime re-reads on change."""
    ref = spec.predict_token
    if ref is None:
        return PodParts()
    parts = _secret_file("predict-token", ref.name, ref.key, PREDICT_TOKEN_FILE)
    parts.env.append(_env("MODELFLEET_PREDICT_TOKEN_FILE", PREDICT_TOKEN_FILE))
    return parts


def download_parts(config: OperatorConfig) -> PodParts:
    """The download rules the operator enforces, handed to the runtime so both agree, and the cache
    folder the downloads land in, an emptyDir no larger than the largest model allowed."""
    env = [
        _env("MODELFLEET_ALLOWED_URI_SCHEMES", ",".join(config.allowed_uri_schemes)),
        _env("MODELFLEET_MAX_MODEL_BYTES", config.max_model_bytes),
        _env("MODELFLEET_DOWNLOAD_TIMEOUT_SECONDS", f"{config.download_timeout_seconds:g}"),
        _env("MODELFLEET_CACHE_DIR", CACHE_DIR),
    ]
    if config.download_allowed_networks:
        env.append(_env("MODELFLEET_DOWNLOAD_ALLOWED_NETWORKS", ",".join(config.download_allowed_networks)))
    limit = -(-(config.max_model_bytes + CACHE_SLACK_BYTES) // (1024 * 1024))
    return PodParts(
        env=env,
        volumes=[{"name": "cache", "emptyDir": {"sizeLimit": f"{limit}Mi"}}],
        mounts=[{"name": "cache", "mountPath": CACHE_DIR}],
    )


def feedback_token_secret(spec: ModelVersionSpec) -> tuple[str, str]:
    """(Secret name, key) of the feedback token: the one named in the spec, else MODEL-feedback-token/token,
    which the operator creates with a random token when it is missing."""
    ref = spec.retraining.token_secret_ref if spec.retraining else None
    if ref is not None:
        return ref.name, ref.key
    return f"{spec.model}-feedback-token", "token"


def retraining_parts(spec: ModelVersionSpec) -> PodParts:
    """Online learning (DESIGN.md section 5): the shared feedback volume, writable, and the token
    POST /feedback requires, mounted from its Secret."""
    if spec.retraining is None:
        return PodParts()
    secret_name, secret_key = feedback_token_secret(spec)
    return PodParts(
        env=[
            _env("MODELFLEET_FEEDBACK_DIR", FEEDBACK_DIR),
            _env("MODELFLEET_FEEDBACK_TOKEN_FILE", FEEDBACK_TOKEN_FILE),
        ],
        volumes=[
            {"name": "feedback", "persistentVolumeClaim": {"claimName": spec.retraining.feedback_claim}},
            {
                "name": "feedback-token",
                "secret": {
                    "secretName": secret_name,
                    "items": [{"key": secret_key, "path": "token"}],
                    "defaultMode": 0o440,
                },
            },
        ],
        mounts=[
            {"name": "feedback", "mountPath": FEEDBACK_DIR},
            {"name": "feedback-token", "mountPath": FEEDBACK_TOKEN_DIR, "readOnly": True},
        ],
    )


def runtime_env(name: str, spec: ModelVersionSpec) -> list[dict[str, Any]]:
    """The settings every runtime container gets (modelfleet_runtime.settings reads MODELFLEET_*)."""
    del name  # the runtime learns its identity from the model and version, not the object name
    return [
        _env("MODELFLEET_NAME", spec.model),
        _env("MODELFLEET_MODEL_VERSION", spec.version),
        _env("MODELFLEET_HOST", "0.0.0.0"),
        _env("MODELFLEET_PORT", CONTAINER_PORT),
        _env("MODELFLEET_GRPC_PORT", GRPC_CONTAINER_PORT),
        _env("MODELFLEET_MAX_BATCH_SIZE", spec.batching.max_batch_size),
        _env("MODELFLEET_MAX_LATENCY_MS", spec.batching.max_latency_ms),
        _env("MODELFLEET_MAX_QUEUE", spec.batching.max_queue),
        _env("MODELFLEET_WARMUP_ITERATIONS", spec.warmup.iterations),
        _env("MODELFLEET_MODEL_ROOT", MODEL_ROOT),
        _env("MODELFLEET_DRAIN_TIMEOUT_SECONDS", DRAIN_SECONDS),
    ]


def pod_parts(name: str, spec: ModelVersionSpec) -> PodParts:
    parts = PodParts(
        env=runtime_env(name, spec),
        volumes=[{"name": "tmp", "emptyDir": {}}],
        mounts=[{"name": "tmp", "mountPath": "/tmp"}],
    )
    for extra in (source_parts(spec), feature_parts(spec), retraining_parts(spec), predict_token_parts(spec)):
        parts.extend(extra)
    return parts


def container_resources(spec: ModelVersionSpec, config: OperatorConfig) -> dict[str, Any]:
    """The runtime container's resources: the spec's, else the operator's default."""
    return spec.resources.to_manifest() if spec.resources else dict(config.default_resources)


def worker_parts(spec: ModelVersionSpec, config: OperatorConfig) -> PodParts:
    """The runtime's worker processes and their threads, from the CPU request (`core.workers`)."""
    override = spec.runtime.workers if spec.runtime else None
    plan = plan_workers(container_resources(spec, config), override)
    env = [_env("MODELFLEET_WORKERS", plan.workers)]
    if plan.intra_op_threads is not None:
        env.append(_env("MODELFLEET_INTRA_OP_THREADS", plan.intra_op_threads))
    return PodParts(env=env)


def _probe(path: str, *, period: int, failures: int, timeout: int = 2) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": PORT_NAME},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


def runtime_container(name: str, spec: ModelVersionSpec, config: OperatorConfig, parts: PodParts) -> dict[str, Any]:
    resources = container_resources(spec, config)
    return {
        "name": CONTAINER_NAME,
        "image": runtime_image(spec, config),
        "command": list(RUNTIME_COMMAND),
        "ports": [
            {"name": PORT_NAME, "containerPort": CONTAINER_PORT, "protocol": "TCP"},
            {"name": GRPC_PORT_NAME, "containerPort": GRPC_CONTAINER_PORT, "protocol": "TCP"},
        ],
        "env": parts.env,
        "volumeMounts": parts.mounts,
        "resources": resources,
        # Ready only once the model is loaded and warmed up (503 with a reason until then).
        "readinessProbe": _probe(READY_PATH, period=5, failures=3),
        "livenessProbe": _probe(LIVE_PATH, period=10, failures=3),
        # Liveness starts only after this passes, so a slow start is not a crash loop.
        "startupProbe": _probe(LIVE_PATH, period=STARTUP_PERIOD_SECONDS, failures=STARTUP_FAILURE_THRESHOLD),
        # Keep serving while kube-proxy and gateways drop the endpoint; SIGTERM then drains.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_SECONDS}}},
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


# --- the objects of one version -----------------------------------------------


def pod_security_context() -> dict[str, Any]:
    """The pod-level side of those defaults (the fixed non-root UID, its group owning the volumes)."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUNTIME_UID,
        "runAsGroup": RUNTIME_UID,
        "fsGroup": RUNTIME_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """The hardened container defaults of DESIGN.md section 9, shared by runtime and trainer pods."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUNTIME_UID,
        "runAsGroup": RUNTIME_UID,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def build_deployment(mv: Mapping[str, Any], config: OperatorConfig, scale: Scale | None = None) -> dict[str, Any]:
    """The runtime Deployment, named like the ModelVersion.

    With an HPA (`scale.autoscaling`) `replicas` is left out so that applying the
    manifest never fights the autoscaler.
    """
    spec = validated(mv, config)
    name = _name(mv)
    scale = scale or default_scale(spec)
    labels = version_labels(name, spec)
    selector = selector_labels(spec.model, spec.version)
    parts = pod_parts(name, spec)
    parts.extend(download_parts(config))
    parts.extend(worker_parts(spec, config))
    owner = owner_reference(mv)
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector},
        # Old pods keep serving until new ones are Ready.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "revisionHistoryLimit": 3,
        "progressDeadlineSeconds": PROGRESS_DEADLINE_SECONDS,
        "template": {
            "metadata": {"labels": labels},
            "spec": {
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
                "securityContext": pod_security_context(),
                "containers": [runtime_container(name, spec, config, parts)],
                "volumes": parts.volumes,
            },
        },
    }
    if scale.autoscaling is None:
        deployment_spec = {"replicas": scale.replicas, **deployment_spec}
    metadata = _metadata(name, namespace_of(mv), labels, [owner] if owner else [])
    # Which spec the pods run, whatever their count: a rollout of a new spec is seen by it.
    metadata["annotations"] = {TEMPLATE_ANNOTATION: template_hash(deployment_spec["template"])}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata, "spec": deployment_spec}


def template_hash(template: Mapping[str, Any]) -> str:
    """A short, stable hash of a pod template."""
    return hashlib.sha256(json.dumps(template, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def runs_current_spec(deployment: Mapping[str, Any] | None, mv: Mapping[str, Any], config: OperatorConfig) -> bool:
    """Whether the live Deployment's template is the one the version's current spec builds."""
    if deployment is None:
        return False
    annotations = (deployment.get("metadata") or {}).get("annotations") or {}
    wanted = build_deployment(mv, config)["metadata"]["annotations"][TEMPLATE_ANNOTATION]
    return bool(annotations.get(TEMPLATE_ANNOTATION) == wanted)


def service_ports() -> list[dict[str, Any]]:
    """The ports of the version and model Services: HTTP (REST, KServe V1/V2) on 80 and the Open
    Inference Protocol's gRPC on 8081, each marked with its appProtocol for meshes and gateways."""
    return [
        {"name": PORT_NAME, "port": SERVICE_PORT, "targetPort": PORT_NAME, "protocol": "TCP", "appProtocol": "http"},
        {
            "name": GRPC_PORT_NAME,
            "port": GRPC_SERVICE_PORT,
            "targetPort": GRPC_PORT_NAME,
            "protocol": "TCP",
            "appProtocol": "grpc",
        },
    ]


def _service_spec(selector: Mapping[str, str]) -> dict[str, Any]:
    return {"type": "ClusterIP", "selector": dict(selector), "ports": service_ports()}


def _version_metadata(mv: Mapping[str, Any], spec: ModelVersionSpec) -> dict[str, Any]:
    """Metadata of an object named like the version, labelled for it and owned by it."""
    name = _name(mv)
    owner = owner_reference(mv)
    return _metadata(name, namespace_of(mv), version_labels(name, spec), [owner] if owner else [])


def build_version_service(mv: Mapping[str, Any], config: OperatorConfig) -> dict[str, Any]:
    """The Service named like the ModelVersion: reaches only this version (pinning)."""
    spec = validated(mv, config)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _version_metadata(mv, spec),
        "spec": _service_spec(selector_labels(spec.model, spec.version)),
    }


def build_hpa(mv: Mapping[str, Any], config: OperatorConfig, scale: Scale | None = None) -> dict[str, Any] | None:
    """The HorizontalPodAutoscaler of the Deployment, with the bounds of `scale` (None without one)."""
    spec = validated(mv, config)
    scale = scale or default_scale(spec)
    if scale.autoscaling is None or spec.autoscaling is None:
        return None
    name = _name(mv)
    low, high = scale.autoscaling
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _version_metadata(mv, spec),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": low,
            "maxReplicas": high,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": spec.autoscaling.target_cpu_utilization,
                        },
                    },
                }
            ],
        },
    }


def build_pdb(mv: Mapping[str, Any], config: OperatorConfig, scale: Scale | None = None) -> dict[str, Any] | None:
    """A PodDisruptionBudget (one pod at a time) when the version may run more than one pod."""
    spec = validated(mv, config)
    scale = scale or default_scale(spec)
    most = scale.autoscaling[1] if scale.autoscaling else scale.replicas
    if most <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _version_metadata(mv, spec),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(spec.model, spec.version)},
            # A pod that never loaded its model must not block node drains.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def default_scale(spec: ModelVersionSpec) -> Scale:
    auto = (spec.autoscaling.min_replicas, spec.autoscaling.max_replicas) if spec.autoscaling else None
    return scale_from_spec(spec.replicas, auto)


def build_children(mv: Mapping[str, Any], config: OperatorConfig, scale: Scale | None = None) -> list[dict[str, Any]]:
    """Everything one ModelVersion owns alone: Deployment, Service, and HPA and PDB when they apply.

    `scale` comes from the traffic plan (`plan_model(...).scales[name]`); default:
    the spec's replicas. An HPA or PDB missing from the list must be deleted if it exists.
    Raises SpecRejected for a spec the operator will not serve.
    """
    validated(mv, config)
    children = [build_deployment(mv, config, scale), build_version_service(mv, config)]
    optional = (build_hpa(mv, config, scale), build_pdb(mv, config, scale))
    return children + [child for child in optional if child is not None]


__all__ = [
    "ImageNotAllowed",
    "PodParts",
    "SpecRejected",
    "UriSchemeNotAllowed",
    "build_children",
    "build_deployment",
    "build_hpa",
    "build_pdb",
    "build_version_service",
    "check_policy",
    "container_resources",
    "default_scale",
    "download_parts",
    "feature_parts",
    "feedback_token_secret",
    "label_selector",
    "model_labels",
    "owner_reference",
    "predict_token_parts",
    "retraining_parts",
    "runs_current_spec",
    "runtime_env",
    "selector_labels",
    "service_ports",
    "source_parts",
    "template_hash",
    "validated",
    "version_endpoint",
    "version_labels",
    "worker_parts",
]
