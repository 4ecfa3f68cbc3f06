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
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("text", "json")
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
    log_level: str = "info"
    log_format: str = "text"
    # Resources of a runtime container whose ModelVersion sets none.
    default_resources: Mapping[str, Any] = field(default_factory=lambda: json.loads(json.dumps(DEFAULT_RESOURCES)))

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not self.runtime_image or any(c.isspace() for c in self.runtime_image):
            problems.append(f"runtime-image must be an image reference, got {self.runtime_image!r}")
        if self.routing not in ROUTING_MODES:
            problems.append(f"routing must be one of {', '.join(ROUTING_MODES)}, got {self.routing!r}")
        if self.routing == "gateway" and not self.gateway:
            problems.append("routing gateway needs gateway: set it to NAMESPACE/NAME of the parent Gateway")
        if self.gateway:
            parts = self.gateway.split("/")
            if len(parts) > 2 or not all(_DNS_SUBDOMAIN.match(p) for p in parts):
                problems.append(f"gateway must be NAMESPACE/NAME or NAME, got {self.gateway!r}")
        if not _DNS_SUBDOMAIN.match(self.cluster_domain):
            problems.append(f"cluster-domain must be a DNS name, got {self.cluster_domain!r}")
        unknown = sorted(set(self.allowed_uri_schemes) - KNOWN_URI_SCHEMES)
        if unknown:
            problems.append(
                f"allowed-uri-schemes: unknown scheme(s) {', '.join(unknown)}; "
                f"choose from {', '.join(DEFAULT_URI_SCHEMES)}"
            )
        for ns in self.namespaces:
            if not _DNS_LABEL.match(ns):
                problems.append(f"namespace {ns!r} is not a valid namespace name")
        if self.all_namespaces and self.namespaces:
            problems.append("give either namespace(s) or all-namespaces, not both")
        if self.peering and not _DNS_SUBDOMAIN.match(self.peering):
            problems.append(f"peering must be a DNS name, got {self.peering!r}")
        if self.peering and self.standalone:
            problems.append("give either peering or standalone, not both: standalone runs without peering")
        if not 0 < self.liveness_port < 65536:
            problems.append(f"liveness-port must be between 1 and 65535, got {self.liveness_port}")
        if self.log_level not in LOG_LEVELS:
            problems.append(f"log-level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        if self.log_format not in LOG_FORMATS:
            problems.append(f"log-format must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}")
        if not isinstance(self.default_resources, Mapping) or set(self.default_resources) - {
            "requests",
            "limits",
            "claims",
        }:
            problems.append("default-resources must be a JSON object with requests and/or limits")
        if problems:
            raise ConfigError("; ".join(problems))
        if not self.allowed_images:
            object.__setattr__(self, "allowed_images", (image_repository(self.runtime_image),))

    @property
    def gateway_ref(self) -> tuple[str | None, str]:
        """(namespace or None for the route's own, name) of the parent Gateway."""
        namespace, _, name = self.gateway.rpartition("/")
        return (namespace or None, name)


def key_of(field_name: str) -> str:
    return field_name.replace("_", "-")


def env_name(key: str) -> str:
    return ENV_PREFIX + key.replace("-", "_").upper()


CONFIG_KEYS: tuple[str, ...] = tuple(key_of(f.name) for f in dataclasses.fields(OperatorConfig))


def _convert(key: str, raw: Any, kind: Any) -> Any:
    kind = kind if isinstance(kind, str) else str(kind)
    if kind.startswith("tuple"):
        if isinstance(raw, (list, tuple)):
            items = [str(item) for part in raw for item in str(part).split(",")]
        else:
            items = str(raw).split(",")
        return tuple(item.strip() for item in items if item.strip())
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        lowered = str(raw).strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{key}: expected true or false, got {raw!r}")
    if kind == "int":
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a whole number, got {raw!r}") from None
    if kind.startswith("Mapping"):
        if isinstance(raw, Mapping):
            return dict(raw)
        try:
            value = json.loads(raw)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{key}: expected a JSON object, got {raw!r} ({err})") from None
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a JSON object, got {raw!r}")
        return value
    return str(raw).strip()


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
