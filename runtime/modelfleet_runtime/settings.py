"""The runtime's settings: one object, read once from flags and MODELFLEET_* variables.

Every `serve` flag `--some-flag` has the environment variable
`MODELFLEET_SOME_FLAG`; a flag given on the command line wins over its variable.
The operator configures pods through the variables only.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ENV_PREFIX = "MODELFLEET_"


class SettingsError(ValueError):
    """A flag or environment variable has a value the runtime cannot use."""


@dataclass(frozen=True)
class Settings:
    model: str = ""
    sha256: str = ""
    name: str = "model"
    model_version: str = "1"
    demo: bool = False
    host: str = "0.0.0.0"
    port: int = 8080
    # Open Inference Protocol gRPC on host:grpc_port; 0 turns it off.
    grpc_port: int = 8081
    # An inherited, already listening socket to serve on instead of binding host:port (-1: bind).
    listen_fd: int = -1
    max_batch_size: int = 32
    max_latency_ms: float = 100.0
    max_queue: int = 1024
    warmup_iterations: int = 10
    # Where pvc:// and configmap:// sources are mounted: ROOT/pvc/CLAIM/PATH, ROOT/configmap/NAME/KEY.
    model_root: str = "/mnt/models"
    # Downloads of http(s):// sources land here (a writable emptyDir in the pod).
    cache_dir: str = ""
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    max_body_bytes: int = 4 * 1024 * 1024
    # How long a SIGTERM waits for queued and in-flight requests before giving up.
    drain_timeout_seconds: float = 30.0
    log_level: str = "info"
    # Optional bearer token for /predict and /v2 inference (file holding the token).
    predict_token_file: str = ""
    # Online learning (DESIGN.md section 5).
    feedback_dir: str = ""
    feedback_token_file: str = ""
    feedback_segment_bytes: int = 16 * 1024 * 1024
    request_retention_seconds: float = 300.0
    # Real-time features (DESIGN.md section 4).
    feature_store: str = ""
    feature_store_password: str = ""
    feature_prefix: str = ""
    feature_fields: tuple[str, ...] = ()
    feature_cache_ttl: float = 300.0
    feature_cache_size: int = 10000

    def __post_init__(self) -> None:
        problems = []
        if self.max_batch_size < 1:
            problems.append(f"max-batch-size must be at least 1, got {self.max_batch_size}")
        if self.max_latency_ms < 0:
            problems.append(f"max-latency-ms must not be negative, got {self.max_latency_ms}")
        if self.max_queue < 1:
            problems.append(f"max-queue must be at least 1, got {self.max_queue}")
        if self.warmup_iterations < 0:
            problems.append(f"warmup-iterations must not be negative, got {self.warmup_iterations}")
        if self.listen_fd < -1:
            problems.append(f"listen-fd must be a file descriptor (0 or more), or -1 to bind, got {self.listen_fd}")
        if not 0 < self.port < 65536:
            problems.append(f"port must be between 1 and 65535, got {self.port}")
        if not 0 <= self.grpc_port < 65536:
            problems.append(f"grpc-port must be between 1 and 65535, or 0 for no gRPC, got {self.grpc_port}")
        if self.max_body_bytes < 1024:
            problems.append(f"max-body-bytes must be at least 1024, got {self.max_body_bytes}")
        if self.sha256 and (len(self.sha256) != 64 or any(c not in "0123456789abcdefABCDEF" for c in self.sha256)):
            problems.append("sha256 must be 64 hexadecimal characters")
        if not self.model and not self.demo:
            problems.append("no model: pass --model URI (or MODELFLEET_MODEL), or --demo")
        if problems:
            raise SettingsError("; ".join(problems))


_FLAG_HELP: dict[str, str] = {
    "model": "model source: file:///path or a path, http(s)://, pvc://CLAIM/PATH, configmap://NAME/KEY",
    "sha256": "expected sha256 of the model file; a mismatch means the model never becomes ready",
    "name": "model name used by the Open Inference Protocol endpoints",
    "model_version": "version reported with every prediction",
    "demo": "serve the built-in demo model",
    "host": "address to listen on",
    "port": "port to listen on",
    "grpc_port": "port of the Open Inference Protocol gRPC service (0: no gRPC)",
    "listen_fd": "serve on this inherited listening socket instead of binding --host/--port "
    "(socket activation, a supervisor holding the port; -1: bind)",
    "max_batch_size": "largest number of rows merged into one session.run",
    "max_latency_ms": "longest a request may wait for its batch to form",
    "max_queue": "rows that may wait; beyond it requests get 503 with Retry-After",
    "warmup_iterations": "inferences run before the server reports ready",
    "model_root": "folder where pvc:// and configmap:// sources are mounted",
    "cache_dir": "folder for downloaded models (default: a per-user cache folder)",
    "intra_op_threads": "onnxruntime intra-op threads (0: onnxruntime's default)",
    "inter_op_threads": "onnxruntime inter-op threads (0: onnxruntime's default)",
    "max_body_bytes": "largest request body accepted (413 beyond it)",
    "drain_timeout_seconds": "on SIGTERM, how long to wait for queued and in-flight requests",
    "log_level": "critical, error, warning, info or debug",
    "predict_token_file": "file with a bearer token required for predictions (off when empty)",
    "feedback_dir": "folder (the shared feedback volume) where labelled samples are stored",
    "feedback_token_file": "file with the bearer token required by POST /feedback",
    "feedback_segment_bytes": "size at which this pod's feedback segment file rotates",
    "request_retention_seconds": "how long a prediction's inputs are kept for feedback by request_id",
    "feature_store": "online feature store, redis://HOST:PORT/DB",
    "feature_store_password": "password of the feature store (prefer the environment variable)",
    "feature_prefix": "key prefix of entity hashes in the feature store",
    "feature_fields": "comma-separated feature fields, in model input order",
    "feature_cache_ttl": "seconds an entity's features stay cached",
    "feature_cache_size": "most entities kept in the feature cache",
}


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _convert(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    name = f.name.replace("_", "-")
    try:
        if kind == "bool":
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind.startswith("tuple"):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
    except ValueError:
        raise SettingsError(f"{name}: cannot read {raw!r} as {kind}") from None
    return raw


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting; defaults stay None so that unset flags fall back to env."""
    for f in dataclasses.fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{_FLAG_HELP.get(f.name, '')} [env {env_name(f.name)}]"
        if f.type == "bool":
            parser.add_argument(flag, dest=f.name, action="store_const", const="true", default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(), help=help_text)


def load_settings(args: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Merge flags (raw strings, None when unset) over MODELFLEET_* variables over defaults."""
    args = args or {}
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        raw = args.get(f.name)
        if raw is None:
            raw = environ.get(env_name(f.name))
        if raw is not None:
            values[f.name] = _convert(f, str(raw))
    return Settings(**values)


def parse_serve_args(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(prog="modelfleet-runtime serve")
    add_serve_arguments(parser)
    return load_settings(vars(parser.parse_args(argv)), environ)


__all__ = ["Settings", "SettingsError", "add_serve_arguments", "env_name", "load_settings", "parse_serve_args"]
