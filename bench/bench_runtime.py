"""ModelFleet's server vs. a naive unbatched FastAPI server vs. the HTTP-stack ceiling vs. raw onnxruntime.

    .venv/bin/python bench/bench_runtime.py            # about 2.5 minutes
    .venv/bin/python bench/bench_runtime.py --quick    # about 45 seconds

1. Builds two MLPs with onnx.helper (bench/models.py) and, at the start of
   every round, measures raw `session.run` rows/s at batch 1/8/32/64 for
   intra-op threads 1 and 2, with and without spinning: the physical limit of
   this machine (the best of the four, median over rounds).
2. Starts, as subprocesses on 127.0.0.1, ModelFleet's server
   (`modelfleet-runtime serve`), bench/naive_server.py and
   bench/ceiling_server.py, all with one uvicorn worker, uvloop and httptools,
   none pinned to a core.
3. Loads them with the same generator (wrk when on PATH, else bench/loadgen.py)
   at 1 and 64 connections, in rounds; each round runs every server once per
   scenario, in a rotating order, so drift and noise from other work on the
   machine hit all of them alike. Medians over rounds are reported.

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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from models import input_width, write_models  # noqa: E402

BATCHES = (1, 8, 32, 64)
# (intra-op threads, spinning): onnxruntime settings tried for the raw limit.
ORT_CONFIGS = ((1, False), (1, True), (2, False), (2, True))


@dataclass(frozen=True)
class Scenario:
    model: str
    rows: int  # rows per request
    connections: int

    @property
    def name(self) -> str:
        return f"{self.model} {self.rows}-row c{self.connections}"


@dataclass
class Cell:
    """One server in one scenario: a measurement per round."""

    req_s: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    batch: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)  # server CPU time (all threads) per request
    errors: int = 0


# -- raw onnxruntime -------------------------------------------------------------------------------


class RawOrt:
    """session.run rows/s per model, ORT config and batch size, measured a little in every round."""

    def __init__(self, paths: dict[str, Path], seconds: float) -> None:
        import onnxruntime as ort

        self.seconds = seconds
        self.sessions = {}
        self.samples: dict[tuple[str, str, int], list[float]] = {}
        rng = np.random.default_rng(0)
        self.inputs = {(m, b): rng.standard_normal((b, input_width(m))).astype(np.float32)
                       for m in paths for b in BATCHES}
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


class Server:
    def __init__(self, kind: str, argv: list[str], health: str, log_dir: Path, label: str,
                 env: dict[str, str] | None = None) -> None:
        self.kind = kind
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.health = health
        self.log = open(log_dir / f"{label}.log", "wb")
        self.process = subprocess.Popen([*argv, "--host", "127.0.0.1", "--port", str(self.port)],
                                        stdout=self.log, stderr=subprocess.STDOUT, cwd=HERE.parent,
                                        env={**os.environ, **(env or {})})

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

    def batch_counters(self) -> tuple[float, float] | None:
        """(rows run, model runs) so far, from ModelFleet's /metrics; None for other servers."""
        if self.kind in ("naive", "ceiling"):
            return None
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as answer:
            text = answer.read().decode()
        rows = re.search(r"^modelfleet_inference_rows_total (\S+)$", text, re.M)
        runs = re.search(r"^modelfleet_batch_size_rows_count (\S+)$", text, re.M)
        return float(rows.group(1)), float(runs.group(1))

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (all its threads)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.log.close()


# -- load ------------------------------------------------------------------------------------------


def load(url: str, body_file: Path, connections: int, seconds: int) -> dict:
    if shutil.which("wrk"):
        argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
                "-s", str(HERE / "post.lua"), url]
    else:
        argv = [sys.executable, str(HERE / "loadgen.py"), "--url", url, "--body-file", str(body_file),
                "--connections", str(connections), "--duration", str(seconds)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30,
                          env={**os.environ, "BENCH_BODY": str(body_file)})
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"load generator failed: {done.stdout[-500:]} {done.stderr[-500:]}")
    return json.loads(lines[-1])


def body(model: str, rows: int, folder: Path) -> Path:
    rng = np.random.default_rng(1)
    values = np.round(rng.standard_normal((rows, input_width(model))), 4).tolist()
    payload = {"features": values[0]} if rows == 1 else {"instances": values}
    path = folder / f"{model}-{rows}.json"
    path.write_text(json.dumps(payload))
    return path


# -- the run ---------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and scenarios (about 45 s)")
    parser.add_argument("--rounds", type=int, help="rounds of every scenario (default 5, quick 2)")
    parser.add_argument("--seconds", type=int, default=1, help="load duration of one measurement (wrk: whole s)")
    parser.add_argument("--intra-op-threads", type=int, default=0,
                        help="onnxruntime intra-op threads for both model servers (0: each one's default)")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra flag for modelfleet-runtime serve (repeatable), e.g. --server-arg=--max-latency-ms=5")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:SPEC",
                        help="also run a second ModelFleet server side by side, for tuning: SPEC is extra serve "
                             "flags, and a token @DIR runs the runtime package found in DIR instead "
                             "(e.g. 't1:--intra-op-threads 1' or 'base:@/tmp/base/runtime')")
    parser.add_argument("--only", action="append", default=[], metavar="TEXT",
                        help="run only the scenarios whose name contains TEXT (repeatable), e.g. 'wide 64-row'")
    args = parser.parse_args()
    variants = dict(v.split(":", 1) for v in args.variant)
    kinds = ("modelfleet", *variants, "naive", "ceiling")
    rounds = args.rounds or (2 if args.quick else 5)

    scenarios = [Scenario("tabular", 1, 1), Scenario("tabular", 1, 64), Scenario("wide", 1, 1),
                 Scenario("wide", 1, 64), Scenario("wide", 64, 64)]
    if not args.quick:
        scenarios.insert(4, Scenario("wide", 64, 1))
    if args.only:
        scenarios = [s for s in scenarios if any(part in s.name for part in args.only)]

    work = Path(tempfile.mkdtemp(prefix="modelfleet-bench-"))
    paths = write_models(work / "models")
    bodies = {(s.model, s.rows): body(s.model, s.rows, work) for s in scenarios}
    generator = "wrk" if shutil.which("wrk") else "python loadgen"
    print(f"load generator: {generator}; {rounds} rounds x {args.seconds}s; {os.cpu_count()} cores; "
          f"logs in {work}", flush=True)

    t0 = time.monotonic()
    raw_ort = RawOrt(paths, 0.03 if args.quick else 0.05)

    runtime = [str(Path(sys.executable).with_name("modelfleet-runtime")), "serve", "--log-level", "warning"]
    threads = ["--intra-op-threads", str(args.intra_op_threads)] if args.intra_op_threads else []
    servers: dict[tuple[str, str, int], Server] = {}
    try:
        ceiling = Server("ceiling", [sys.executable, str(HERE / "ceiling_server.py")], "/health", work, "ceiling")
        for model in sorted({s.model for s in scenarios}):
            servers[("naive", model, 1)] = Server(
                "naive", [sys.executable, str(HERE / "naive_server.py"), "--model", str(paths[model]), *threads],
                "/health", work, f"naive-{model}")
            for rows in sorted({s.rows for s in scenarios if s.model == model}):
                # 64-row requests: batches of 64 rows, and a queue that holds 64 connections' worth of them.
                sizing = ["--max-batch-size", "64", "--max-queue", "8192"] if rows > 1 else []
                servers[("modelfleet", model, rows)] = Server(
                    "modelfleet", [*runtime, "--model", str(paths[model]), *sizing, *threads, *args.server_arg],
                    "/v2/health/ready", work, f"modelfleet-{model}-{rows}")
                for name, spec in variants.items():
                    tokens = shlex.split(spec)
                    extra = [t for t in tokens if not t.startswith("@")]
                    roots = [t[1:] for t in tokens if t.startswith("@")]
                    argv = [sys.executable, "-m", "modelfleet_runtime.cli", *runtime[1:]]
                    env = {"PYTHONPATH": os.pathsep.join(roots)} if roots else None
                    servers[(name, model, rows)] = Server(
                        name, [*argv, "--model", str(paths[model]), *sizing, *threads, *args.server_arg, *extra],
                        "/v2/health/ready", work, f"{name}-{model}-{rows}", env)
        deadline = time.monotonic() + 60
        ceiling.wait_ready(deadline)
        for server in servers.values():
            server.wait_ready(deadline)

        def pick(kind: str, s: Scenario) -> Server:
            if kind == "ceiling":
                return ceiling
            return servers[(kind, s.model, 1 if kind == "naive" else s.rows)]

        cells = {(s, kind): Cell() for s in scenarios for kind in kinds}
        for r in range(rounds):
            raw_ort.measure()  # the physical limit, in the same conditions as this round's servers
            for s in scenarios:
                order = kinds[r % len(kinds):] + kinds[:r % len(kinds)]
                for kind in order:
                    server, cell = pick(kind, s), cells[(s, kind)]
                    before, cpu_before = server.batch_counters(), server.cpu_seconds()
                    result = load(server.url + "/predict", bodies[(s.model, s.rows)], s.connections, args.seconds)
                    cpu = server.cpu_seconds() - cpu_before
                    after = server.batch_counters()
                    cell.cpu_us.append(cpu / max(result["requests"], 1) * 1e6)
                    cell.req_s.append(result["requests"] / (result["duration_us"] / 1e6))
                    cell.p50_ms.append(result["p50_us"] / 1000)
                    cell.p99_ms.append(result["p99_us"] / 1000)
                    cell.errors += sum(result["errors"].values())
                    if before and after and after[1] > before[1]:
                        cell.batch.append((after[0] - before[0]) / (after[1] - before[1]))
            print(f"round {r + 1}/{rounds} done at {time.monotonic() - t0:.0f}s", flush=True)
    finally:
        for server in [*servers.values(), *([ceiling] if "ceiling" in locals() else [])]:
            server.stop()

    raw = raw_ort.medians()
    print_raw(raw)
    report(scenarios, cells, raw, rounds, generator, args, kinds)
    print(f"total {time.monotonic() - t0:.0f}s")
    shutil.rmtree(work / "models", ignore_errors=True)
    return 0


def print_raw(raw: dict[str, dict[str, dict[int, float]]]) -> None:
    print("\nraw onnxruntime session.run in this process, rows/s (median over rounds; servers idle)")
    print(f"{'model':<8} {'config':<8} " + " ".join(f"{'batch ' + str(b):>11}" for b in BATCHES))
    for model, configs in raw.items():
        for label, by_batch in configs.items():
            print(f"{model:<8} {label:<8} " + " ".join(f"{by_batch[b]:>11,.0f}" for b in BATCHES))


def report(scenarios: list[Scenario], cells: dict, raw: dict, rounds: int, generator: str,
           args: argparse.Namespace, kinds: tuple[str, ...]) -> None:
    med = statistics.median
    rows_out = []
    print("\nscenario              server       req/s     rows/s  p50 ms  p99 ms  batch  x ceiling  x ORT  "
          "cpu us/req  errors")
    for s in scenarios:
        ceiling = cells[(s, "ceiling")]
        for kind in kinds:
            cell = cells[(s, kind)]
            req = med(cell.req_s)
            x_ceiling = med(a / b for a, b in zip(cell.req_s, ceiling.req_s))
            mean_batch = med(cell.batch) if cell.batch else (float(s.rows) if kind == "naive" else None)
            x_ort = None
            if mean_batch is not None:
                x_ort = req * s.rows / best_raw(raw[s.model], nearest_batch(mean_batch))
            row = {"scenario": s.name, "model": s.model, "rows_per_request": s.rows, "connections": s.connections,
                   "server": kind, "req_s": round(req, 1), "rows_s": round(req * s.rows, 1),
                   "p50_ms": round(med(cell.p50_ms), 3), "p99_ms": round(med(cell.p99_ms), 3),
                   "mean_batch": None if mean_batch is None else round(mean_batch, 2),
                   "x_ceiling": round(x_ceiling, 3), "x_ort": None if x_ort is None else round(x_ort, 3),
                   "cpu_us_per_request": round(med(cell.cpu_us), 1), "errors": cell.errors}
            rows_out.append(row)
            batch_text = f"{mean_batch:5.1f}" if mean_batch is not None else "    -"
            ort_text = f"{x_ort:5.2f}" if x_ort is not None else "    -"
            print(f"{s.name:<21} {kind[:10]:<10} {req:>8,.0f} {req * s.rows:>10,.0f} {row['p50_ms']:>7.2f} "
                  f"{row['p99_ms']:>7.2f}  {batch_text}  {x_ceiling:>9.2f}  {ort_text}  {med(cell.cpu_us):>10,.0f}  {cell.errors:>6}")

    def find(model: str, rows: int, conns: int, kind: str) -> dict | None:
        return next((r for r in rows_out if (r["model"], r["rows_per_request"], r["connections"], r["server"])
                     == (model, rows, conns, kind)), None)

    targets = {}
    for model, goal in (("tabular", 0.9), ("wide", 0.8)):
        row = find(model, 1, 64, "modelfleet")
        if row:
            targets[f"{model} 1-row c64 x ceiling"] = {"value": row["x_ceiling"], "target": f">= {goal}"}
    for model in ("tabular", "wide"):
        mf, naive = find(model, 1, 1, "modelfleet"), find(model, 1, 1, "naive")
        if mf and naive:
            targets[f"{model} 1-row c1 p50 / naive p50"] = {"value": round(mf["p50_ms"] / naive["p50_ms"], 3),
                                                            "target": "<= 1.2"}
    row = find("wide", 64, 64, "modelfleet")
    if row:
        targets["wide 64-row c64 rows/s / raw ORT batch 64"] = {
            "value": round(row["rows_s"] / best_raw(raw["wide"], 64), 3), "target": ">= 0.8"}
    print("\ntargets (issue 2)")
    for name, t in targets.items():
        print(f"  {name:<42} {t['value']:>6.2f}  (target {t['target']})")
    print("BENCH_JSON " + json.dumps({
        "bench": "runtime", "generator": generator, "rounds": rounds, "seconds_per_measurement": args.seconds,
        "cores": os.cpu_count(), "intra_op_threads": args.intra_op_threads, "server_args": args.server_arg,
        "variants": args.variant,
        "raw_ort_rows_s": {m: {c: {str(b): round(v, 1) for b, v in bb.items()} for c, bb in cc.items()}
                           for m, cc in raw.items()},
        "results": rows_out, "targets": targets}))


if __name__ == "__main__":
    sys.exit(main())
