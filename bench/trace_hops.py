"""Where a request's time goes: timestamps of each hop, GC pauses and loop stalls, under wrk load.

    .venv/bin/python -m bench.trace_hops [--model tabular] [--connections 64] [--seconds 5] [-- SERVE FLAGS]

A bench-only instrument, not part of the product: it serves the real app (create_app, the
runtime's own protocol and config) in this process, wraps a few of its functions to stamp
each request and batch, loads it with wrk over loopback, and prints percentiles of every hop:

  request: head parsed -> handler started (the event loop's queue), -> body read, -> parsed and
           submitted, -> result back in the handler, -> answer written (send returned);
  batch:   oldest row queued -> batch formed (run start), run, run end -> the loop picks the
           results up (the cross-thread wakeup), -> every waiting future set;
  gc:      every collection's generation and pause; loop: callbacks that held the loop > 1 ms.

Ratios to quote come from bench_runtime.py; this tells where a tail comes from.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
import uvloop

from bench.bench_runtime import body as write_body
from bench.bench_runtime import free_port
from bench.models import write_models
from modelfleet_runtime import batching, connections, inference_routes
from modelfleet_runtime.app import create_app
from modelfleet_runtime.model_server import ModelServer
from modelfleet_runtime.runner import connection_limits, settle_heap
from modelfleet_runtime.settings import Settings

HERE = Path(__file__).resolve().parent
clock = time.perf_counter
spans: dict[str, list[float]] = defaultdict(list)


def stamp_protocol() -> None:
    """Stamp the moment a request's head is parsed (the scope is made then)."""
    original = connections.DeadlineHttpProtocol.on_headers_complete

    def on_headers_complete(self: Any) -> None:
        original(self)
        self.scope["trace.head"] = clock()

    connections.DeadlineHttpProtocol.on_headers_complete = on_headers_complete  # type: ignore[method-assign]


def stamp_requests() -> None:
    original = inference_routes.InferenceRoutes.serve

    async def _serve(self: Any, endpoint: str, params: Any, scope: Any, receive: Any, send: Any) -> None:
        started = clock()
        head = scope.get("trace.head", started)
        spans["req: head -> handler"].append(started - head)
        marks: dict[str, float] = {}

        async def timed_receive() -> Any:
            message = await receive()
            marks["body"] = clock()
            return message

        async def timed_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                marks["start"] = clock()
            await send(message)
            if message["type"] == "http.response.body":
                marks["written"] = clock()

        scope["trace.marks"] = marks
        await original(self, endpoint, params, scope, timed_receive, timed_send)
        body, written = marks.get("body", started), marks.get("written", clock())
        spans["req: handler -> body read"].append(body - started)
        if "submit" in marks:
            spans["req: body read -> submitted"].append(marks["submit"] - body)
            spans["req: submitted -> result in handler"].append(marks["resume"] - marks["submit"])
            spans["req: result -> answer sent"].append(written - marks["resume"])
        spans["req: head -> answer sent (total)"].append(written - head)

    inference_routes.InferenceRoutes.serve = _serve  # type: ignore[method-assign]


def stamp_infer(server: ModelServer) -> None:
    original = server.infer
    current: dict[str, Any] = {}

    async def infer(feeds: Any, rows: int, **options: Any) -> Any:
        marks = current.get("marks")
        submit = clock()
        result = await original(feeds, rows, **options)
        if marks is not None:
            marks["submit"], marks["resume"] = submit, clock()
        return result

    server.infer = infer  # type: ignore[method-assign]

    # The handler's marks reach infer through the Call's scope: wrap Call.body to remember them.
    from modelfleet_runtime import http_io

    body = http_io.Call.body

    async def call_body(self: Any, limit: int) -> bytes:
        current["marks"] = self.scope.get("trace.marks")
        return await body(self, limit)

    http_io.Call.body = call_body  # type: ignore[method-assign]


def stamp_batches() -> None:
    original = batching.Batcher._finish_batch

    def _finish_batch(self: Any, delivered: Any, record: Any, waits: Any) -> None:
        picked = clock()
        original(self, delivered, record, waits)
        spans["batch: oldest queued -> formed"].append(record.dispatched - record.oldest_enqueued)
        spans["batch: run"].append(record.finished - record.dispatched)
        spans["batch: run end -> loop picks it up"].append(picked - record.finished)
        spans["batch: futures set"].append(clock() - picked)
        spans["batch: rows"].append(record.rows)

    batching.Batcher._finish_batch = _finish_batch  # type: ignore[method-assign]


def stamp_gc() -> None:
    starts: dict[str, float] = {}

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            starts["t"] = clock()
        else:
            spans[f"gc: gen {info['generation']} pause"].append(clock() - starts.get("t", clock()))

    gc.callbacks.append(callback)


def watch_loop(loop: asyncio.AbstractEventLoop, stop: threading.Event) -> threading.Thread:
    """A thread that asks the loop for a callback every 1 ms and records how late it runs."""

    def run() -> None:
        while not stop.is_set():
            asked = clock()
            done = threading.Event()
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(done.set)
            done.wait(1.0)
            spans["loop: wakeup latency"].append(clock() - asked)
            time.sleep(0.001)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def report(elapsed: float, requests: int, wrk: dict[str, Any]) -> None:
    p50, p99 = wrk["p50_us"] / 1000, wrk["p99_us"] / 1000
    print(f"\n{requests} requests in {elapsed:.1f}s; wrk p50 {p50:.2f} ms p99 {p99:.2f} ms")
    print(f"{'span':<40} {'count':>7} {'p50':>9} {'p90':>9} {'p99':>9} {'max':>9} {'sum s':>8}")
    for name in sorted(spans):
        values = np.array(spans[name])
        if not values.size:
            continue
        if name == "batch: rows":
            p50, p90, p99 = np.percentile(values, [50, 90, 99])
            print(f"{name:<40} {values.size:>7} {p50:>9.1f} {p90:>9.1f} {p99:>9.1f} {values.max():>9.1f}")
            continue
        p50, p90, p99 = np.percentile(values, [50, 90, 99]) * 1000
        print(
            f"{name:<40} {values.size:>7} {p50:>8.3f}m {p90:>8.3f}m {p99:>8.3f}m {values.max() * 1000:>8.3f}m "
            f"{values.sum():>8.3f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tabular")
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--path", default="/predict")
    parser.add_argument("--gc-freeze", action="store_true", help="gc.freeze() once the model is ready")
    parser.add_argument("--switch-interval", type=float, help="sys.setswitchinterval (seconds) before serving")
    parser.add_argument("flags", nargs="*", help="Settings fields as NAME=VALUE (e.g. max_batch_size=64)")
    args = parser.parse_args()

    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    work = Path("/tmp") / f"trace-hops-{os.getpid()}"
    paths = write_models(work / "models")
    body_file = write_body(args.model, args.rows, work)
    overrides: dict[str, Any] = {}
    for flag in args.flags:
        key, _, value = flag.partition("=")
        overrides[key] = type(getattr(Settings, key))(value)
    port = free_port()
    settings = Settings(model=str(paths[args.model]), host="127.0.0.1", port=port, grpc_port=0, **overrides)
    server = ModelServer(settings)
    stamp_protocol()
    stamp_requests()
    stamp_infer(server)
    stamp_batches()
    app = create_app(settings, server)
    limits = connection_limits(settings)
    config = connections.RuntimeConfig(
        app,
        limits=limits,
        over_capacity=connections.OverCapacity(app.router.routes, server.metrics, limits.limit_concurrency),
        on_timeout=server.metrics.observe_timeout,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )
    uv = uvicorn.Server(config)
    result: dict[str, Any] = {}

    def load() -> None:
        while not server.ready:
            time.sleep(0.05)
        time.sleep(0.5)
        if args.gc_freeze:
            settle_heap()
        stamp_gc()
        spans.clear()
        stop = threading.Event()
        watch_loop(uv_loop["loop"], stop)
        started = clock()
        done = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{args.connections}",
                f"-d{args.seconds}s",
                "-s",
                str(HERE / "post.lua"),
                f"http://127.0.0.1:{port}{args.path}",
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "BENCH_BODY": str(body_file)},
            check=True,
        )
        stop.set()
        result["elapsed"] = clock() - started
        result["wrk"] = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
        uv.should_exit = True

    uv_loop: dict[str, Any] = {}

    async def serve() -> None:
        uv_loop["loop"] = asyncio.get_running_loop()
        threading.Thread(target=load, daemon=True).start()
        await uv.serve()

    uvloop.run(serve())  # the loop uvicorn picks when uvloop is installed, as the runtime runs
    report(result["elapsed"], result["wrk"]["requests"], result["wrk"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
