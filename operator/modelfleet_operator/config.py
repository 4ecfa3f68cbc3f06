"""The operator's configuration: one frozen object, read once from flags and environment.

Every key `some-key` comes from the flag `--some-key` of `modelfleet-operator run`
or from the variable `MODELFLEET_OPERATOR_SOME_KEY`; a flag wins over its
variable. `modelfleet-operator render --set some-key=value` takes the same keys.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ENV_PREFIX = "MODELFLEET_OPERATOR_"
DEFAULT_RUNTIME_IMAGE = "ghcr.io/modelfleet/runtime:0.1.0"
# DESIGN.md section 9: https and in-cluster volumes by default; http and file only when configured.
DEFAULT_URI_SCHEMES = ("https", "pvc", "configmap")
KNOWN_URI_SCHEMES = frozenset(("https", "http", "pvc", "configmap", "file"))
# The label a Secret must carry before a ModelVersion may reference it (KEY=VALUE).
DEFAULT_CONSUMABLE_LABEL = "serving.modelfleet.dev/consumable=true"
# The runtime's own cap on a model download (its --max-model-bytes); the cache emptyDir is sized from it.
DEFAULT_MAX_MODEL_BYTES = 4 * 1024**3
DEFAULT_DOWNLOAD_TIMEOUT_SECONDS = 600.0
DEFAULT_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "250m", "memory": "512Mi"},
    "limits": {"memory": "2Gi"},
}
ROUTING_MODES = ("service", "gateway")
# The placeholders a gateway hostname template may use.
HOSTNAME_PLACEHOLDERS = ("model", "namespace", "domain")
DEFAULT_HOSTNAME_TEMPLATE = "{model}-{namespace}.{domain}"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("text", "json")
# A day: the longest delay any of the time settings may ask for.
MAX_SECONDS = 86400.0
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class ConfigError(ValueError):
    """A configuration key has a value the operator cannot use; the message names the key."""


def image_repository(image: str) -> str:
    """`ghcr.io/org/runtime:0.1.0@sha256:..` -> `ghcr.io/org/runtime` (registry ports kept)."""
    repo = image.split("@", 1)[0]
    slash = repo.rfind("/")
    colon = repo.rfind(":")
    if colon > slash:
        repo = repo[:colon]
    return repo


def image_allowed(image: str, allowed: tuple[str, ...]) -> bool:
    """An entry ending in `/` allows everything below it; otherwise it names one repository.

    `ghcr.io/modelfleet/runtime` allows `ghcr.io/modelfleet/runtime:1.2` and
    `...runtime@sha256:...` but not `ghcr.io/modelfleet/runtime-evil`.
    """
    repo = image_repository(image)
    for entry in allowed:
        if entry.endswith("/"):
            if repo.startswith(entry):
                return True
        elif repo == image_repository(entry) and (entry == repo or image == entry):
            return True
    return False


@dataclass(frozen=True)
class OperatorConfig:
    # Image of the runtime containers when a ModelVersion names none.
    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    # service: replica-ratio split through the model's Service; gateway: an HTTPRoute per model.
    routing: str = "service"
    # NAMESPACE/NAME (or NAME, in the model's namespace) of the Gateway the HTTPRoutes attach to.
    gateway: str = ""
    cluster_domain: str = "cluster.local"
    # Gateway mode: each model's HTTPRoute matches only the hostname made from this template
    # ({model}, {namespace}, {domain}), so many models share one Gateway (KServe's default shape).
    gateway_hostname_template: str = DEFAULT_HOSTNAME_TEMPLATE
    # The {domain} of the hostname template: a DNS zone whose names reach the Gateway.
    gateway_domain: str = "example.com"
    # Images a ModelVersion may name (runtimeImage, trainer image); empty: the runtime image's repository.
    allowed_images: tuple[str, ...] = ()
    allowed_uri_schemes: tuple[str, ...] = DEFAULT_URI_SCHEMES
    # --- what a ModelVersion may reach and use (DESIGN.md section 9; core.policy checks them) ---
    # Hosts an http(s) model URI may name: `models.example.com`, or `*.example.com` for its subdomains.
    # Empty: any host (the runtime still refuses loopback, link-local and private addresses).
    allowed_model_hosts: tuple[str, ...] = ()
    # A model URI without spec.source.sha256 is refused.
    require_sha256: bool = False
    # Passed to the runtime (--max-model-bytes) and the size of the download emptyDir.
    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES
    # Passed to the runtime (--download-timeout-seconds): one deadline for the whole download.
    download_timeout_seconds: float = DEFAULT_DOWNLOAD_TIMEOUT_SECONDS
    # Passed to the runtime (--download-allowed-networks): private networks downloads may reach.
    download_allowed_networks: tuple[str, ...] = ()
    # Images whose own command a ModelVersion's retraining may run (empty: none; the runtime image
    # always runs its own `train`).
    allowed_trainer_images: tuple[str, ...] = ()
    # KEY=VALUE label a Secret needs before a ModelVersion may reference it; empty: no label check.
    consumable_secret_label: str = DEFAULT_CONSUMABLE_LABEL
    # Hosts features.redis.url may name (same patterns as allowed-model-hosts); empty: any.
    allowed_redis_hosts: tuple[str, ...] = ()
    # A NetworkPolicy per model: only its namespace, the Gateway's, the operator's and these reach its pods.
    network_policy: bool = True
    # The operator's own namespace (the chart sets it): its pods ask the runtimes for readiness and metrics.
    operator_namespace: str = ""
    # More namespaces whose pods may reach the runtime pods (a Gateway's data plane, Prometheus).
    network_policy_namespaces: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    all_namespaces: bool = False
    standalone: bool = False
    # kopf peering object several operator replicas coordinate through (empty: kopf's default).
    peering: str = ""
    # Port of kopf's liveness endpoint (http://0.0.0.0:PORT/healthz) for the Deployment's probe.
    liveness_port: int = 8081
    # Port of the operator's Prometheus metrics (http://0.0.0.0:PORT/metrics); 0 (the default of
    # the command, so two operators on one machine never collide) turns them off. The chart sets 8080.
    metrics_port: int = 0
    log_level: str = "info"
    log_format: str = "text"
    # The periodic safety net: every model is reconciled from the cache this often, even when
    # no watch event arrived (a reconcile of an unchanged model sends no request).
    resync_seconds: float = 300.0
    # A version that gives up traffic keeps its replicas this long after the versions taking
    # it are Available (Argo Rollouts' scaleDownDelaySeconds), so routers settle first.
    scale_down_delay_seconds: float = 30.0
    # Gateway mode: a version left at weight 0 stays warm (instant rollback) this long, then
    # it is scaled to 0 and Retired. Service mode scales it down after scale-down-delay-seconds.
    retire_after_seconds: float = 600.0
    # Resources of a runtime container whose ModelVersion sets none.
    default_resources: Mapping[str, Any] = field(default_factory=lambda: json.loads(json.dumps(DEFAULT_RESOURCES)))

    def __post_init__(self) -> None:
        problems = [
            *_target_problems(self),
            *_scope_problems(self),
            *_process_problems(self),
            *_timing_problems(self),
            *_security_problems(self),
        ]
        if problems:
            raise ConfigError("; ".join(problems))
        if not self.allowed_images:
            object.__setattr__(self, "allowed_images", (image_repository(self.runtime_image),))

    def gateway_hostname(self, model: str, namespace: str) -> str:
        """The hostname a model's HTTPRoute matches in gateway mode."""
        return self.gateway_hostname_template.format(model=model, namespace=namespace, domain=self.gateway_domain)

    @property
    def gateway_ref(self) -> tuple[str | None, str]:
        """(namespace or None for the route's own, name) of the parent Gateway."""
        namespace, _, name = self.gateway.rpartition("/")
        return (namespace or None, name)


def _target_problems(config: OperatorConfig) -> list[str]:
    """What the operator deploys and how traffic reaches it: image, routing, gateway, URIs."""
    problems: list[str] = []
    if not config.runtime_image or any(c.isspace() for c in config.runtime_image):
        problems.append(f"runtime-image must be an image reference, got {config.runtime_image!r}")
    if config.routing not in ROUTING_MODES:
        problems.append(f"routing must be one of {', '.join(ROUTING_MODES)}, got {config.routing!r}")
    if config.routing == "gateway" and not config.gateway:
        problems.append("routing gateway needs gateway: set it to NAMESPACE/NAME of the parent Gateway")
    if config.gateway:
        parts = config.gateway.split("/")
        if len(parts) > 2 or not all(_DNS_SUBDOMAIN.match(p) for p in parts):
            problems.append(f"gateway must be NAMESPACE/NAME or NAME, got {config.gateway!r}")
    if not _DNS_SUBDOMAIN.match(config.cluster_domain):
        problems.append(f"cluster-domain must be a DNS name, got {config.cluster_domain!r}")
    if not _DNS_SUBDOMAIN.match(config.gateway_domain):
        problems.append(f"gateway-domain must be a DNS name, got {config.gateway_domain!r}")
    problems.extend(_hostname_template_problems(config.gateway_hostname_template))
    unknown = sorted(set(config.allowed_uri_schemes) - KNOWN_URI_SCHEMES)
    if unknown:
        problems.append(
            f"allowed-uri-schemes: unknown scheme(s) {', '.join(unknown)}; choose from {', '.join(DEFAULT_URI_SCHEMES)}"
        )
    return problems


def _hostname_template_problems(template: str) -> list[str]:
    """A template names only known placeholders and renders to a DNS name for a sample model."""
    try:
        sample = template.format(model="m", namespace="ns", domain="example.com")
    except (KeyError, IndexError, ValueError) as err:
        known = ", ".join("{" + p + "}" for p in HOSTNAME_PLACEHOLDERS)
        return [f"gateway-hostname-template {template!r} is not a template of {known}: {err}"]
    if "{model}" not in template or not _DNS_SUBDOMAIN.match(sample):
        rendered = f"(renders {sample!r} for model m in namespace ns)"
        return [f"gateway-hostname-template must contain {{model}} and make a DNS name, got {template!r} {rendered}"]
    return []


def _scope_problems(config: OperatorConfig) -> list[str]:
    """Which namespaces the operator watches and how its replicas peer."""
    problems = [
        f"namespace {ns!r} is not a valid namespace name" for ns in config.namespaces if not _DNS_LABEL.match(ns)
    ]
    if config.all_namespaces and config.namespaces:
        problems.append("give either namespace(s) or all-namespaces, not both")
    if config.peering and not _DNS_SUBDOMAIN.match(config.peering):
        problems.append(f"peering must be a DNS name, got {config.peering!r}")
    if config.peering and config.standalone:
        problems.append("give either peering or standalone, not both: standalone runs without peering")
    return problems


def _process_problems(config: OperatorConfig) -> list[str]:
    """The operator process itself (probe port, logging) and the runtime's default resources."""
    problems: list[str] = []
    if not 0 < config.liveness_port < 65536:
        problems.append(f"liveness-port must be between 1 and 65535, got {config.liveness_port}")
    if not 0 <= config.metrics_port < 65536:
        problems.append(f"metrics-port must be between 0 (off) and 65535, got {config.metrics_port}")
    if config.metrics_port and config.metrics_port == config.liveness_port:
        problems.append(f"metrics-port and liveness-port must differ, both are {config.metrics_port}")
    if config.log_level not in LOG_LEVELS:
        problems.append(f"log-level must be one of {', '.join(LOG_LEVELS)}, got {config.log_level!r}")
    if config.log_format not in LOG_FORMATS:
        problems.append(f"log-format must be one of {', '.join(LOG_FORMATS)}, got {config.log_format!r}")
    # Checked whatever the annotation says: a config may be built from parsed JSON or YAML.
    resources: object = config.default_resources
    if not isinstance(resources, Mapping) or set(resources) - {"requests", "limits", "claims"}:
        problems.append("default-resources must be a JSON object with requests and/or limits")
    return problems


def _timing_problems(config: OperatorConfig) -> list[str]:
    """The delays of reconciliation and traffic transitions: each bounded."""
    return [
        f"{key} must be between {least:g} and {MAX_SECONDS:g} seconds, got {seconds:g}"
        for key, seconds, least in (
            ("resync-seconds", config.resync_seconds, 1.0),
            ("scale-down-delay-seconds", config.scale_down_delay_seconds, 0.0),
            ("retire-after-seconds", config.retire_after_seconds, 0.0),
        )
        if not least <= seconds <= MAX_SECONDS
    ]


def host_allowed(host: str, patterns: tuple[str, ...]) -> bool:
    """`models.example.com` allows that host; `*.example.com` every host below example.com (not itself)."""
    host = host.lower().rstrip(".")
    for pattern in patterns:
        pattern = pattern.lower()
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]):
                return True
        elif host == pattern:
            return True
    return False


def label_requirement(text: str) -> tuple[str, str] | None:
    """`KEY=VALUE` -> (KEY, VALUE); empty -> None (no label check)."""
    if not text:
        return None
    key, _, value = text.partition("=")
    return key, value


_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-_.A-Za-z0-9]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-_.A-Za-z0-9]{0,61}[A-Za-z0-9])?)?$")
_HOST_PATTERN = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _security_problems(config: OperatorConfig) -> list[str]:
    """What a ModelVersion may reach and use: hosts, Secrets, download bounds, the NetworkPolicy."""
    problems: list[str] = []
    for key, patterns in (
        ("allowed-model-hosts", config.allowed_model_hosts),
        ("allowed-redis-hosts", config.allowed_redis_hosts),
    ):
        bad = [p for p in patterns if not _HOST_PATTERN.match(p.lower())]
        if bad:
            problems.append(f"{key}: {', '.join(bad)} is not a host name or *.DOMAIN")
    requirement = config.consumable_secret_label
    if requirement:
        key, sep, value = requirement.partition("=")
        if not sep or not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
            problems.append(
                f"consumable-secret-label must be KEY=VALUE with a label key and value, got {requirement!r}"
            )
    if config.max_model_bytes < 1024 * 1024:
        problems.append(f"max-model-bytes must be at least 1048576 (1 MiB), got {config.max_model_bytes}")
    if not 1.0 <= config.download_timeout_seconds <= MAX_SECONDS:
        problems.append(
            f"download-timeout-seconds must be between 1 and {MAX_SECONDS:g}, got {config.download_timeout_seconds:g}"
        )
    for key, names in (
        ("operator-namespace", (config.operator_namespace,) if config.operator_namespace else ()),
        ("network-policy-namespaces", config.network_policy_namespaces),
    ):
        problems.extend(f"{key}: {ns!r} is not a valid namespace name" for ns in names if not _DNS_LABEL.match(ns))
    return problems


def key_of(field_name: str) -> str:
    return field_name.replace("_", "-")


def env_name(key: str) -> str:
    return ENV_PREFIX + key.replace("-", "_").upper()


CONFIG_KEYS: tuple[str, ...] = tuple(key_of(f.name) for f in dataclasses.fields(OperatorConfig))


def _convert(key: str, raw: Any, kind: Any) -> Any:
    kind = kind if isinstance(kind, str) else str(kind)
    if kind.startswith("tuple"):
        return _to_tuple(raw)
    if kind == "bool":
        return _to_bool(key, raw)
    if kind == "int":
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a whole number, got {raw!r}") from None
    if kind == "float":
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number of seconds, got {raw!r}") from None
        if value != value:  # NaN passes every range check
            raise ConfigError(f"{key}: expected a number of seconds, got {raw!r}")
        return value
    if kind.startswith("Mapping"):
        return _to_mapping(key, raw)
    return str(raw).strip()


def _to_tuple(raw: Any) -> tuple[str, ...]:
    """A list (a repeated flag) or a comma-separated string; each element may itself hold commas."""
    if isinstance(raw, (list, tuple)):
        items = [str(item) for part in raw for item in str(part).split(",")]
    else:
        items = str(raw).split(",")
    return tuple(item.strip() for item in items if item.strip())


def _to_bool(key: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    lowered = str(raw).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{key}: expected true or false, got {raw!r}")


def _to_mapping(key: str, raw: Any) -> dict[str, Any]:
    """A mapping as given, or a JSON object in a string (an environment variable, a --set value)."""
    if isinstance(raw, Mapping):
        return dict(raw)
    try:
        value = json.loads(raw)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{key}: expected a JSON object, got {raw!r} ({err})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a JSON object, got {raw!r}")
    return value


def load_config(args: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> OperatorConfig:
    """Merge flags over MODELFLEET_OPERATOR_* variables over defaults.

    `args` keys may be spelled `some-key` or `some_key` (argparse's dest); a value of
    None (or an empty list from an unused repeatable flag) means "not given".
    Raises ConfigError naming every bad key.
    """
    args = dict(args or {})
    environ = environ or {}
    normalized = {str(k).replace("_", "-"): v for k, v in args.items()}
    unknown = sorted(k for k in normalized if k not in CONFIG_KEYS)
    if unknown:
        raise ConfigError(f"unknown configuration key(s) {', '.join(unknown)}; known: {', '.join(CONFIG_KEYS)}")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(OperatorConfig):
        key = key_of(f.name)
        raw = normalized.get(key)
        if raw is None or (isinstance(raw, (list, tuple)) and not raw):
            raw = environ.get(env_name(key))
        if raw is not None:
            values[f.name] = _convert(key, raw, f.type)
    return OperatorConfig(**values)


def parse_set_options(pairs: list[str] | None) -> dict[str, str]:
    """`["routing=gateway", "gateway=infra/public"]` -> a mapping for load_config."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        out[key.strip()] = value
    return out


__all__ = [
    "CONFIG_KEYS",
    "DEFAULT_RUNTIME_IMAGE",
    "ConfigError",
    "OperatorConfig",
    "env_name",
    "host_allowed",
    "image_allowed",
    "image_repository",
    "label_requirement",
    "load_config",
    "parse_set_options",
]
