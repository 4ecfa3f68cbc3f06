"""The ModelVersion custom resource as pydantic models, and the CRD generated from them.

The pydantic models are the one source: `crd_manifest()` walks them and writes
the structural OpenAPI schema of `crds/modelversion.yaml` (descriptions,
defaults, enums, ranges, patterns and CEL rules included), so the Python view of
a spec and what the API server accepts cannot drift. Regenerate the file with
`modelfleet-operator crd > crds/modelversion.yaml`; a test fails when it is stale.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

GROUP = "serving.modelfleet.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelVersion"
PLURAL = "modelversions"
SINGULAR = "modelversion"
SHORT_NAMES = ("mv",)
CATEGORIES = ("modelfleet",)

# A Service name: DNS-1035 label (starts with a letter, at most 63 characters).
DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
# A PersistentVolumeClaim, ConfigMap or Secret name: DNS-1123 subdomain.
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# A label value (the version ends up in labels and in the x-model-version header).
LABEL_VALUE = r"^[A-Za-z0-9]([-_.A-Za-z0-9]{0,61}[A-Za-z0-9])?$"
SHA256_HEX = r"^[A-Fa-f0-9]{64}$"
_NAME = r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?"
# The schemes the runtime can load from; the operator's configuration may allow fewer.
SOURCE_URI = (
    r"^(https?://[^\s/]+(/\S*)?"
    rf"|pvc://{_NAME}/\S+"
    rf"|configmap://{_NAME}/[-._A-Za-z0-9]+"
    r"|file:///\S+)$"
)
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"
QUANTITY = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
IMAGE_REF = r"^\S*$"


class _IntOrString:
    """Marker: the field is a Kubernetes int-or-string (a resource quantity)."""


Quantity = Annotated[int | Annotated[str, Field(pattern=QUANTITY)], _IntOrString()]


def _rule(rule: str, message: str) -> dict[str, str]:
    return {"rule": rule, "message": message}


def _immutable(what: str) -> JsonDict:
    """The json_schema_extra of a field that keeps the value it was created with."""
    rule: JsonDict = {"rule": "self == oldSelf", "message": f"{what} is immutable"}
    return {"x-kubernetes-validations": [rule]}


class _Spec(BaseModel):
    """Base of every part of the resource: camelCase keys, unknown keys rejected."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True, strict=True)
    # CEL rules of the object (x-kubernetes-validations); mirrored by a model_validator.
    cel_rules: ClassVar[tuple[dict[str, str], ...]] = ()

    def to_manifest(self) -> dict[str, Any]:
        """The object as the API server would store it (camelCase keys, defaults filled in)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class SecretKeyRef(_Spec):
    name: str = Field(
        description="Name of a Secret in the ModelVersion's namespace.",
        max_length=253,
        pattern=DNS1123_SUBDOMAIN,
    )
    key: str = Field(
        description="Key in the Secret whose value is used.",
        max_length=253,
        pattern=SECRET_KEY,
    )


class TokenSecretRef(_Spec):
    name: str = Field(
        description="Name of a Secret in the ModelVersion's namespace holding the bearer token.",
        max_length=253,
        pattern=DNS1123_SUBDOMAIN,
    )
    key: str = Field(
        "token",
        description="Key in the Secret whose value is the token.",
        max_length=253,
        pattern=SECRET_KEY,
    )


class Source(_Spec):
    uri: str = Field(
        description=(
            "Where the ONNX model is loaded from: https://HOST/PATH, http://HOST/PATH, "
            "pvc://CLAIM/PATH (the claim is mounted read-only), configmap://NAME/KEY "
            "(the ConfigMap is mounted read-only; put the model in binaryData), or "
            "file:///PATH inside the runtime image. By default the operator allows https, pvc "
            "and configmap (http and file only when its allowed-uri-schemes lists them) and may "
            "limit the hosts (allowed-model-hosts); a version with another is Failed."
        ),
        max_length=2048,
        pattern=SOURCE_URI,
    )
    sha256: str | None = Field(
        None,
        description=(
            "Expected SHA-256 of the model file, 64 hexadecimal characters. On a "
            "mismatch the model is never loaded and the version never serves."
        ),
        pattern=SHA256_HEX,
    )


class Autoscaling(_Spec):
    cel_rules = (_rule("self.minReplicas <= self.maxReplicas", "minReplicas must not exceed maxReplicas"),)

    min_replicas: int = Field(
        1,
        description="Fewest replicas the HorizontalPodAutoscaler keeps (at full traffic share).",
        ge=1,
        le=1000,
    )
    max_replicas: int = Field(
        description="Most replicas the HorizontalPodAutoscaler may run (at full traffic share).",
        ge=1,
        le=1000,
    )
    target_cpu_utilization: int = Field(
        70,
        alias="targetCPUUtilization",
        description="Average CPU utilisation, in percent of the CPU request, that the autoscaler aims for.",
        ge=1,
        le=100,
    )

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas must not exceed maxReplicas")
        return self


class Batching(_Spec):
    max_batch_size: int = Field(
        32,
        description="Most rows merged into one inference call.",
        ge=1,
        le=4096,
    )
    max_latency_ms: int = Field(
        100,
        description=(
            "Longest time, in milliseconds, a request may wait for its batch to form. "
            "At low load a request does not wait for others."
        ),
        ge=0,
        le=60000,
    )
    max_queue: int = Field(
        1024,
        description="Most rows waiting per pod; beyond it requests are answered 503 with Retry-After.",
        ge=1,
        le=1000000,
    )


class Warmup(_Spec):
    iterations: int = Field(
        10,
        description=(
            "Inferences run at each served batch size before the pod reports ready; "
            "readiness comes only after warmup succeeded."
        ),
        ge=0,
        le=10000,
    )


class Runtime(_Spec):
    workers: int | None = Field(
        None,
        description=(
            "Runtime processes per pod sharing its ports (modelfleet-runtime serve --workers), each with "
            "its own model session and batcher; maxQueue applies per worker. Default: the container's "
            "CPU request in whole CPUs (at least 1; resources.limits.cpu when no request is set). Each "
            "worker's onnxruntime intra-op threads are the CPU request divided by the workers, rounded "
            "down, at least 1."
        ),
        ge=1,
        le=128,
    )


class Redis(_Spec):
    url: str = Field(
        description="Address of the Redis online store, redis://HOST:PORT/DB or rediss://HOST:PORT/DB.",
        max_length=2048,
        pattern=r"^rediss?://\S+$",
    )
    key_prefix: str = Field(
        "",
        description="Prefix of the entity hashes: the features of entity E are the hash at key keyPrefix + E.",
        max_length=256,
    )
    password_secret_ref: SecretKeyRef | None = Field(
        None,
        description=(
            "Secret key holding the Redis password, mounted into the runtime pods as a file; omit for a "
            "store without a password. The Secret must carry the label of the operator's "
            "consumable-secret-label (default serving.modelfleet.dev/consumable=true)."
        ),
    )


class Features(_Spec):
    redis: Redis = Field(description="The Redis online feature store.")
    fields: list[Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^,\s]+$")]] = Field(
        description=("Hash fields read for an entity, in the order they are placed before the request's own features."),
        min_length=1,
        max_length=1024,
    )
    cache_ttl_seconds: int = Field(
        300,
        alias="cacheTTLSeconds",
        description="Seconds an entity's features stay in the pod's cache (0 disables caching).",
        ge=0,
        le=86400,
    )
    cache_size: int = Field(
        10000,
        description="Most entities kept in each pod's feature cache.",
        ge=1,
        le=10000000,
    )


class ResourceRequirements(_Spec):
    requests: dict[str, Quantity] | None = Field(
        None,
        description="Minimum compute resources (for example cpu: 500m, memory: 1Gi).",
    )
    limits: dict[str, Quantity] | None = Field(
        None,
        description="Maximum compute resources (for example memory: 2Gi).",
    )


class Retraining(_Spec):
    cel_rules = (
        _rule(
            "!has(self.command) || has(self.image)",
            "command needs image: a custom trainer command runs only in a custom trainer image",
        ),
    )

    min_samples: int = Field(
        1000,
        description="Unconsumed feedback samples that trigger a retraining Job.",
        ge=1,
        le=100000000,
    )
    feedback_claim: str = Field(
        description=(
            "ReadWriteMany PersistentVolumeClaim shared by the servers (which append "
            "feedback to it) and the retraining Job (which reads it)."
        ),
        max_length=253,
        pattern=DNS1123_SUBDOMAIN,
    )
    canary_traffic: int = Field(
        10,
        description="Traffic share (0-100) the version produced by a successful retraining starts with.",
        ge=0,
        le=100,
    )
    auto_promote: bool = Field(
        False,
        description=(
            "Shift all traffic to the retrained version once it is Ready and its evaluation beats this version's."
        ),
    )
    token_secret_ref: TokenSecretRef | None = Field(
        None,
        description=(
            "Secret holding the bearer token POST /feedback requires; it must carry the label of the "
            "operator's consumable-secret-label (default serving.modelfleet.dev/consumable=true). When "
            "omitted the operator uses (and creates, with a random token) the Secret "
            "MODEL-feedback-token, key token."
        ),
    )
    image: str | None = Field(
        None,
        description=(
            "Custom trainer image; accepted only when it matches the operator's "
            "allowed images. It runs `modelfleet-runtime train` unless it also matches the operator's "
            "allowed-trainer-images. Default: the runtime image running `modelfleet-runtime train`."
        ),
        max_length=512,
        pattern=IMAGE_REF,
    )
    command: list[Annotated[str, Field(max_length=4096)]] | None = Field(
        None,
        description=(
            "Command of the custom trainer image (needs image). Accepted only when image matches the "
            "operator's allowed-trainer-images (empty by default): the trainer's report decides "
            "promotion, so only administrator-approved code may write it; otherwise the version is Failed."
        ),
        max_length=64,
    )
    resources: ResourceRequirements | None = Field(
        None,
        description="Compute resources of the retraining Job's container.",
    )

    @model_validator(mode="after")
    def _command_needs_image(self) -> Retraining:
        if self.command is not None and self.image is None:
            raise ValueError("command needs image: a custom trainer command runs only in a custom trainer image")
        return self


class Rollout(_Spec):
    max_error_rate: float = Field(
        0.05,
        description=(
            "Canary analysis of a version that is not the model's stable version (the one "
            "serving the largest share; it is never judged): the fraction (0-1, so 0.05 is "
            "5 points) by which the version's error rate within the window may exceed the "
            "stable version's in the same window. Beyond it the version's traffic is set to "
            "0 and it is marked Degraded (automatic rollback). Errors are 5xx answers other "
            "than 503: a 503 is backpressure or a shared dependency down (the feature store), "
            "and 4xx answers (499: the client went away) are the client's."
        ),
        ge=0,
        le=1,
    )
    window_seconds: int = Field(
        60,
        description="Length of the observation window, in seconds.",
        ge=10,
        le=86400,
    )
    min_requests: int = Field(
        20,
        description=(
            "Requests the version must have answered within the window before its error rate is "
            "judged, and within its analysis before it may be promoted automatically."
        ),
        ge=1,
        le=100000000,
    )
    min_analysis_seconds: int = Field(
        60,
        description=(
            "Shortest analysis before an automatic promotion (retraining.autoPromote): the "
            "version must have served its canary share this long, with at least minRequests "
            "requests, without being rolled back."
        ),
        ge=0,
        le=86400,
    )


class ModelVersionSpec(_Spec):
    model: str = Field(
        description=(
            "Name of the model (a DNS label). All versions of a model in a namespace "
            "share the Service, and in gateway mode the HTTPRoute, of this name. Immutable."
        ),
        min_length=1,
        max_length=63,
        pattern=DNS1035_LABEL,
        json_schema_extra=_immutable("model"),
    )
    version: str = Field(
        description=(
            "Version of the model, unique per model (a label value, for example 2 or "
            "2024-06-01). Reported with every prediction; pins a version through the "
            "x-model-version header in gateway mode. Immutable."
        ),
        min_length=1,
        max_length=63,
        pattern=LABEL_VALUE,
        json_schema_extra=_immutable("version"),
    )
    source: Source = Field(description="Where the model file comes from.")
    replicas: int = Field(
        1,
        description=(
            "Replicas at a traffic share of 100 (service mode scales each version to "
            "its share). Ignored when autoscaling is set. The scale subresource sets it."
        ),
        ge=0,
        le=1000,
    )
    autoscaling: Autoscaling | None = Field(
        None,
        description="Run a HorizontalPodAutoscaler instead of a fixed replica count.",
    )
    batching: Batching = Field(
        default_factory=Batching,
        description="Dynamic batching of concurrent requests.",
    )
    warmup: Warmup = Field(
        default_factory=Warmup,
        description="Inferences run before a pod reports ready.",
    )
    traffic: int = Field(
        100,
        description=(
            "Desired share (0-100) of the model's traffic. The desired shares of the "
            "Ready versions of a model are normalised to 100; a version that is not "
            "Ready gets none."
        ),
        ge=0,
        le=100,
    )
    runtime: Runtime | None = Field(
        None,
        description="How the runtime uses the pod's CPUs: worker processes (default: from the CPU request).",
    )
    features: Features | None = Field(
        None,
        description="Real-time feature lookup: requests with entity_id get features from an online store.",
    )
    retraining: Retraining | None = Field(
        None,
        description="Online learning: labelled feedback triggers retraining Jobs that produce new versions.",
    )
    rollout: Rollout | None = Field(
        None,
        description="Automatic rollback: a version whose error rate passes the threshold loses its traffic.",
    )
    resources: ResourceRequirements | None = Field(
        None,
        description="Compute resources of the runtime container. Default: the operator's configuration.",
    )
    predict_token: TokenSecretRef | None = Field(
        None,
        description=(
            "Secret holding a bearer token that predictions must carry (Authorization: Bearer TOKEN); "
            "mounted into the runtime pods as a file, re-read when the Secret changes. Omit for "
            "unauthenticated predictions. Like every Secret a ModelVersion names, it must carry the "
            "label of the operator's consumable-secret-label (default serving.modelfleet.dev/consumable=true)."
        ),
    )
    runtime_image: str | None = Field(
        None,
        description=(
            "Runtime image. Empty: the operator's default. Accepted only when it "
            "matches the operator's allowed images; otherwise the version is Failed."
        ),
        max_length=512,
        pattern=IMAGE_REF,
    )


Phase = Literal["Pending", "Loading", "Ready", "Degraded", "Failed", "Retired"]


class Condition(_Spec):
    type: str = Field(
        description=(
            "Kind of condition: Ready, Available, ModelLoaded, WarmedUp, TrafficAssigned, "
            "RetrainingTriggered, RolledBack, Promoted."
        ),
        max_length=316,
    )
    status: Literal["True", "False", "Unknown"] = Field(description="Whether the condition holds.")
    reason: str | None = Field(
        None, description="One CamelCase word saying why the condition has its status.", max_length=1024
    )
    message: str | None = Field(
        None, description="What happened and, when something is wrong, what to do.", max_length=32768
    )
    last_transition_time: str | None = Field(
        None,
        description="When the status last changed (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )
    observed_generation: int | None = Field(
        None, description="metadata.generation the condition was computed from.", ge=0
    )


class LastRetraining(_Spec):
    job: str | None = Field(None, description="Name of the retraining Job.")
    result: Literal["Running", "Succeeded", "Failed"] | None = Field(None, description="Outcome of the Job so far.")
    produced_version: str | None = Field(
        None, description="Name of the ModelVersion the Job produced, when it succeeded."
    )
    message: str | None = Field(None, description="Why the Job failed, or the evaluation it reached.")
    start_time: str | None = Field(
        None, description="When the Job was created (RFC 3339).", json_schema_extra={"format": "date-time"}
    )
    completion_time: str | None = Field(
        None, description="When the Job finished (RFC 3339).", json_schema_extra={"format": "date-time"}
    )
    samples: int | None = Field(None, description="Feedback samples the Job trained on.", ge=0)


class RolloutStatus(_Spec):
    window_start: str | None = Field(
        None,
        description="Start of the current observation window (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )
    requests_at_window_start: int | None = Field(
        None, description="Requests counted over the ready pods at the start of the window.", ge=0
    )
    errors_at_window_start: int | None = Field(
        None, description="Errors (5xx but 503) counted over the ready pods at the start of the window.", ge=0
    )
    error_rate: float | None = Field(
        None, description="Error rate (0-1) observed in the last complete judgement.", ge=0, le=1
    )
    rolled_back: bool | None = Field(
        None, description="True when the error rate passed maxErrorRate and the traffic was set to 0."
    )
    stable_version: str | None = Field(
        None, description="Name of the ModelVersion (the model's stable version) the window compares with."
    )
    stable_requests_at_window_start: int | None = Field(
        None, description="Requests counted over the stable version's ready pods at the start of the window.", ge=0
    )
    stable_errors_at_window_start: int | None = Field(
        None, description="Errors counted over the stable version's ready pods at the start of the window.", ge=0
    )
    stable_error_rate: float | None = Field(
        None, description="The stable version's error rate (0-1) in the last judged window.", ge=0, le=1
    )
    analysis_start: str | None = Field(
        None,
        description="Since when the version is analysed as a canary (RFC 3339), for minAnalysisSeconds.",
        json_schema_extra={"format": "date-time"},
    )
    analysed_requests: int | None = Field(
        None, description="Requests of the observation windows that ended since analysisStart.", ge=0
    )


class ModelVersionStatus(_Spec):
    phase: Phase | None = Field(
        None,
        description=(
            "Pending (children being created, or nothing to run), Loading (pods loading or "
            "warming up the model), Ready (serving), Degraded (serving with fewer ready "
            "replicas than desired, or rolled back), Failed (cannot serve: a rejected spec, a "
            "duplicate version, a name taken by another object, pods that cannot start; see "
            "the conditions), Retired (left at traffic 0 after serving: no replicas; raise "
            "spec.traffic to bring it back)."
        ),
    )
    conditions: list[Condition] | None = Field(
        None,
        description="Observations of the version's state, one per type.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = Field(None, description="metadata.generation this status reflects.", ge=0)
    replicas: int | None = Field(None, description="Pods of the version's Deployment.", ge=0)
    full_share_replicas: int | None = Field(
        None,
        description=(
            "The version's current replicas expressed at a traffic share of 100, the quantity "
            "spec.replicas asks for (service mode runs fewer at a smaller share): the scale "
            "subresource reports it, so an autoscaler on the ModelVersion compares like with like."
        ),
        ge=0,
    )
    ready_replicas: int | None = Field(None, description="Pods that loaded and warmed up the model.", ge=0)
    desired_replicas: int | None = Field(
        None, description="Replicas the operator asked for at the current traffic share.", ge=0
    )
    ready_text: str | None = Field(None, description="Ready and desired replicas as READY/DESIRED, for kubectl get.")
    selector: str | None = Field(None, description="Label selector of the version's pods (for the scale subresource).")
    serving_traffic: int | None = Field(
        None,
        description=(
            "Effective share (0-100) of the model's traffic after normalisation: the route's weight "
            "in gateway mode; in service mode the share its replicas are sized for."
        ),
        ge=0,
        le=100,
    )
    scale_down_at: str | None = Field(
        None,
        description=(
            "The version gave up traffic (or is left at weight 0) and keeps its replicas until then "
            "(RFC 3339): scale-down-delay-seconds after the versions taking its share were Available, "
            "or retire-after-seconds in gateway mode."
        ),
        json_schema_extra={"format": "date-time"},
    )
    endpoint: str | None = Field(
        None,
        description=(
            "URL that applies the model's traffic split: the shared Service in service mode, the "
            "model's hostname on the Gateway in gateway mode."
        ),
    )
    version_endpoint: str | None = Field(None, description="URL of this version's own Service.")
    feedback_samples: int | None = Field(
        None, description="Unconsumed feedback samples reported by the version's pods.", ge=0
    )
    last_retraining: LastRetraining | None = Field(None, description="The most recent retraining Job.")
    rollout: RolloutStatus | None = Field(None, description="Observations of the automatic-rollback check.")
    kopf: dict[str, Any] | None = Field(
        None, description="Bookkeeping of the operator's framework (kopf); not for users."
    )


class ModelVersion(_Spec):
    """The root object; `metadata` and `status` stay loose because the API server owns them."""

    cel_rules = (
        _rule(
            "self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
            "metadata.name must be a DNS label (lower case letters, digits and '-', starting "
            "with a letter, at most 63 characters): it names the version's Deployment and Service",
        ),
        _rule(
            "self.metadata.name != self.spec.model",
            "metadata.name must differ from spec.model: the model's shared Service has that name",
        ),
    )

    api_version: str | None = Field(None, description="API version of this object.")
    kind: str | None = Field(None, description="Kind of this object.")
    metadata: dict[str, Any] | None = Field(None, description="Standard object metadata.")
    spec: ModelVersionSpec = Field(description="What to serve and how.")
    status: ModelVersionStatus | None = Field(None, description="What the operator observed.")


class SpecError(ValueError):
    """A ModelVersion that the schema (or its Python mirror) rejects."""


def parse_spec(spec: Mapping[str, Any]) -> ModelVersionSpec:
    """Validate a ModelVersion spec; raises SpecError with every problem, keyed by field path."""
    try:
        return ModelVersionSpec.model_validate(dict(spec))
    except ValidationError as err:
        problems = []
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"])
            problems.append(f"spec.{where}: {e['msg']}" if where else f"spec: {e['msg']}")
        raise SpecError("; ".join(problems)) from None


# --- CRD generation ---------------------------------------------------------


def _unwrap_optional(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _constraints(metadata: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in metadata:
        for attr, key in (
            ("ge", "minimum"),
            ("le", "maximum"),
            ("pattern", "pattern"),
        ):
            value = getattr(m, attr, None)
            if value is not None:
                out[key] = value
        for attr in ("gt", "lt"):
            if getattr(m, attr, None) is not None:
                raise TypeError("use ge/le: exclusive bounds are not generated")
        for attr in ("min_length", "max_length"):
            value = getattr(m, attr, None)
            if value is not None:
                out[attr] = value  # resolved to minLength/minItems by the caller
    return out


def _apply_lengths(schema: dict[str, Any], constraints: dict[str, Any]) -> None:
    kind = schema.get("type")
    for attr, suffix in (("min_length", "min"), ("max_length", "max")):
        if attr not in constraints:
            continue
        value = constraints.pop(attr)
        if kind == "array":
            schema[f"{suffix}Items"] = value
        elif kind == "object":
            schema[f"{suffix}Properties"] = value
        else:
            schema[f"{suffix}Length"] = value
    schema.update(constraints)


def _type_schema(annotation: Any) -> dict[str, Any]:
    annotation = _unwrap_optional(annotation)
    if typing.get_origin(annotation) is Annotated:
        base, *metadata = typing.get_args(annotation)
        if any(isinstance(m, _IntOrString) for m in metadata):
            return {
                "anyOf": [{"type": "integer"}, {"type": "string"}],
                "pattern": QUANTITY,
                "x-kubernetes-int-or-string": True,
            }
        schema = _type_schema(base)
        constraints: dict[str, Any] = {}
        for m in metadata:
            # Field(...) inside Annotated carries its constraints in its own metadata.
            constraints.update(_constraints(getattr(m, "metadata", [m])))
        _apply_lengths(schema, constraints)
        return schema
    if isinstance(annotation, type) and issubclass(annotation, _Spec):
        return _object_schema(annotation)
    origin = typing.get_origin(annotation)
    if origin is Literal:
        values = list(typing.get_args(annotation))
        return {"type": "string", "enum": values}
    if origin is list:
        (item,) = typing.get_args(annotation)
        return {"type": "array", "items": _type_schema(item)}
    if origin is dict:
        _key, value = typing.get_args(annotation)
        if value is Any:
            return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        return {"type": "object", "additionalProperties": _type_schema(value)}
    simple = {str: "string", bool: "boolean", int: "integer", float: "number"}
    if annotation in simple:
        return {"type": simple[annotation]}
    raise TypeError(f"no OpenAPI type for {annotation!r}")


def _object_schema(model: type[_Spec]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        if not field.description:
            raise TypeError(f"{model.__name__}.{name} has no description; every CRD field needs one")
        schema = {"description": field.description, **_type_schema(field.annotation)}
        _apply_lengths(schema, _constraints(field.metadata))
        extra = field.json_schema_extra
        if isinstance(extra, dict):
            schema.update(extra)
        if field.is_required():
            required.append(key)
        else:
            default = field.get_default(call_default_factory=True)
            if isinstance(default, _Spec):
                schema["default"] = {}
            elif default is not None:
                schema["default"] = default
        properties[key] = schema
    out: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        out["required"] = required
    if model.cel_rules:
        out["x-kubernetes-validations"] = [dict(r) for r in model.cel_rules]
    return out


def openapi_schema() -> dict[str, Any]:
    """The openAPIV3Schema of the ModelVersion CRD."""
    schema = _object_schema(ModelVersion)
    schema["description"] = (
        "A version of an ONNX model served by ModelFleet: a warmed-up, batching "
        "inference Deployment with its own Service, sharing the model's Service "
        "(and traffic) with the other versions of the model."
    )
    # The API server owns metadata; a CRD may only say that it is an object.
    schema["properties"]["metadata"] = {"description": "Standard object metadata.", "type": "object"}
    return schema


PRINTER_COLUMNS: tuple[dict[str, Any], ...] = (
    {"name": "Model", "type": "string", "jsonPath": ".spec.model", "description": "Name of the model."},
    {"name": "Version", "type": "string", "jsonPath": ".spec.version", "description": "Version of the model."},
    {"name": "Traffic", "type": "integer", "jsonPath": ".spec.traffic", "description": "Desired traffic share."},
    {
        "name": "Serving",
        "type": "integer",
        "jsonPath": ".status.servingTraffic",
        "description": "Effective traffic share after normalisation.",
    },
    {"name": "Ready", "type": "string", "jsonPath": ".status.readyText", "description": "Ready/desired replicas."},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Lifecycle phase."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {
        "name": "Endpoint",
        "type": "string",
        "jsonPath": ".status.versionEndpoint",
        "priority": 1,
        "description": "URL of the version's own Service.",
    },
)


def crd_manifest() -> dict[str, Any]:
    """The ModelVersion CustomResourceDefinition (apiextensions.k8s.io/v1)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "modelfleet", "app.kubernetes.io/part-of": "modelfleet"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.fullShareReplicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": [dict(c) for c in PRINTER_COLUMNS],
                }
            ],
        },
    }


CRD_HEADER = (
    "# The ModelVersion CustomResourceDefinition.\n"
    "# Generated from operator/modelfleet_operator/spec.py by `modelfleet-operator crd`;\n"
    "# edit the pydantic models there and regenerate, a test fails when this file is stale.\n"
)


def crd_yaml() -> str:
    import yaml

    return CRD_HEADER + yaml.safe_dump(crd_manifest(), sort_keys=False, width=100, allow_unicode=True)


__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "Autoscaling",
    "Batching",
    "Condition",
    "Features",
    "LastRetraining",
    "ModelVersion",
    "ModelVersionSpec",
    "ModelVersionStatus",
    "Redis",
    "ResourceRequirements",
    "Retraining",
    "Rollout",
    "RolloutStatus",
    "SecretKeyRef",
    "Source",
    "SpecError",
    "TokenSecretRef",
    "Warmup",
    "crd_manifest",
    "crd_yaml",
    "openapi_schema",
    "parse_spec",
]
