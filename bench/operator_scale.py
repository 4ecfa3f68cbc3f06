"""The operator at scale on the emulated API server: 1,000 ModelVersions over 250 models in 5 namespaces.

    .venv/bin/python -m bench.operator_scale [--steady-seconds 120] [--samples 50] [--routing gateway]

The emulated API server (tests/integration/harness) and the process-less workload controller
(`SimulatedWorkloads`: Deployments become available, Pods and EndpointSlices follow, no runtime
process) run in this process; the operator runs as `modelfleet-operator run --all-namespaces
--standalone` in a process of its own, with its default resync, so its RSS and CPU are its own.
Every model has 4 versions at weights 40/30/20/10, 1 replica each. Measured:

- convergence: from creating all ModelVersions to every one Ready with its share assigned
  (status.servingTraffic, and the HTTPRoute's weights in gateway mode), with the operator's API
  requests and CPU seconds, and this process's CPU seconds (the emulator's own work, the workload
  controller's, and this script's polling) over the same time;
- steady state: the operator's API requests per second over `--steady-seconds` with nothing changing;
- ready-to-traffic: for `--samples` models one after another, a fifth version (weight 10) whose
  pods are held unready is released; the time from its Deployment reporting it Available to its
  status carrying a share and the model's HTTPRoute listing it (event times, in this process);
- the operator's peak and final RSS, and its CPU over each phase.

It prints a table and one JSON line. Run it alone on the machine: it measures time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml

from modelfleet_operator.core.traffic import apportion
from tests.integration.harness.cluster import MV, Cluster, running_cluster
from tests.integration.harness.workloads import SimulatedWorkloads
from tests.support.paths import CRDS

DEPLOYMENTS = ("apps", "v1", "deployments")
HTTPROUTES = ("gateway.networking.k8s.io", "v1", "httproutes")
NAMESPACES = tuple(f"bench-{i}" for i in range(5))
MODELS_PER_NAMESPACE = 50  # x 5 namespaces x 4 versions = 1,000 ModelVersions
WEIGHTS = (40, 30, 20, 10)
URI = "https://models.example.com/model.onnx"
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def model_version(namespace: str, model: str, index: int, traffic: int) -> dict[str, Any]:
    return {
        "apiVersion": "serving.modelfleet.dev/v1alpha1",
        "kind": "ModelVersion",
        "metadata": {"name": f"{model}-v{index}", "namespace": namespace},
        "spec": {"model": model, "version": str(index), "source": {"uri": URI}, "traffic": traffic},
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class OperatorProcess:
    """`modelfleet-operator run` against the emulator, with its CPU and memory read from /proc."""

    def __init__(self, kubeconfig: Path, routing: str, metrics_port: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_OPERATOR_")}
        env.update(
            {
                "KUBECONFIG": str(kubeconfig),
                "MODELFLEET_OPERATOR_ROUTING": routing,
                "MODELFLEET_OPERATOR_LOG_LEVEL": "warning",
                "MODELFLEET_OPERATOR_METRICS_PORT": str(metrics_port),
            }
        )
        if routing == "gateway":
            env["MODELFLEET_OPERATOR_GATEWAY"] = f"{NAMESPACES[0]}/public"
        command = Path(sys.executable).with_name("modelfleet-operator")
        self.log = tempfile.NamedTemporaryFile(prefix="operator-scale-", suffix=".log", delete=False)  # noqa: SIM115
        self.process = subprocess.Popen(
            [str(command), "run", "--all-namespaces", "--standalone"],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICK  # utime + stime

    def rss_mib(self, peak: bool = False) -> float:
        key = "VmHWM:" if peak else "VmRSS:"
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def operator_requests(cluster: Cluster) -> int:
    return len(cluster.emulator.recorded)


def weights_of(route: dict[str, Any]) -> dict[str, int]:
    """The weighted (default) rule of an HTTPRoute: backend Service -> weight."""
    default = [r for r in route["spec"]["rules"] if not any(m.get("headers") for m in r.get("matches") or [])]
    return {ref["name"]: ref["weight"] for rule in default for ref in rule.get("backendRefs") or []}


def route_weights(cluster: Cluster, namespace: str, model: str) -> dict[str, int]:
    route = cluster.emulator.live_object(*HTTPROUTES, namespace, model)
    return {} if route is None else weights_of(route)


def converged(cluster: Cluster, routing: str, expected: dict[tuple[str, str], dict[str, int]]) -> bool:
    for namespace in NAMESPACES:
        for mv in cluster.emulator.live_objects(*MV, namespace):
            status = mv.get("status") or {}
            model = mv["spec"]["model"]
            if status.get("phase") != "Ready":
                return False
            if status.get("servingTraffic") != expected[(namespace, model)][mv["metadata"]["name"]]:
                return False
    if routing != "gateway":
        return True
    return all(route_weights(cluster, ns, m) == shares for (ns, m), shares in expected.items())


async def wait_until(condition: Any, timeout: float, what: str, interval: float = 0.25) -> float:
    """Poll `condition` until true; the time it took. Raises after `timeout` seconds."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        await asyncio.sleep(interval)
    return time.monotonic() - start


@contextlib.asynccontextmanager
async def event_times(cluster: Cluster, resource_: tuple[str, str, str]) -> AsyncIterator[list[tuple[float, Any]]]:
    """(arrival time, event) of every event of a resource, in this process, while the block runs."""
    seen: list[tuple[float, Any]] = []
    async with cluster.emulator.subscribe(*resource_) as events:

        async def follow() -> None:
            async for event in events:
                seen.append((time.monotonic(), event))  # noqa: PERF401 - read while it runs

        task = asyncio.create_task(follow())
        try:
            yield seen
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def create_all(cluster: Cluster, manifests: list[dict[str, Any]], concurrency: int = 16) -> None:
    queue = list(manifests)

    async def worker() -> None:
        while queue:
            manifest = queue.pop()
            await cluster.client.create(*MV, manifest["metadata"]["namespace"], manifest)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def ready_to_traffic(
    cluster: Cluster, workloads: SimulatedWorkloads, routing: str, namespace: str, model: str
) -> float:
    """Release a held fifth version and time: its Deployment Available -> its share assigned (and routed)."""
    name = f"{model}-v5"
    workloads.hold(namespace, name)
    await cluster.client.create(*MV, namespace, model_version(namespace, model, 5, 10))
    await wait_until(
        lambda: (
            (cluster.emulator.live_object(*MV, namespace, name) or {}).get("status", {}).get("phase")
            in ("Loading", "Pending")
        ),
        30,
        f"{name} waiting for its pods",
        interval=0.02,
    )
    async with (
        event_times(cluster, DEPLOYMENTS) as deployments,
        event_times(cluster, MV) as versions,
        event_times(cluster, HTTPROUTES) as routes,
    ):
        workloads.release(namespace, name)

        def available() -> float | None:
            for at, event in deployments:
                obj = event["object"]
                if obj["metadata"]["name"] == name and int((obj.get("status") or {}).get("availableReplicas") or 0):
                    return at
            return None

        def assigned() -> float | None:
            share = next(
                (
                    at
                    for at, e in versions
                    if e["object"]["metadata"]["name"] == name
                    and int((e["object"].get("status") or {}).get("servingTraffic") or 0) > 0
                ),
                None,
            )
            if share is None or routing != "gateway":
                return share
            routed = next(
                (
                    at
                    for at, e in routes
                    if e["object"]["metadata"]["name"] == model and weights_of(e["object"]).get(name)
                ),
                None,
            )
            return None if routed is None else max(share, routed)

        await wait_until(
            lambda: available() is not None and assigned() is not None, 60, f"{name} taking its share", 0.01
        )
        return float(assigned() or 0) - float(available() or 0)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    crds = [doc for path in sorted(CRDS.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]
    workdir = Path(tempfile.mkdtemp(prefix="operator-scale-"))
    results: dict[str, Any] = {"routing": args.routing, "namespaces": len(NAMESPACES), "models": 0, "versions": 0}
    async with running_cluster(crds, workdir, namespace=NAMESPACES[0]) as cluster:
        for namespace in NAMESPACES[1:]:
            await cluster.client.create("", "v1", "namespaces", None, {"metadata": {"name": namespace}})
        async with SimulatedWorkloads(cluster.emulator) as workloads:
            operator = OperatorProcess(cluster.kubeconfig, args.routing, free_port())
            try:
                await wait_until(lambda: operator_requests(cluster) > 0, 60, "the operator's first request")
                await asyncio.sleep(2)  # its watches open (an idle cluster: nothing to measure yet)
                results.update(await converge(cluster, operator, args))
                results.update(await steady(cluster, operator, args))
                results.update(await latencies(cluster, workloads, operator, args))
                results["operator_rss_mib"] = round(operator.rss_mib(), 1)
                results["operator_peak_rss_mib"] = round(operator.rss_mib(peak=True), 1)
                results["workload_writes"] = workloads.writes
            finally:
                operator.stop()
    return results


async def converge(cluster: Cluster, operator: OperatorProcess, args: argparse.Namespace) -> dict[str, Any]:
    manifests, expected = [], {}
    for namespace in NAMESPACES:
        for m in range(args.models_per_namespace):
            model = f"model-{m:03d}"
            names = {f"{model}-v{i + 1}": w for i, w in enumerate(WEIGHTS)}
            expected[(namespace, model)] = apportion(names)
            manifests += [model_version(namespace, model, i + 1, w) for i, w in enumerate(WEIGHTS)]
    requests0, cpu0, own0 = operator_requests(cluster), operator.cpu_seconds(), own_cpu_seconds()
    start = time.monotonic()
    await create_all(cluster, manifests)
    created = time.monotonic() - start
    await wait_until(lambda: converged(cluster, args.routing, expected), args.timeout, "convergence", interval=0.5)
    elapsed = time.monotonic() - start
    return {
        "models": len(expected),
        "versions": len(manifests),
        "create_seconds": round(created, 2),
        "converge_seconds": round(elapsed, 2),
        "converge_operator_requests": operator_requests(cluster) - requests0,
        "converge_operator_cpu_seconds": round(operator.cpu_seconds() - cpu0, 2),
        "converge_emulator_process_cpu_seconds": round(own_cpu_seconds() - own0, 2),
    }


async def steady(cluster: Cluster, operator: OperatorProcess, args: argparse.Namespace) -> dict[str, Any]:
    requests0, cpu0 = operator_requests(cluster), operator.cpu_seconds()
    await asyncio.sleep(args.steady_seconds)  # the measurement: nothing changes for this long
    requests = operator_requests(cluster) - requests0
    recorded = cluster.emulator.recorded[requests0:]
    kinds: dict[str, int] = {}
    for request in recorded:
        key = f"{request.verb} {request.resource}{'/' + request.subresource if request.subresource else ''}"
        kinds[key] = kinds.get(key, 0) + 1
    return {
        "steady_seconds": args.steady_seconds,
        "steady_requests": requests,
        "steady_requests_per_second": round(requests / args.steady_seconds, 3),
        "steady_requests_by_kind": kinds,
        "steady_operator_cpu_percent": round(100 * (operator.cpu_seconds() - cpu0) / args.steady_seconds, 2),
    }


async def latencies(
    cluster: Cluster, workloads: SimulatedWorkloads, operator: OperatorProcess, args: argparse.Namespace
) -> dict[str, Any]:
    samples = []
    for i in range(args.samples):
        namespace = NAMESPACES[i % len(NAMESPACES)]
        samples.append(await ready_to_traffic(cluster, workloads, args.routing, namespace, f"model-{i:03d}"))
    return {
        "ready_to_traffic_samples": len(samples),
        "ready_to_traffic_p50_seconds": round(statistics.median(samples), 3),
        "ready_to_traffic_p99_seconds": round(percentile(samples, 0.99), 3),
        "ready_to_traffic_max_seconds": round(max(samples), 3),
    }


def table(results: dict[str, Any]) -> str:
    rows = [
        (
            "ModelVersions / models / namespaces",
            f"{results['versions']} / {results['models']} / {results['namespaces']}",
        ),
        ("routing", results["routing"]),
        ("create all (client side)", f"{results['create_seconds']} s"),
        ("created -> all Ready with traffic assigned", f"{results['converge_seconds']} s"),
        ("  operator API requests meanwhile", str(results["converge_operator_requests"])),
        ("  operator CPU meanwhile", f"{results['converge_operator_cpu_seconds']} s"),
        ("  emulator + workloads + bench CPU meanwhile", f"{results['converge_emulator_process_cpu_seconds']} s"),
        (f"steady state over {results['steady_seconds']} s", f"{results['steady_requests_per_second']} requests/s"),
        ("  operator CPU at steady state", f"{results['steady_operator_cpu_percent']} %"),
        (
            "ready -> traffic p50 / p99 / max",
            (
                f"{results['ready_to_traffic_p50_seconds']} / {results['ready_to_traffic_p99_seconds']} / "
                f"{results['ready_to_traffic_max_seconds']} s ({results['ready_to_traffic_samples']} samples)"
            ),
        ),
        ("operator RSS now / peak", f"{results['operator_rss_mib']} / {results['operator_peak_rss_mib']} MiB"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routing", choices=("gateway", "service"), default="gateway")
    parser.add_argument("--steady-seconds", type=float, default=120.0)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=900.0, help="longest wait for convergence")
    parser.add_argument(
        "--models-per-namespace", type=int, default=MODELS_PER_NAMESPACE, help="50 (the issue's size); less to try it"
    )
    args = parser.parse_args()
    results = asyncio.run(run(args))
    print(table(results))
    print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    main()
