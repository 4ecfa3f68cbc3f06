"""A small request's latency while large JSON bodies are in flight (issue 11, finding 11).

Two runtime processes side by side in one run, on the same 512-feature model:
`offloaded` with the default `--large-body-bytes` (bodies from 256 KiB on are
parsed in the parsing process) and `inline` with `--large-body-bytes` above
the body limit (every body parsed on the event loop, as before). For each, the
small request's latency alone, then while four ~3.3 MB `instances` bodies are
in flight. Prints a table and one JSON line; quote the ratios, not the times.

    .venv/bin/python -m bench.bench_large_bodies [--rounds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

from tests.support.onnx_models import build_mlp
from tests.support.runtime_process import RuntimeProcess

WIDTH = 512
LARGE_BODIES = 4
JSON_HEADERS = {"content-type": "application/json"}


async def small_latencies(runtime: RuntimeProcess, small: bytes, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        answer = await runtime.client.post("/predict", content=small, headers=JSON_HEADERS)
        times.append((time.perf_counter() - started) * 1000.0)
        assert answer.status_code == 200, answer.text[:200]
    return times


async def loaded_latencies(runtime: RuntimeProcess, small: bytes, large: bytes, rounds: int) -> list[float]:
    """Small requests one after another for as long as LARGE_BODIES large ones are in flight."""
    times: list[float] = []
    for _ in range(rounds):
        bodies = [
            asyncio.ensure_future(runtime.client.post("/predict", content=large, headers=JSON_HEADERS))
            for _ in range(LARGE_BODIES)
        ]
        while not all(b.done() for b in bodies):
            times += await small_latencies(runtime, small, 1)
        assert all(b.result().status_code == 200 for b in bodies)
    return times


async def measure(name: str, env: dict[str, str], folder: Path, rounds: int, small: bytes, large: bytes) -> dict:
    async with RuntimeProcess(env, folder / name) as runtime:
        await runtime.wait_ready()
        await small_latencies(runtime, small, 20)  # warm the connection and the batcher
        idle = await small_latencies(runtime, small, 50)
        loaded = await loaded_latencies(runtime, small, large, rounds)
    return {
        "server": name,
        "idle_p50_ms": statistics.median(idle),
        "loaded_p50_ms": statistics.median(loaded),
        "loaded_p90_ms": float(np.percentile(loaded, 90)),
        "loaded_samples": len(loaded),
    }


async def main(rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="modelfleet-bench-") as tmp:
        folder = Path(tmp)
        model = build_mlp(folder / "wide.onnx", (WIDTH, 8, 1))
        rows = np.round(np.random.default_rng(0).standard_normal((1000, WIDTH)), 3)
        large = orjson.dumps({"instances": rows.tolist()})
        small = orjson.dumps({"features": [0.5] * WIDTH})
        base = {
            "MODELFLEET_MODEL": str(model),
            "MODELFLEET_WARMUP_ITERATIONS": "1",
            "MODELFLEET_MAX_QUEUE": "8192",
            "MODELFLEET_LOG_LEVEL": "warning",
        }
        results = [
            await measure("offloaded", base, folder, rounds, small, large),
            await measure(
                "inline", {**base, "MODELFLEET_LARGE_BODY_BYTES": str(1 << 30)}, folder, rounds, small, large
            ),
        ]
    print(f"large body: {len(large) / 1e6:.1f} MB x {LARGE_BODIES} in flight; small body {len(small)} B")
    print(f"{'server':<10} {'idle p50':>9} {'loaded p50':>11} {'loaded p90':>11} {'loaded/idle':>12}")
    for r in results:
        ratio = r["loaded_p50_ms"] / r["idle_p50_ms"]
        print(
            f"{r['server']:<10} {r['idle_p50_ms']:>8.2f}ms {r['loaded_p50_ms']:>10.1f}ms "
            f"{r['loaded_p90_ms']:>10.1f}ms {ratio:>11.1f}x"
        )
    inline_over_offloaded = results[1]["loaded_p50_ms"] / results[0]["loaded_p50_ms"]
    print(f"inline / offloaded, small-request p50 under load: {inline_over_offloaded:.1f}x")
    print(json.dumps({"bench": "large_bodies", "results": results, "inline_over_offloaded": inline_over_offloaded}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    asyncio.run(main(parser.parse_args().rounds))
