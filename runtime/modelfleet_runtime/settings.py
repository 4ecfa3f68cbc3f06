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

from .sources import DEFAULT_MAX_BYTES, DEFAULT_SCHEMES, DEFAULT_TIMEOUT_SECONDS, SourcePolicy

ENV_PREFIX = "MODELFLEET_"
MAX_WORKERS = 128


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
    # Processes serving the port, each with its own session and batcher; 0: one per CPU the container may use.
    workers: int = 1
    max_batch_size: int = 32
    max_latency_ms: float = 100.0
    max_queue: int = 1024
    warmup_iterations: int = 10
    # Where pvc:// and configmap:// sources are mounted: ROOT/pvc/CLAIM/PATH, ROOT/configmap/NAME/KEY.
    model_root: str = "/mnt/models"
    # Downloads of http(s):// sources land here (a writable emptyDir in the pod).
    cache_dir: str = ""
    # What a model source may be (DESIGN.md section 9); a plain path counts as file.
    allowed_uri_schemes: tuple[str, ...] = DEFAULT_SCHEMES
    # Networks that are not public (loopback, link-local, private) which downloads may still reach.
    download_allowed_networks: tuple[str, ...] = ()
    max_model_bytes: int = DEFAULT_MAX_BYTES
    # One deadline for the whole download (resolve, connect, redirects, every read).
    download_timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    max_body_bytes: int = 4 * 1024 * 1024
    # Bodies from this size on are parsed in a process of their own, off the event loop.
    large_body_bytes: int = 256 * 1024
    # Connection bounds (DESIGN.md section 9): a slow or idle client is closed, not waited for.
    max_header_bytes: int = 64 * 1024
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0
    keep_alive_timeout_seconds: int = 5
    limit_concurrency: int = 1024
    # How long a SIGTERM waits for queued and in-flight requests before giving up.
    drain_timeout_seconds: float = 30.0
    log_level: str = "info"
    # Optional bearer token for /predict and /v2 inference (file holding the token).
    predict_token_file: str = ""
    # Online learning (DESIGN.md section 5).
    feedback_dir: str = ""
    feedback_token_file: str = ""
    feedback_segment_bytes: int = 16 * 1024 * 1024
    # Bytes of labels, predictions and claims on the feedback volume, all pods together.
    feedback_quota_bytes: int = 10 * 1024**3
    feedback_retention_seconds: float = 7 * 86400.0
    # How often each server re-reads the volume's usage, seals dead writers' segments and applies retention.
    feedback_maintenance_seconds: float = 10.0
    # The prediction log (docs/online-learning.md): on with --feedback-dir, or alone with --prediction-log-dir.
    prediction_log_dir: str = ""
    prediction_log_sample_rate: float = 1.0
    prediction_retention_seconds: float = 7 * 86400.0
    prediction_log_segment_bytes: int = 64 * 1024 * 1024
    prediction_log_flush_ms: float = 20.0
    prediction_log_buffer_bytes: int = 64 * 1024 * 1024
    # Before the prediction log: how long inputs were kept in memory. Still read: when set, it is
    # the prediction retention.
    request_retention_seconds: float = 0.0
    # Real-time features (DESIGN.md section 4).
    feature_store: str = ""
    feature_store_password: str = ""
    # The same password from a file (a mounted Secret), so that it is not in the environment.
    feature_store_password_file: str = ""
    feature_prefix: str = ""
    feature_fields: tuple[str, ...] = ()
    feature_cache_ttl: float = 300.0
    feature_cache_size: int = 10000
    # How long an entity the store did not have is answered 404 without asking again.
    feature_miss_ttl: float = 5.0

    def __post_init__(self) -> None:
        problems = self._serving_problems() + self._input_problems()
        if problems:
            raise SettingsError("; ".join(problems))

    def _serving_problems(self) -> list[str]:
        """Batching, queue, warmup and port."""
        problems = []
        if self.max_batch_size < 1:
            problems.append(f"max-batch-size must be at least 1, got {self.max_batch_size}")
        if self.max_latency_ms < 0:
            problems.append(f"max-latency-ms must not be negative, got {self.max_latency_ms}")
        if self.max_queue < 1:
            problems.append(f"max-queue must be at least 1, got {self.max_queue}")
        if self.warmup_iterations < 0:
            problems.append(f"warmup-iterations must not be negative, got {self.warmup_iterations}")
        problems += _process_problems(self)
        if self.listen_fd < -1:
            problems.append(f"listen-fd must be a file descriptor (0 or more), or -1 to bind, got {self.listen_fd}")
        if not 0 < self.port < 65536:
            problems.append(f"port must be between 1 and 65535, got {self.port}")
        if not 0 <= self.grpc_port < 65536:
            problems.append(f"grpc-port must be between 1 and 65535, or 0 for no gRPC, got {self.grpc_port}")
        return problems

    def _input_problems(self) -> list[str]:
        """What the server takes in: the model and its source, request bodies, the feature store's password."""
        problems = []
        if self.feature_store_password and self.feature_store_password_file:
            problems.append("give the feature store password once: feature-store-password or its -file, not both")
        if self.large_body_bytes < 1:
            problems.append(f"large-body-bytes must be at least 1, got {self.large_body_bytes}")
        if self.max_body_bytes < 1024:
            problems.append(f"max-body-bytes must be at least 1024, got {self.max_body_bytes}")
        if self.sha256 and (len(self.sha256) != 64 or any(c not in "0123456789abcdefABCDEF" for c in self.sha256)):
            problems.append("sha256 must be 64 hexadecimal characters")
        problems += self._log_problems()
        if not self.model and not self.demo:
            problems.append("no model: pass --model URI (or MODELFLEET_MODEL), or --demo")
        try:
            self.source_policy()
        except ValueError as exc:
            problems.append(str(exc))
        return problems

    def source_policy(self) -> SourcePolicy:
        return SourcePolicy.of(
            self.allowed_uri_schemes,
            self.download_allowed_networks,
            self.max_model_bytes,
            self.download_timeout_seconds,
        )

    def _log_problems(self) -> list[str]:
        problems = []
        if not 0.0 <= self.prediction_log_sample_rate <= 1.0:
            rate = self.prediction_log_sample_rate
            problems.append(f"prediction-log-sample-rate must be between 0 and 1, got {rate}")
        if self.prediction_retention_seconds <= 0 or self.request_retention_seconds < 0:
            problems.append("prediction-retention-seconds must be positive")
        if self.feedback_maintenance_seconds <= 0:
            problems.append("feedback-maintenance-seconds must be positive")
        if self.feedback_retention_seconds < 0:
            problems.append(f"feedback-retention-seconds must not be negative, got {self.feedback_retention_seconds}")
        if self.feedback_quota_bytes < 1024 * 1024:
            problems.append(f"feedback-quota-bytes must be at least 1048576 (1 MiB), got {self.feedback_quota_bytes}")
        if self.prediction_log_flush_ms < 0 or self.prediction_log_buffer_bytes < 1024 * 1024:
            problems.append("prediction-log-flush-ms must not be negative and prediction-log-buffer-bytes >= 1 MiB")
        if self.feedback_dir and self.prediction_log_dir and self.feedback_dir != self.prediction_log_dir:
            problems.append(
                "with --feedback-dir the prediction log lives on the feedback volume, so labels can be joined "
                "with it: leave --prediction-log-dir unset"
            )
        return problems

    @property
    def volume_dir(self) -> str:
        """The folder of the prediction log and the labels ('' when neither is on)."""
        return self.feedback_dir or self.prediction_log_dir

    @property
    def prediction_retention(self) -> float:
        return self.request_retention_seconds or self.prediction_retention_seconds


def _process_problems(s: Settings) -> list[str]:
    """The workers and the connection bounds."""
    problems = []
    if not 0 <= s.workers <= MAX_WORKERS:
        problems.append(f"workers must be between 0 (one per CPU) and {MAX_WORKERS}, got {s.workers}")
    if s.max_header_bytes < 1024:
        problems.append(f"max-header-bytes must be at least 1024, got {s.max_header_bytes}")
    timeouts = {
        "header-timeout-seconds": s.header_timeout_seconds,
        "body-timeout-seconds": s.body_timeout_seconds,
        "keep-alive-timeout-seconds": s.keep_alive_timeout_seconds,
    }
    problems += [f"{flag} must be more than 0, got {value}" for flag, value in timeouts.items() if not value > 0]
    if s.limit_concurrency < 1:
        problems.append(f"limit-concurrency must be at least 1, got {s.limit_concurrency}")
    return problems


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
    "workers": "processes sharing the port, each with its own model session and batcher "
    "(0: one per CPU the container may use, from its cgroup quota)",
    "max_batch_size": "largest number of rows merged into one session.run",
    "max_latency_ms": "longest a request may wait for its batch to form",
    "max_queue": "rows that may wait; beyond it requests get 503 with Retry-After",
    "warmup_iterations": "inferences run before the server reports ready",
    "model_root": "folder where pvc:// and configmap:// sources are mounted",
    "cache_dir": "folder for downloaded models (default: a per-user cache folder)",
    "allowed_uri_schemes": "comma-separated model source schemes allowed (file covers plain paths)",
    "download_allowed_networks": "comma-separated CIDRs that downloads may reach although not public (e.g. 10.0.0.0/8)",
    "max_model_bytes": "largest model a download may bring (refused past it)",
    "download_timeout_seconds": "deadline of a whole model download",
    "intra_op_threads": "onnxruntime intra-op threads (0: onnxruntime's default)",
    "inter_op_threads": "onnxruntime inter-op threads (0: onnxruntime's default)",
    "max_body_bytes": "largest request body accepted (413 beyond it)",
    "large_body_bytes": "bodies from this size on are parsed off the event loop, one at a time",
    "max_header_bytes": "largest request line and headers accepted (431 beyond it)",
    "header_timeout_seconds": "a request's line and headers must arrive within this time (408 beyond it)",
    "body_timeout_seconds": "a request's body must arrive within this time after its headers (408 beyond it)",
    "keep_alive_timeout_seconds": "an idle kept-alive connection is closed after this many seconds",
    "limit_concurrency": "connections and requests one worker serves at once; beyond it requests get 503 "
    "with Retry-After",
    "drain_timeout_seconds": "on SIGTERM, how long to wait for queued and in-flight requests",
    "log_level": "critical, error, warning, info or debug",
    "predict_token_file": "file with a bearer token required for predictions (off when empty)",
    "feedback_dir": "folder (the shared feedback volume) where labelled samples are stored",
    "feedback_token_file": "file with the bearer token required by POST /feedback",
    "feedback_segment_bytes": "size at which this pod's feedback segment file rotates",
    "feedback_quota_bytes": "bytes the labels, prediction log and claims may use on the feedback volume (507 beyond)",
    "feedback_retention_seconds": "how long consumed labels stay on the volume before they are deleted",
    "feedback_maintenance_seconds": "how often the volume's usage is re-read and retention applied (default 10)",
    "prediction_log_dir": "log predictions here without feedback (payload logging); with --feedback-dir it is that",
    "prediction_log_sample_rate": "share of predictions logged, each answered with a request_id (0-1, default 1)",
    "prediction_retention_seconds": "how long logged predictions are kept, so labels can name them (default 7 days)",
    "prediction_log_segment_bytes": "size at which this process's prediction log segment rotates",
    "prediction_log_flush_ms": "wait between the prediction log's group writes (what kill -9 may lose)",
    "prediction_log_buffer_bytes": "most bytes of predictions waiting to be written (beyond: no request_id)",
    "request_retention_seconds": "deprecated name of --prediction-retention-seconds (used when set)",
    "feature_store": "online feature store, redis://HOST:PORT/DB",
    "feature_store_password": "password of the feature store (prefer feature-store-password-file)",
    "feature_store_password_file": "file holding the password of the feature store (a mounted Secret)",
    "feature_prefix": "key prefix of entity hashes in the feature store",
    "feature_fields": "comma-separated feature fields, in model input order",
    "feature_cache_ttl": "seconds an entity's features stay cached",
    "feature_cache_size": "most entities kept in the feature cache",
    "feature_miss_ttl": "seconds an entity the store does not have is answered 404 without asking again",
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


def settings_environ(settings: Settings) -> dict[str, str]:
    """The MODELFLEET_* variables that `load_settings` reads back into `settings` (for worker processes)."""
    environ = {}
    for f in dataclasses.fields(Settings):
        value = getattr(settings, f.name)
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, tuple):
            text = ",".join(value)
        else:
            text = str(value)
        environ[env_name(f.name)] = text
    return environ


def parse_serve_args(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(prog="modelfleet-runtime serve")
    add_serve_arguments(parser)
    return load_settings(vars(parser.parse_args(argv)), environ)


__all__ = [
    "MAX_WORKERS",
    "Settings",
    "SettingsError",
    "add_serve_arguments",
    "env_name",
    "load_settings",
    "parse_serve_args",
    "settings_environ",
]
