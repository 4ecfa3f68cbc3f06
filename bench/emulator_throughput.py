"""How many requests per second the emulated API server serves, so that a benchmark can say how much
of its time is the emulator's own (issue 10's bench/operator_scale.py runs the operator against it).

    .venv/bin/python -m bench.emulator_throughput [--objects 1000] [--seconds 5] [--concurrency 8]

It starts the emulator (tests/integration/harness) on 127.0.0.1, fills one namespace with
`--objects` Deployments, and for each kind of request sends as many as it can from
`--concurrency` clients for `--seconds`, over HTTP with an operator's User-Agent (so the request
log and fault checks are paid for, as for the operator). Watches: one write after another while
`--watchers` watches of the resource receive the events. It prints a table and one JSON line.
Figures depend on the machine and its load: compare them within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import kmock

from tests.integration.harness.client import resource_path
from tests.integration.harness.emulator import ClusterEmulator
from tests.integration.harness.rawapi import APPLY, MERGE, RawApi

DEPLOYMENTS = ("apps", "v1", "deployments")


def deployment(name: str, replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"serving.modelfleet.dev/model": f"model-{name[-1]}"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {
                            "name": "runtime",
                            "image": "ghcr.io/modelfleet/runtime:0.1.0",
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "1Gi"}},
                            "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}},
                        }
                    ]
                },
            },
        },
    }


async def rate(seconds: float, concurrency: int, call: Callable[[int], Awaitable[int]]) -> tuple[float, int]:
    """(requests per second, failures) of `call(i)` from `concurrency` clients for `seconds`."""
    deadline = time.monotonic() + seconds
    done = failures = 0
    counter = iter(range(10**9))

    async def client() -> None:
        nonlocal done, failures
        while time.monotonic() < deadline:
            status = await call(next(counter))
            done += 1
            failures += status >= 400

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return done / (time.monotonic() - started), failures


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    emulator = ClusterEmulator()
    results: dict[str, Any] = {"objects": args.objects, "concurrency": args.concurrency}
    async with emulator, kmock.Server(emulator) as server:
        url = str(server.url).rstrip("/")
        async with RawApi(url, user_agent="modelfleet-operator/bench") as api:
            await api.call("POST", "/api/v1/namespaces", {"metadata": {"name": "ml"}})
            for i in range(args.objects):
                await emulator.write_local("POST", *DEPLOYMENTS, "ml", None, deployment(f"d{i}"))
            collection = resource_path(*DEPLOYMENTS, "ml")

            async def get(i: int) -> int:
                return (await api.call("GET", resource_path(*DEPLOYMENTS, "ml", f"d{i % args.objects}")))[0]

            async def list_all(i: int) -> int:
                return (await api.call("GET", collection))[0]

            async def list_selected(i: int) -> int:
                params = {"labelSelector": "serving.modelfleet.dev/model=model-3"}
                return (await api.call("GET", collection, params=params))[0]

            async def apply_same(i: int) -> int:
                name = f"d{i % args.objects}"
                body = deployment(name)
                return (await api.apply(resource_path(*DEPLOYMENTS, "ml", name), body, "bench"))[0]

            async def apply_change(i: int) -> int:
                name = f"d{i % args.objects}"
                body = deployment(name, replicas=1 + i % 3)
                path = resource_path(*DEPLOYMENTS, "ml", name)
                return (
                    await api.call(
                        "PATCH", path, body, content_type=APPLY, params={"fieldManager": "bench", "force": "true"}
                    )
                )[0]

            async def patch_status(i: int) -> int:
                path = resource_path(*DEPLOYMENTS, "ml", f"d{i % args.objects}", "status")
                return (await api.call("PATCH", path, {"status": {"observedGeneration": i}}, content_type=MERGE))[0]

            for name, call in (
                ("get", get),
                ("list (all)", list_all),
                ("list (label selector)", list_selected),
                ("apply, no change", apply_same),
                ("apply, a change", apply_change),
                ("merge-patch /status", patch_status),
            ):
                per_second, failures = await rate(args.seconds, args.concurrency, call)
                results[name] = {"requests_per_second": round(per_second, 1), "failures": failures}

            results["watch"] = await watch_rate(api, collection, args)
    return results


async def watch_rate(api: RawApi, collection: str, args: argparse.Namespace) -> dict[str, Any]:
    """Events per second delivered to `args.watchers` watches while one client writes back to back."""
    received = [0] * args.watchers
    stop = asyncio.Event()

    async def watcher(index: int) -> None:
        async with api.watch(collection, {"resourceVersion": "999999999"}) as stream:
            while not stop.is_set():
                try:
                    await stream.next(timeout=0.5)
                except TimeoutError:
                    continue
                received[index] += 1

    tasks = [asyncio.create_task(watcher(i)) for i in range(args.watchers)]
    await asyncio.sleep(0.5)  # let the watches open (a measurement, not a synchronisation in a test)
    started = time.monotonic()
    writes = 0
    while time.monotonic() - started < args.seconds:
        path = resource_path(*DEPLOYMENTS, "ml", f"d{writes % args.objects}", "status")
        await api.call("PATCH", path, {"status": {"replicas": writes}}, content_type=MERGE)
        writes += 1
    elapsed = time.monotonic() - started
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "writes_per_second": round(writes / elapsed, 1),
        "events_per_second_per_watch": round(sum(received) / len(received) / elapsed, 1),
        "watchers": args.watchers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--watchers", type=int, default=4)
    args = parser.parse_args()
    results = asyncio.run(measure(args))
    print(f"{'request':<24} {'req/s':>10} {'failures':>9}")
    for name, value in results.items():
        if isinstance(value, dict) and "requests_per_second" in value:
            print(f"{name:<24} {value['requests_per_second']:>10.1f} {value['failures']:>9}")
    watch = results["watch"]
    print(
        f"{'watch':<24} {watch['writes_per_second']:>10.1f} writes/s, "
        f"{watch['events_per_second_per_watch']:.1f} events/s to each of {watch['watchers']} watches"
    )
    print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    main()
