"""ModelFleet's server (1 and 2 workers) vs. a naive FastAPI server vs. the HTTP-stack ceiling and floor vs. raw ORT.

    .venv/bin/python -m bench.bench_runtime            # about 2.5 minutes (from the repository root)
    .venv/bin/python -m bench.bench_runtime --quick    # about 45 seconds

1. Builds two MLPs with onnx.helper (bench/models.py) and, at the start of
   every round, measures raw `session.run` rows/s at batch 1/8/32/64 for
   intra-op threads 1 and 2, with and without spinning: the physical limit of
   this machine (the best of the four, median over rounds).
2. Starts, as subprocesses on 127.0.0.1, ModelFleet's server
   (`modelfleet-runtime serve`, one process; and `--workers 2`, a supervisor
   and two worker processes), bench/naive_server.py, bench/ceiling_server.py
   (FastAPI answering a constant) and bench/bare_server.py (a bare ASGI
   callable answering a constant: the floor of any server on this stack), all
   on uvicorn with uvloop and httptools, none pinned to a core.
3. Loads them with the same generator (wrk when on PATH, else bench/loadgen.py)
   at 1 and 64 connections, in rounds; each round runs every server once per
   scenario, in a rotating order, so drift and noise from other work on the
   machine hit all of them alike. Medians over rounds are reported.
4. Entity lookups (issue 7): starts a Valkey server on 127.0.0.1 (tests/support/redis_server.py,
   persistence off), fills 10,000 entity hashes of 8 fields and serves the tabular
   model (8 entity fields + 24 request features = 32) from two more ModelFleet
   servers with `--feature-store`: one with the default cache (entity-hit: requests
   cycle over 64 ids that stay cached) and one with `--feature-cache-ttl 0` (entity-miss:
   every request a different id, each one read from Valkey). Their rows sit next to the
   plain 32-feature requests, which always run with them as the reference.
5. V2 infer (issue 13): single-row JSON tensors on the tabular model and 64-row binary
   tensors on the wide one, on ModelFleet's V2 route and, with `--pytriton-python`, on
   PyTriton (bench/pytriton_server.py: Triton's C++ server and dynamic batcher, in its own
   virtualenv; skipped with a message without it), beside the /predict rows.
6. The prediction log (issue 14), with `--feedback-log`: one more ModelFleet server per
   scenario with `--feedback-dir` on a fresh folder, so every prediction is logged and
   answers a request_id; its req/s, p99 and CPU per request are printed as ratios to
   the same server without it, per round (target: tabular 1-row c64 req/s >= 0.9 x off).

Prints a table and one JSON line (prefixed `BENCH_JSON `). A benchmark, not a
test: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.entities import fill_entities
from bench.models import input_width, write_models
from tests.support.redis_server import RedisServer, find_server_binary

HERE = Path(__file__).resolve().parent

BATCHES = (1, 8, 32, 64)
# The constant servers: FastAPI's (the framework's ceiling) and a bare ASGI callable (the stack's floor).
CONSTANT_KINDS = ("ceiling", "bare")
TWO_WORKERS = "modelfleet-2w"
PYTRITON = "pytriton"  # Triton's C++ server and dynamic batcher (bench/pytriton_server.py), with --pytriton-python
# (intra-op threads, spinning): onnxruntime settings tried for the raw limit.
ORT_CONFIGS = ((1, False), (1, True), (2, False), (2, True))

# Entity lookups: hashes "user:0" .. "user:9999" with fields f0..f7 in Valkey, placed before
# the request's own 24 features to make the tabular model's 32.
ENTITY_MODEL = "tabular"
ENTITY_FIELDS = tuple(f"f{i}" for i in range(8))
ENTITY_PREFIX = "user:"
ENTITIES = 10_000
HIT_IDS = 64  # entity-hit cycles over these ids, cached for the default 300 s TTL (warmed before round 1)


@dataclass(frozen=True)
class Scenario:
    model: str
    rows: int  # rows per request
    connections: int
    entity: str = ""  # "", or "hit"/"miss": {"entity_id", "features"} requests through the feature cache
    # "predict": POST /predict ({"features"} or {"instances"}); "v2": V2 infer with JSON tensors;
    # "v2-bin": V2 infer with binary tensors in and out (the binary tensor extension).
    protocol: str = "predict"

    @property
    def name(self) -> str:
        if self.entity:
            return f"{self.model} entity-{self.entity} c{self.connections}"
        suffix = "" if self.protocol == "predict" else f" {self.protocol}"
        return f"{self.model} {self.rows}-row c{self.connections}{suffix}"

    @property
    def plain(self) -> Scenario:
        """The plain /predict scenario an entity or V2 scenario is compared with (entity: the single-row one)."""
        return Scenario(self.model, 1 if self.entity else self.rows, self.connections)

    @property
    def compared(self) -> bool:
        """Measured on a few servers only and compared with its plain scenario."""
        return bool(self.entity) or self.protocol != "predict"


@dataclass
class Cell:
    """One server in one scenario: a measurement per round."""

    req_s: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    batch: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)  # server CPU time (all threads) per request
    errors: int = 0
    # Entity scenarios: feature cache hits / lookups, lookups per Valkey round trip, Valkey CPU per request.
    hit_ratio: list[float] = field(default_factory=list)
    misses_per_trip: list[float] = field(default_factory=list)
    store_cpu_us: list[float] = field(default_factory=list)


# -- raw onnxruntime -------------------------------------------------------------------------------


class RawOrt:
    """session.run rows/s per model, ORT config and batch size, measured a little in every round."""

    def __init__(self, paths: dict[str, Path], seconds: float) -> None:
        import onnxruntime as ort

        self.seconds = seconds
        self.sessions = {}
        self.samples: dict[tuple[str, str, int], list[float]] = {}
        rng = np.random.default_rng(0)
        self.inputs = {
            (m, b): rng.standard_normal((b, input_width(m))).astype(np.float32) for m in paths for b in BATCHES
        }
        for model, path in paths.items():
            for threads, spin in ORT_CONFIGS:
                options = ort.SessionOptions()
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                options.intra_op_num_threads = threads
                options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
                session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
                label = f"t{threads}{'-spin' if spin else ''}"
                self.sessions[(model, label)] = session
                for batch in BATCHES:
                    for _ in range(5):
                        session.run(None, {"features": self.inputs[(model, batch)]})

    def measure(self) -> None:
        for (model, label), session in self.sessions.items():
            for batch in BATCHES:
                x = {"features": self.inputs[(model, batch)]}
                count, started = 0, time.perf_counter()
                while (elapsed := time.perf_counter() - started) < self.seconds and count < 100_000:
                    session.run(None, x)
                    count += 1
                self.samples.setdefault((model, label, batch), []).append(count * batch / elapsed)

    def medians(self) -> dict[str, dict[str, dict[int, float]]]:
        results: dict[str, dict[str, dict[int, float]]] = {}
        for (model, label, batch), values in self.samples.items():
            results.setdefault(model, {}).setdefault(label, {})[batch] = statistics.median(values)
        return results


def best_raw(raw: dict[str, dict[int, float]], batch: int) -> float:
    return max(config[batch] for config in raw.values())


def nearest_batch(mean_batch: float) -> int:
    """The measured batch size closest to `mean_batch` on a log scale."""
    return min(BATCHES, key=lambda b: abs(np.log(b) - np.log(max(mean_batch, 1.0))))


# -- servers ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc/PID/task/PID/children."""
    tree, queue = [], [pid]
    while queue:
        current = queue.pop()
        tree.append(current)
        try:
            queue += [int(c) for c in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
        except OSError:
            continue
    return tree


class Server:
    def __init__(
        self, kind: str, argv: list[str], health: str, log_dir: Path, label: str, env: dict[str, str] | None = None
    ) -> None:
        self.kind = kind
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.health = health
        self.log = open(log_dir / f"{label}.log", "wb")  # noqa: SIM115 - open while the server runs; stop() closes it
        self.process = subprocess.Popen(
            [*argv, "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=HERE.parent,
            env={**os.environ, **(env or {})},
        )

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.process.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(self.url + self.health, timeout=1) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.kind} not ready in time; see {self.log.name}")

    def counters(self) -> dict[str, float] | None:
        """ModelFleet's counters so far (rows run, model runs, feature lookups...); None for other servers."""
        if self.kind in ("naive", PYTRITON, *CONSTANT_KINDS):
            return None
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as answer:
            text = answer.read().decode()
        names = {
            "rows": "modelfleet_inference_rows_total",
            "runs": "modelfleet_batch_size_rows_count",
            "lookups": "modelfleet_feature_lookups_total",
            "hits": "modelfleet_feature_cache_hits_total",
            "misses": "modelfleet_feature_cache_misses_total",
            "trips": "modelfleet_feature_store_round_trips_total",
        }
        # Series carry labels (model, version, ...): sum every series of the name.
        found = {key: re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE) for key, name in names.items()}
        return {key: sum(float(v) for v in values) for key, values in found.items() if values}

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server's processes so far (all their threads; with workers, all of them)."""
        total = 0.0
        for pid in process_tree(self.process.pid):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.log.close()


def infer_url(server: Server, s: Scenario) -> str:
    """Where `server` answers scenario `s`: /predict, or the V2 infer route (PyTriton serves its model as `m`)."""
    if s.protocol == "predict":
        return server.url + "/predict"
    return server.url + ("/v2/models/m/infer" if server.kind == PYTRITON else "/v2/models/model/infer")


# -- load ------------------------------------------------------------------------------------------


def load(url: str, body_file: Path, connections: int, seconds: int, entities: int = 0, entity_start: int = 0) -> dict:
    """One measurement. With `entities`, body_file holds the request's own features and each request
    names the next entity id of "0" .. str(entities - 1), from `entity_start` on."""
    if shutil.which("wrk"):
        argv = [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(HERE / ("entity.lua" if entities else "post.lua")),
            url,
        ]
    else:
        argv = [
            sys.executable,
            str(HERE / "loadgen.py"),
            "--url",
            url,
            "--body-file",
            str(body_file),
            "--connections",
            str(connections),
            "--duration",
            str(seconds),
        ]
        if entities:
            argv += ["--entities", str(entities), "--entity-start", str(entity_start)]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        env={
            **os.environ,
            "BENCH_BODY": str(body_file),
            "BENCH_ENTITIES": str(entities),
            "BENCH_ENTITY_START": str(entity_start),
        },
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"load generator failed: {done.stdout[-500:]} {done.stderr[-500:]}")
    return json.loads(lines[-1])


def body(model: str, rows: int, folder: Path, protocol: str = "predict") -> Path:
    """The request body of a scenario (the same numbers whatever the protocol); binary V2 also writes
    its headers to `<body>.headers`, which post.lua and loadgen.py send."""
    rng = np.random.default_rng(1)
    array = np.round(rng.standard_normal((rows, input_width(model))), 4)
    values = array.tolist()
    path = folder / f"{model}-{rows}-{protocol}.json"
    if protocol == "predict":
        path.write_text(json.dumps({"features": values[0]} if rows == 1 else {"instances": values}))
    elif protocol == "v2":
        tensor = {"name": "features", "shape": list(array.shape), "datatype": "FP32", "data": array.ravel().tolist()}
        path.write_text(json.dumps({"inputs": [tensor]}))
    else:
        raw = array.astype(np.float32).tobytes()
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "features",
                        "shape": list(array.shape),
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ],
                "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
            }
        ).encode()
        path.write_bytes(header + raw)
        headers = f"Content-Type: application/octet-stream\nInference-Header-Content-Length: {len(header)}\n"
        Path(f"{path}.headers").write_text(headers)
    return path


def entity_body(model: str, folder: Path) -> Path:
    """The request's own features of an entity request (the model's width minus the entity's fields)."""
    rng = np.random.default_rng(2)
    values = np.round(rng.standard_normal(input_width(model) - len(ENTITY_FIELDS)), 4).tolist()
    path = folder / f"{model}-entity.json"
    path.write_text(json.dumps(values))
    return path


def warm_entity_cache(url: str, body_file: Path, ids: int) -> None:
    """One request per id, so that entity-hit measures hits from its first request on."""
    features = json.loads(body_file.read_text())
    for n in range(ids):
        request = urllib.request.Request(
            url + "/predict",
            data=json.dumps({"entity_id": str(n), "features": features}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            answer.read()


# -- the run ---------------------------------------------------------------------------------------


# The variant --feedback-log adds: the same server with the prediction log on.
FEEDBACK_LOG = "feedback-log"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and scenarios (about 45 s)")
    parser.add_argument("--rounds", type=int, help="rounds of every scenario (default 5, quick 2)")
    parser.add_argument("--seconds", type=int, default=1, help="load duration of one measurement (wrk: whole s)")
    parser.add_argument(
        "--intra-op-threads",
        type=int,
        default=0,
        help="onnxruntime intra-op threads for both model servers (0: each one's default)",
    )
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra flag for modelfleet-runtime serve (repeatable), e.g. --server-arg=--max-latency-ms=5",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:SPEC",
        help="also run a second ModelFleet server side by side, for tuning: SPEC is extra serve "
        "flags, and a token @DIR runs the runtime package found in DIR instead "
        "(e.g. 't1:--intra-op-threads 1' or 'base:@/tmp/base/runtime'); {volume} in SPEC is a "
        "fresh folder per server",
    )
    parser.add_argument(
        "--feedback-log",
        action="store_true",
        help="also run the variant 'feedback-log' (--feedback-dir on a fresh folder: every prediction "
        "logged) and print its cost against the same server without it (issue 14)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="TEXT",
        help="run only the scenarios whose name contains TEXT (repeatable), e.g. 'wide 64-row'",
    )
    parser.add_argument("--no-entity", action="store_true", help="skip the entity-lookup scenarios (and Valkey)")
    parser.add_argument(
        "--pytriton-python",
        default=os.environ.get("MODELFLEET_BENCH_PYTRITON", ""),
        metavar="PYTHON",
        help="the python of a virtualenv with nvidia-pytriton, numpy and onnxruntime (never the project's): "
        "PyTriton then serves the V2 scenarios beside ModelFleet (default $MODELFLEET_BENCH_PYTRITON; "
        "without it PyTriton is skipped), e.g. /work/pytriton-venv/bin/python",
    )
    return parser.parse_args()


def select_scenarios(args: argparse.Namespace) -> list[Scenario]:
    """The scenarios of this run, in the order they are measured."""
    # Entity scenarios follow the plain tabular rows they are compared with; --quick keeps c64 only.
    scenarios = [
        Scenario("tabular", 1, 1),
        Scenario("tabular", 1, 64),
        Scenario("tabular", 1, 64, protocol="v2"),
        *(Scenario(ENTITY_MODEL, 1, c, mode) for c in ((64,) if args.quick else (1, 64)) for mode in ("hit", "miss")),
        Scenario("wide", 1, 1),
        Scenario("wide", 1, 64),
        Scenario("wide", 64, 64),
        Scenario("wide", 64, 64, protocol="v2-bin"),
    ]
    if not args.quick:
        scenarios.insert(-2, Scenario("wide", 64, 1))
    if args.no_entity:
        scenarios = [s for s in scenarios if not s.entity]
    if args.only:
        kept = [s for s in scenarios if any(part in s.name for part in args.only)]
        # An entity or V2 scenario brings its plain reference along.
        scenarios = [s for s in scenarios if s in kept or any(k.compared and k.plain == s for k in kept)]
    if any(s.entity for s in scenarios):
        try:
            find_server_binary()
        except RuntimeError as exc:
            print(f"skipping the entity scenarios: {exc}", flush=True)
            scenarios = [s for s in scenarios if not s.entity]
    return scenarios


def start_valkey() -> RedisServer:
    valkey = RedisServer()
    valkey.start()
    fill_entities(valkey.url, ENTITY_PREFIX, ENTITY_FIELDS, ENTITIES)
    print(
        f"valkey {valkey.binary} on 127.0.0.1:{valkey.port}: {ENTITIES:,} entities of {len(ENTITY_FIELDS)} fields",
        flush=True,
    )
    return valkey


def sizing_flags(rows: int, mode: str, valkey: RedisServer | None) -> list[str]:
    """The serve flags of a ModelFleet server for requests of `rows` rows, or for entity mode `mode`."""
    if not mode:
        # 64-row requests: batches of 64 rows, and a queue that holds 64 connections' worth of them.
        return ["--max-batch-size", "64", "--max-queue", "8192"] if rows > 1 else []
    assert valkey is not None
    flags = [
        "--feature-store",
        valkey.url,
        "--feature-prefix",
        ENTITY_PREFIX,
        "--feature-fields",
        ",".join(ENTITY_FIELDS),
    ]
    if mode == "miss":
        flags += ["--feature-cache-ttl", "0"]  # the cache keeps nothing: every lookup reads Valkey
    return flags


def start_model_servers(
    servers: dict[tuple[str, str, int, str], Server],
    scenarios: list[Scenario],
    paths: dict[str, Path],
    work: Path,
    args: argparse.Namespace,
    variants: dict[str, str],
    valkey: RedisServer | None,
) -> None:
    """Per model a naive server, and per (model, rows, entity mode) a ModelFleet server and one per variant.

    Each server goes into `servers` as soon as it is started, so that the caller stops it whatever happens next.
    """
    # No gRPC: several servers run side by side, and each would take the default gRPC port 8081.
    runtime = [str(Path(sys.executable).with_name("modelfleet-runtime")), "serve", "--log-level", "warning"]
    runtime += ["--grpc-port", "0"]
    threads = ["--intra-op-threads", str(args.intra_op_threads)] if args.intra_op_threads else []
    for model in sorted({s.model for s in scenarios if s.protocol != "predict"} if args.pytriton_python else ()):
        servers[(PYTRITON, model, 1, "")] = Server(
            PYTRITON,
            [args.pytriton_python, str(HERE / "pytriton_server.py"), "--model", str(paths[model]), *threads],
            "/v2/models/m/ready",
            work,
            f"{PYTRITON}-{model}",
        )
    for model in sorted({s.model for s in scenarios}):
        servers[("naive", model, 1, "")] = Server(
            "naive",
            [sys.executable, "-m", "bench.naive_server", "--model", str(paths[model]), *threads],
            "/health",
            work,
            f"naive-{model}",
        )
        for rows, mode in sorted(
            {(s.rows, s.entity) for s in scenarios if s.model == model and s.protocol == "predict"}
        ):
            sizing = sizing_flags(rows, mode, valkey)
            label = f"{model}-{rows}" + (f"-entity-{mode}" if mode else "")
            servers[("modelfleet", model, rows, mode)] = Server(
                "modelfleet",
                [*runtime, "--model", str(paths[model]), *sizing, *threads, *args.server_arg],
                "/v2/health/ready",
                work,
                f"modelfleet-{label}",
            )
            if not mode:  # the same server on every core: a supervisor and two workers
                servers[(TWO_WORKERS, model, rows, mode)] = Server(
                    TWO_WORKERS,
                    [*runtime, "--model", str(paths[model]), "--workers", "2", *sizing, *threads, *args.server_arg],
                    "/v2/health/ready",
                    work,
                    f"{TWO_WORKERS}-{label}",
                )
            for name, spec in variants.items():
                tokens = shlex.split(spec.replace("{volume}", str(work / f"{name}-{label}-volume")))
                extra = [t for t in tokens if not t.startswith("@")]
                roots = [t[1:] for t in tokens if t.startswith("@")]
                argv = [sys.executable, "-m", "modelfleet_runtime.cli", *runtime[1:]]
                env = {"PYTHONPATH": os.pathsep.join(roots)} if roots else None
                servers[(name, model, rows, mode)] = Server(
                    name,
                    [*argv, "--model", str(paths[model]), *sizing, *threads, *args.server_arg, *extra],
                    "/v2/health/ready",
                    work,
                    f"{name}-{label}",
                    env,
                )


def get_ready(constants: dict[str, Server], servers: dict[tuple[str, str, int, str], Server], bodies: dict) -> None:
    """Wait until every server answers, then fill the caches that entity-hit measures."""
    deadline = time.monotonic() + 90
    for constant in constants.values():
        constant.wait_ready(deadline)
    for server in servers.values():
        server.wait_ready(deadline)
    for (_, model, _, mode), server in servers.items():
        if mode == "hit":
            warm_entity_cache(server.url, bodies[(model, "entity")], HIT_IDS)


def model_server(servers: dict[tuple[str, str, int, str], Server], kind: str, s: Scenario) -> Server:
    """The server of `kind` for scenario `s`: naive and PyTriton are one per model, the others one per rows and mode."""
    if kind in ("naive", PYTRITON):
        return servers[(kind, s.model, 1, "")]
    return servers[(kind, s.model, s.rows, s.entity)]


def measure(
    server: Server,
    cell: Cell,
    s: Scenario,
    bodies: dict[tuple[Any, ...], Path],
    valkey: RedisServer | None,
    seconds: int,
    spread: np.random.Generator,
) -> None:
    """One measurement of `server` in scenario `s`, added to `cell`."""
    if s.entity:
        # hit: 64 cached ids in turn; miss: all 10,000 ids from a random start, none cached.
        ids = HIT_IDS if s.entity == "hit" else ENTITIES
        extra = {
            "body_file": bodies[(s.model, "entity")],
            "entities": ids,
            "entity_start": int(spread.integers(ids)),
        }
    else:
        extra = {"body_file": bodies[(s.model, s.rows, s.protocol)]}
    before, cpu_before = server.counters(), server.cpu_seconds()
    store_before = valkey.cpu_seconds() if s.entity and valkey else 0.0
    result = load(infer_url(server, s), connections=s.connections, seconds=seconds, **extra)
    cpu = server.cpu_seconds() - cpu_before
    after = server.counters()
    done = max(result["requests"], 1)
    cell.cpu_us.append(cpu / done * 1e6)
    cell.req_s.append(result["requests"] / (result["duration_us"] / 1e6))
    cell.p50_ms.append(result["p50_us"] / 1000)
    cell.p99_ms.append(result["p99_us"] / 1000)
    cell.errors += sum(result["errors"].values())
    if before and after and after["runs"] > before["runs"]:
        cell.batch.append((after["rows"] - before["rows"]) / (after["runs"] - before["runs"]))
    if s.entity and valkey and before and after and after["lookups"] > before["lookups"]:
        lookups = after["lookups"] - before["lookups"]
        cell.hit_ratio.append((after["hits"] - before["hits"]) / lookups)
        trips = after["trips"] - before["trips"]
        if trips:
            cell.misses_per_trip.append((after["misses"] - before["misses"]) / trips)
        cell.store_cpu_us.append((valkey.cpu_seconds() - store_before) / done * 1e6)


def scenario_kinds(args: argparse.Namespace, variants: dict[str, str]) -> Callable[[Scenario], tuple[str, ...]]:
    """Which servers run a scenario: all of them for /predict, ModelFleet's for entities, ModelFleet and PyTriton
    for V2."""
    kinds = ("modelfleet", TWO_WORKERS, *variants, "naive", *CONSTANT_KINDS)
    model_kinds = ("modelfleet", *variants)  # the servers that do entity lookups
    pytriton = (PYTRITON,) if args.pytriton_python else ()
    if not args.pytriton_python:
        print("PyTriton skipped: no --pytriton-python (or MODELFLEET_BENCH_PYTRITON) given", flush=True)
    elif not Path(args.pytriton_python).exists():
        raise SystemExit(f"--pytriton-python {args.pytriton_python}: no such interpreter")

    def kinds_of(s: Scenario) -> tuple[str, ...]:
        if s.entity:
            return model_kinds
        if s.protocol != "predict":  # ModelFleet's V2 route, against PyTriton on the same protocol
            return ("modelfleet", *pytriton)
        return kinds

    return kinds_of


def main() -> int:
    args = parse_args()
    if args.feedback_log:
        args.variant.append(f"{FEEDBACK_LOG}:--feedback-dir {{volume}}")
    variants = dict(v.split(":", 1) for v in args.variant)
    rounds = args.rounds or (2 if args.quick else 5)
    scenarios = select_scenarios(args)
    entity_scenarios = [s for s in scenarios if s.entity]
    kinds_of = scenario_kinds(args, variants)

    work = Path(tempfile.mkdtemp(prefix="modelfleet-bench-"))
    paths = write_models(work / "models")
    bodies: dict[tuple[Any, ...], Path] = {
        (s.model, s.rows, s.protocol): body(s.model, s.rows, work, s.protocol) for s in scenarios if not s.entity
    }
    if entity_scenarios:
        bodies[(ENTITY_MODEL, "entity")] = entity_body(ENTITY_MODEL, work)
    generator = "wrk" if shutil.which("wrk") else "python loadgen"
    print(
        f"load generator: {generator}; {rounds} rounds x {args.seconds}s; {os.cpu_count()} cores; logs in {work}",
        flush=True,
    )

    t0 = time.monotonic()
    raw_ort = RawOrt(paths, 0.03 if args.quick else 0.05)

    servers: dict[tuple[str, str, int, str], Server] = {}
    constants: dict[str, Server] = {}
    valkey: RedisServer | None = None
    try:
        for kind in CONSTANT_KINDS:
            constants[kind] = Server(kind, [sys.executable, "-m", f"bench.{kind}_server"], "/health", work, kind)
        if entity_scenarios:
            valkey = start_valkey()
        start_model_servers(servers, scenarios, paths, work, args, variants, valkey)
        get_ready(constants, servers, bodies)
        spread = np.random.default_rng(3)
        cells = {(s, kind): Cell() for s in scenarios for kind in kinds_of(s)}
        for r in range(rounds):
            raw_ort.measure()  # the physical limit, in the same conditions as this round's servers
            for s in scenarios:
                order = kinds_of(s)[r % len(kinds_of(s)) :] + kinds_of(s)[: r % len(kinds_of(s))]
                for kind in order:
                    server = constants[kind] if kind in constants else model_server(servers, kind, s)
                    measure(server, cells[(s, kind)], s, bodies, valkey, args.seconds, spread)
            print(f"round {r + 1}/{rounds} done at {time.monotonic() - t0:.0f}s", flush=True)
    finally:
        for server in [*servers.values(), *constants.values()]:
            server.stop()
        if valkey is not None:
            valkey.close()

    raw = raw_ort.medians()
    print_raw(raw)
    report(scenarios, cells, raw, rounds, generator, args, kinds_of)
    print(f"total {time.monotonic() - t0:.0f}s")
    shutil.rmtree(work / "models", ignore_errors=True)
    return 0


def print_raw(raw: dict[str, dict[str, dict[int, float]]]) -> None:
    print("\nraw onnxruntime session.run in this process, rows/s (median over rounds; servers idle)")
    print(f"{'model':<8} {'config':<8} " + " ".join(f"{'batch ' + str(b):>11}" for b in BATCHES))
    for model, configs in raw.items():
        for label, by_batch in configs.items():
            print(f"{model:<8} {label:<8} " + " ".join(f"{by_batch[b]:>11,.0f}" for b in BATCHES))


def per_round_ratio(cell: Cell, reference: Cell | None) -> float | None:
    """The median over rounds of cell's req/s / the reference's in the same round."""
    if reference is None:
        return None
    return statistics.median(a / b for a, b in zip(cell.req_s, reference.req_s, strict=True))


def result_row(
    s: Scenario, kind: str, cell: Cell, ceiling: Cell | None, floor: Cell | None, raw: dict
) -> tuple[dict[str, Any], str]:
    """The JSON result of one server in one scenario (medians over rounds, ratios per round) and its table line."""
    med = statistics.median
    req = med(cell.req_s)
    x_ceiling = per_round_ratio(cell, ceiling)
    x_floor = per_round_ratio(cell, floor)
    mean_batch = med(cell.batch) if cell.batch else (float(s.rows) if kind == "naive" else None)
    x_ort = None
    if mean_batch is not None:
        x_ort = req * s.rows / best_raw(raw[s.model], nearest_batch(mean_batch))
    row = {
        "scenario": s.name,
        "model": s.model,
        "rows_per_request": s.rows,
        "connections": s.connections,
        "entity": s.entity or None,
        "protocol": s.protocol,
        "server": kind,
        "req_s": round(req, 1),
        "rows_s": round(req * s.rows, 1),
        "p50_ms": round(med(cell.p50_ms), 3),
        "p99_ms": round(med(cell.p99_ms), 3),
        "mean_batch": None if mean_batch is None else round(mean_batch, 2),
        "x_ceiling": None if x_ceiling is None else round(x_ceiling, 3),
        "x_floor": None if x_floor is None else round(x_floor, 3),
        "x_ort": None if x_ort is None else round(x_ort, 3),
        "cpu_us_per_request": round(med(cell.cpu_us), 1),
        "errors": cell.errors,
    }
    if s.entity:
        row.update(
            cache_hit_ratio=round(med(cell.hit_ratio), 4) if cell.hit_ratio else None,
            misses_per_round_trip=round(med(cell.misses_per_trip), 2) if cell.misses_per_trip else None,
            valkey_cpu_us_per_request=round(med(cell.store_cpu_us), 1) if cell.store_cpu_us else None,
        )
    batch_text = f"{mean_batch:5.1f}" if mean_batch is not None else "    -"
    ort_text = f"{x_ort:5.2f}" if x_ort is not None else "    -"
    ceiling_text = f"{x_ceiling:9.2f}" if x_ceiling is not None else "        -"
    floor_text = f"{x_floor:7.2f}" if x_floor is not None else "      -"
    line = (
        f"{s.name:<23} {kind[:13]:<13} {req:>8,.0f} {req * s.rows:>10,.0f} {row['p50_ms']:>7.2f} "
        f"{row['p99_ms']:>7.2f}  {batch_text}  {ceiling_text}  {floor_text}  {ort_text}  "
        f"{med(cell.cpu_us):>10,.0f}  {cell.errors:>6}"
    )
    return row, line


def targets_of(rows_out: list[dict[str, Any]], raw: dict, cells: dict) -> dict[str, dict[str, Any]]:
    """The targets of issues 2 and 13: ModelFleet against the ceiling, the floor, the naive server, PyTriton,
    raw ORT and itself."""

    def find(model: str, rows: int, conns: int, kind: str, protocol: str = "predict") -> dict | None:
        return next(
            (
                r
                for r in rows_out
                if (r["model"], r["rows_per_request"], r["connections"], r["server"], r["protocol"])
                == (model, rows, conns, kind, protocol)
                and not r["entity"]
            ),
            None,
        )

    targets = {}
    for model, goal in (("tabular", 0.9), ("wide", 0.8)):
        row = find(model, 1, 64, "modelfleet")
        if row:
            targets[f"{model} 1-row c64 x ceiling"] = {"value": row["x_ceiling"], "target": f">= {goal}"}
    for model in ("tabular", "wide"):
        mf, naive = find(model, 1, 1, "modelfleet"), find(model, 1, 1, "naive")
        if mf and naive:
            targets[f"{model} 1-row c1 p50 / naive p50"] = {
                "value": round(mf["p50_ms"] / naive["p50_ms"], 3),
                "target": "<= 1.1",  # issue 13 (issue 2 asked <= 1.2)
            }
    # Issue 13: one worker against the bare-ASGI floor, two workers against one.
    row = find("tabular", 1, 64, "modelfleet")
    if row and row["x_floor"] is not None:
        targets["tabular 1-row c64 x bare-ASGI floor"] = {"value": row["x_floor"], "target": ">= 0.4"}
    for model in ("tabular", "wide"):
        one, two = find(model, 1, 64, "modelfleet"), find(model, 1, 64, TWO_WORKERS)
        if one and two:
            targets[f"{model} 1-row c64 2 workers / 1 worker req/s"] = {
                "value": round(two["req_s"] / one["req_s"], 3),
                "target": ">= 1.6",
            }
    return targets | issue_13_targets(find, raw, cells)


def issue_13_targets(find: Callable[..., dict | None], raw: dict, cells: dict) -> dict[str, dict[str, Any]]:
    """The tail against PyTriton's and its own p50, V2 JSON against /predict, 64-row requests against raw ORT."""
    targets = {}
    # The tail, against PyTriton's (V2 JSON, the same model, rows and connections) and the server's own p50.
    for protocol in ("predict", "v2"):
        row, triton = find("tabular", 1, 64, "modelfleet", protocol), find("tabular", 1, 64, PYTRITON, "v2")
        label = "/predict" if protocol == "predict" else "V2 JSON"
        if row and triton:
            targets[f"tabular 1-row c64 {label} p99 / PyTriton p99"] = {
                "value": round(row["p99_ms"] / triton["p99_ms"], 3),
                "target": "<= 1.0",
            }
        if row:
            targets[f"tabular 1-row c64 {label} p99 / own p50"] = {
                "value": round(row["p99_ms"] / row["p50_ms"], 3),
                "target": "<= 2.5",
            }
    v2, predict = Scenario("tabular", 1, 64, protocol="v2"), Scenario("tabular", 1, 64)
    if (v2, "modelfleet") in cells and (predict, "modelfleet") in cells:
        targets["tabular 1-row c64 V2 JSON / /predict req/s"] = {
            "value": round(per_round_ratio(cells[(v2, "modelfleet")], cells[(predict, "modelfleet")]) or 0.0, 3),
            "target": ">= 0.95",
        }
    for protocol, label, goal in (("predict", "JSON", ">= 0.5"), ("v2-bin", "binary V2", ">= 0.8")):
        row = find("wide", 64, 64, "modelfleet", protocol)
        if row:
            targets[f"wide 64-row c64 {label} rows/s / raw ORT batch 64"] = {
                "value": round(row["rows_s"] / best_raw(raw["wide"], 64), 3),
                "target": goal,
            }
    return targets


def entity_ratios(scenarios: list[Scenario], cells: dict, kinds_of) -> dict[str, dict[str, float]]:
    """Entity lookups vs. the plain 32-feature requests on the same connections, same round; printed as a table."""
    med = statistics.median
    entity = {}
    entity_scenarios = [s for s in scenarios if s.entity and (s.plain, "modelfleet") in cells]
    if entity_scenarios:
        print("\nentity lookups (issue 7) vs. plain 32-feature requests, same connections, per-round ratios")
        print(
            f"  {'scenario':<23} {'server':<10} {'req/s x plain':>13} {'p50 x plain':>11} {'cpu x plain':>11} "
            f"{'cache hits':>10} {'misses/trip':>12} {'valkey us/req':>13}"
        )
    for s in entity_scenarios:
        for kind in kinds_of(s):
            cell, plain = cells[(s, kind)], cells[(s.plain, kind)]
            ratio = {
                "req_s_x_plain": round(med(a / b for a, b in zip(cell.req_s, plain.req_s, strict=True)), 3),
                "p50_x_plain": round(med(a / b for a, b in zip(cell.p50_ms, plain.p50_ms, strict=True)), 3),
                "cpu_x_plain": round(med(a / b for a, b in zip(cell.cpu_us, plain.cpu_us, strict=True)), 3),
            }
            entity[f"{s.name} {kind}"] = ratio
            hits = f"{med(cell.hit_ratio):10.1%}" if cell.hit_ratio else "         -"
            trips = f"{med(cell.misses_per_trip):12.1f}" if cell.misses_per_trip else "           -"
            store = f"{med(cell.store_cpu_us):13.0f}" if cell.store_cpu_us else "            -"
            print(
                f"  {s.name:<23} {kind[:10]:<10} {ratio['req_s_x_plain']:>13.2f} {ratio['p50_x_plain']:>11.2f} "
                f"{ratio['cpu_x_plain']:>11.2f} {hits} {trips} {store}"
            )
    return entity


def prediction_log_ratios(scenarios: list[Scenario], cells: dict) -> dict[str, dict[str, float]]:
    """The prediction log's cost: the feedback-log variant vs. the same server without it, same round."""
    med = statistics.median
    ratios = {}
    logged = [s for s in scenarios if (s, FEEDBACK_LOG) in cells and (s, "modelfleet") in cells]
    if logged:
        print("\nprediction log (issue 14): --feedback-dir on vs off, same scenario, per-round ratios")
        print(f"  {'scenario':<23} {'req/s x off':>11} {'p99 x off':>9} {'cpu x off':>9}  target")
    for s in logged:
        on, off = cells[(s, FEEDBACK_LOG)], cells[(s, "modelfleet")]
        ratio = {
            "req_s_x_off": round(med(a / b for a, b in zip(on.req_s, off.req_s, strict=True)), 3),
            "p99_x_off": round(med(a / b for a, b in zip(on.p99_ms, off.p99_ms, strict=True)), 3),
            "cpu_x_off": round(med(a / b for a, b in zip(on.cpu_us, off.cpu_us, strict=True)), 3),
        }
        ratios[s.name] = ratio
        target = "req/s >= 0.9 x off" if (s.model, s.rows, s.connections) == ("tabular", 1, 64) else ""
        print(
            f"  {s.name:<23} {ratio['req_s_x_off']:>11.2f} {ratio['p99_x_off']:>9.2f} {ratio['cpu_x_off']:>9.2f}  "
            f"{target}"
        )
    return ratios


def report(
    scenarios: list[Scenario], cells: dict, raw: dict, rounds: int, generator: str, args: argparse.Namespace, kinds_of
) -> None:
    rows_out = []
    print(
        "\nscenario                server          req/s     rows/s  p50 ms  p99 ms  batch  x ceiling  x floor  "
        "x ORT  cpu us/req  errors"
    )
    for s in scenarios:
        # Entity scenarios run on ModelFleet only; their ceiling is the plain requests' in the same round.
        ceiling = cells.get((s.plain if s.compared else s, "ceiling"))
        floor = cells.get((s.plain if s.compared else s, "bare"))
        for kind in kinds_of(s):
            row, line = result_row(s, kind, cells[(s, kind)], ceiling, floor, raw)
            rows_out.append(row)
            print(line)

    targets = targets_of(rows_out, raw, cells)
    print("\ntargets (issues 2 and 13)")
    for name, t in targets.items():
        print(f"  {name:<50} {t['value']:>6.2f}  (target {t['target']})")

    entity = entity_ratios(scenarios, cells, kinds_of)
    log_cost = prediction_log_ratios(scenarios, cells)
    print(
        "BENCH_JSON "
        + json.dumps(
            {
                "bench": "runtime",
                "generator": generator,
                "rounds": rounds,
                "seconds_per_measurement": args.seconds,
                "cores": os.cpu_count(),
                "intra_op_threads": args.intra_op_threads,
                "server_args": args.server_arg,
                "variants": args.variant,
                "raw_ort_rows_s": {
                    m: {c: {str(b): round(v, 1) for b, v in bb.items()} for c, bb in cc.items()}
                    for m, cc in raw.items()
                },
                "entity": {"fields": len(ENTITY_FIELDS), "entities": ENTITIES, "hit_ids": HIT_IDS, "ratios": entity}
                if entity
                else None,
                "results": rows_out,
                "targets": targets,
                "prediction_log": log_cost or None,
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
