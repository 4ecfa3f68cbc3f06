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
DEFAULT_URI_SCHEMES = ("https", "http", "pvc", "configmap", "file")
KNOWN_URI_SCHEMES = frozenset(DEFAULT_URI_SCHEMES)
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
    "image_allowed",
    "image_repository",
    "load_config",
    "parse_set_options",
]
