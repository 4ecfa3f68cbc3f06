"""What the traffic scenarios share: steady load through the test router, and sampling its capacity.

`Load` runs a few clients that send predictions through a `harness.router.Router`
back to back, recording each answer's status and the version that served it
(the runtime's `x-model-version` header), until the scenario ends.

`CapacitySampler` looks at the emulated cluster every `interval` seconds while
a transition runs and records whether the model's Ready replicas cover the
shares the traffic layer applies at that moment (`core.transitions.covered`):
the HTTPRoute's weights in gateway mode, the ready-endpoint ratio of the shared
Service in service mode, each against the version's replicas at a share of 100.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from modelfleet_operator.core.transitions import covered
from modelfleet_runtime.demo import build_demo_model
from tests.integration.harness.cluster import MV, Cluster
from tests.integration.harness.router import HTTPROUTES, NoRoute, Router
from tests.integration.model_versions import ModelFile
from tests.support.polling import wait_for

FEATURES = [0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 0.7, -0.8]
# The failing model fails at inference when the first feature is above 100.
POISON = [500.0, -0.2, 0.3, 0.4, -0.5, 0.6, 0.7, -0.8]
# Bounds every client loop, whatever happens to the scenario.
MAX_REQUESTS = 60000
PODS = ("", "v1", "pods")


@dataclass(frozen=True)
class Answer:
    status: int
    version: str | None
    retry_after: str | None = None
    at: float = 0.0


class Load:
    """`workers` clients sending predictions through the router back to back until stopped."""

    def __init__(
        self,
        url: str,
        body: Mapping[str, Any] | None = None,
        *,
        workers: int = 4,
        host: str | None = None,
        path: str = "/predict",
    ) -> None:
        self.url = url + path
        self.body = dict(body or {"features": FEATURES})
        self.workers = workers
        self.headers = {"Host": host} if host else {}
        self.answers: list[Answer] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Load:
        self._http = aiohttp.ClientSession()
        self._tasks = [asyncio.create_task(self._client(), name=f"client {i}") for i in range(self.workers)]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        assert self._http is not None
        await self._http.close()

    async def _client(self) -> None:
        assert self._http is not None
        while not self._stop.is_set() and len(self.answers) < MAX_REQUESTS:
            try:
                async with self._http.post(self.url, json=self.body, headers=self.headers) as response:
                    await response.read()
                    self.answers.append(
                        Answer(
                            response.status,
                            response.headers.get("x-model-version"),
                            response.headers.get("Retry-After"),
                            time.monotonic(),
                        )
                    )
            except aiohttp.ClientError:
                self.answers.append(Answer(599, None, None, time.monotonic()))

    async def collect(self, count: int, timeout: float = 300.0) -> list[Answer]:
        """The next `count` answers (requests sent from now on).

        The deadline only ends a hung test: on two cores shared with another test worker the
        router and the pods may answer under a thousand requests a minute.
        """
        start = len(self.answers) + self.workers  # those in flight were sent before now
        await wait_for(
            lambda: len(self.answers) >= start + count,
            timeout=timeout,
            message=lambda: f"{count} answers; got {len(self.answers) - start}",
        )
        return self.answers[start : start + count]

    def statuses(self) -> Counter[int]:
        return Counter(a.status for a in self.answers)


def observed_shares(answers: Sequence[Answer]) -> dict[str, float]:
    counts = Counter(a.version for a in answers)
    return {str(version): 100.0 * n / len(answers) for version, n in counts.items()}


def assert_split(answers: Sequence[Answer], expected: Mapping[str, float], tolerance: float = 5.0) -> None:
    """Observed shares by runtime version ("1", "2") within `tolerance` points of `expected`."""
    assert all(a.status == 200 for a in answers), Counter(a.status for a in answers)
    observed = observed_shares(answers)
    print(f"{len(answers)} answers: observed {observed}, configured {dict(expected)}")
    for version, share in expected.items():
        assert abs(observed.get(version, 0.0) - share) <= tolerance, (observed, dict(expected))


def failing_model(path: Path) -> ModelFile:
    """The demo model, failing inside onnxruntime with a server-side error when feature 0 > 100.

    It loads and warms up (warmup rows are standard normal); a batch holding such a row
    asks ConstantOfShape for 2**61 + 1 elements, whose size overflows (status FAIL): the
    runtime answers 500. (An index out of range would be INVALID_ARGUMENT, which the
    runtime answers 422, the client's values being at fault: issue 11.)
    """
    model = build_demo_model()
    graph = model.graph
    graph.node[-1].output[0] = "score"
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([0], dtype=np.int64), "first"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "second"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "columns"),
            numpy_helper.from_array(np.array([100.0], dtype=np.float32), "limit"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "one_dim"),
            numpy_helper.from_array(np.array([1 << 61], dtype=np.int64), "overflow"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Slice", ["features", "first", "second", "columns"], ["feature0"]),
            helper.make_node("Greater", ["feature0", "limit"], ["too_big"]),
            helper.make_node("Cast", ["too_big"], ["too_big_int"], to=TensorProto.INT64),
            helper.make_node("ReduceMax", ["too_big_int"], ["any_too_big"], axes=[0, 1], keepdims=1),
            helper.make_node("Reshape", ["any_too_big", "one_dim"], ["flag"]),
            helper.make_node("Mul", ["flag", "overflow"], ["extra"]),
            helper.make_node("Add", ["extra", "one"], ["size"]),
            helper.make_node("ConstantOfShape", ["size"], ["zeros"]),
            helper.make_node("ReduceSum", ["zeros"], ["zero"], keepdims=0),
            helper.make_node("Add", ["score", "zero"], ["probability"]),
        ]
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return ModelFile(path=path, sha256=hashlib.sha256(path.read_bytes()).hexdigest())


# --- what the traffic layer applies, and whether it is covered ----------------------------------------


def route_weights(cluster: Cluster, model: str) -> dict[str, int]:
    """The weighted (default) rule of the model's HTTPRoute: backend Service -> weight."""
    route = cluster.get(HTTPROUTES, model)
    if route is None:
        return {}
    default = [r for r in route["spec"]["rules"] if not any(m.get("headers") for m in r.get("matches") or [])]
    return {ref["name"]: ref["weight"] for rule in default for ref in rule.get("backendRefs") or []}


def full_replicas(cluster: Cluster, model: str) -> dict[str, int]:
    """Each version's replicas at a share of 100, by ModelVersion name."""
    out = {}
    for mv in cluster.list(MV):
        spec = mv["spec"]
        if spec["model"] == model:
            auto = spec.get("autoscaling")
            out[mv["metadata"]["name"]] = int(auto["minReplicas"] if auto else spec.get("replicas", 1))
    return out


def version_names(cluster: Cluster, model: str) -> dict[str, str]:
    """spec.version -> ModelVersion name."""
    return {
        str(mv["spec"]["version"]): mv["metadata"]["name"] for mv in cluster.list(MV) if mv["spec"]["model"] == model
    }


def applied_split(cluster: Cluster, router: Router, model: str) -> tuple[dict[str, float], dict[str, int]]:
    """(share each version receives now, its ready endpoints), as the router would route now."""
    if router.mode == "gateway":
        weights = route_weights(cluster, model)
        total = sum(weights.values())
        ready = {name: _ready_behind(router, name) for name in full_replicas(cluster, model)}
        return ({n: 100.0 * w / total for n, w in weights.items()} if total else {}), ready
    by_address = {
        (p.get("status") or {}).get("podIP"): p["metadata"]["labels"].get("serving.modelfleet.dev/version")
        for p in cluster.list(PODS)
    }
    names = version_names(cluster, model)
    counts = Counter(names.get(str(by_address.get(address))) for address, _ in router.ready_endpoints(model))
    pods = sum(counts.values())
    ready = {str(n): c for n, c in counts.items() if n}
    return ({n: 100.0 * c / pods for n, c in ready.items()} if pods else {}), ready


def _ready_behind(router: Router, service: str) -> int:
    try:
        return len(router.ready_endpoints(service))
    except NoRoute:
        return 0  # no Service yet


@dataclass
class CapacitySampler:
    """Samples `applied_split` every `interval` seconds; `violations` lists the moments that were not covered."""

    cluster: Cluster
    router: Router
    model: str
    # Dense enough to see a transition the event-driven operator finishes in a fraction of a second.
    interval: float = 0.01
    samples: int = 0
    violations: list[tuple[float, dict[str, float], dict[str, int]]] = field(default_factory=list)

    def sample(self) -> None:
        shares, ready = applied_split(self.cluster, self.router, self.model)
        self.samples += 1
        if shares and not covered(shares, ready, full_replicas(self.cluster, self.model)):
            self.violations.append((time.monotonic(), shares, ready))

    async def _run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[CapacitySampler]:
        stop = asyncio.Event()
        task = asyncio.create_task(self._run(stop), name="capacity sampler")
        try:
            yield self
        finally:
            stop.set()
            await task


async def operator_metric(url: str, name: str, **labels: str) -> float:
    """The sum of an operator metric's samples (matching `labels`) from its /metrics endpoint."""
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as http, http.get(url) as response:
        text = await response.text()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
