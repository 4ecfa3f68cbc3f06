"""Traffic between a model's versions, through a test router, with the real operator and runtimes.

A client sends predictions continuously through `harness.router.Router`, which
applies every HTTPRoute of the Gateway as a Gateway would (gateway mode: the
request's Host is the model's hostname) or spreads requests over the model
Service's ready endpoints as kube-proxy would (service mode); the runtime's
`x-model-version` answer header says which version served each request.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from modelfleet_operator.config import OperatorConfig
from modelfleet_operator.core.traffic import apportion
from tests.integration.harness.cluster import DEPLOYMENTS, MV, Cluster
from tests.integration.harness.kubelet import DeploymentController
from tests.integration.harness.router import Router
from tests.integration.model_versions import LOCAL_SOURCES, ModelFile, condition, model_version, wait_for_phase
from tests.integration.steady_load import (
    FEATURES,
    MAX_REQUESTS,
    POISON,
    Load,
    assert_split,
    failing_model,
    route_weights,
)
from tests.support.polling import wait_for

MODEL = "fraud"
HOST = "fraud-ml.example.com"  # the default gateway-hostname-template, {model}-{namespace}.{domain}
# Requests per measured phase: at a 50% share the standard deviation is 1.6 points,
# so TOLERANCE (in points) is more than three of them.
PHASE_REQUESTS = 1000
TOLERANCE = 5.0
EVENTS = ("", "v1", "events")


@pytest.fixture
def operator_config() -> OperatorConfig:
    # Service routing; a version giving up traffic keeps its pods 2 s (the resync stays the default).
    return OperatorConfig(
        namespaces=("ml",), standalone=True, allowed_uri_schemes=LOCAL_SOURCES, scale_down_delay_seconds=2
    )


@contextlib.asynccontextmanager
async def load_through(router: Router, features: Sequence[float] = FEATURES) -> AsyncIterator[Load]:
    async with Load(router.url, {"features": list(features)}, host=HOST if router.mode == "gateway" else None) as load:
        yield load


def serving(cluster: Cluster, name: str) -> int | None:
    return ((cluster.get(MV, name) or {}).get("status") or {}).get("servingTraffic")


def replicas(cluster: Cluster, name: str) -> int | None:
    deployment = cluster.get(DEPLOYMENTS, name)
    return None if deployment is None else deployment["spec"]["replicas"]


async def wait_for_split(cluster: Cluster, shares: Mapping[str, int], timeout: float = 90.0) -> None:
    """Until the route and every version's status carry `shares` (versions at 0 out of the route)."""
    wanted_route = {name: share for name, share in shares.items() if share > 0}
    await wait_for(
        lambda: (
            route_weights(cluster, MODEL) == wanted_route and all(serving(cluster, n) == s for n, s in shares.items())
        ),
        timeout=timeout,
        message=lambda: (
            f"split {dict(shares)}; route {route_weights(cluster, MODEL)}, "
            f"serving { ({n: serving(cluster, n) for n in shares}) }"
        ),
    )


class TestGatewayRouting:
    @pytest.fixture
    def operator_config(self) -> OperatorConfig:
        return OperatorConfig(
            namespaces=("ml",),
            standalone=True,
            allowed_uri_schemes=LOCAL_SOURCES,
            routing="gateway",
            gateway="ml/public",
        )

    @pytest.fixture
    async def router(self, cluster: Cluster) -> AsyncIterator[Router]:
        async with Router(cluster.emulator, "ml", MODEL, mode="gateway", seed=5, gateway="ml/public") as running:
            yield running

    async def test_canary_then_promotion_keeps_every_request_served_at_the_configured_split(
        self,
        cluster: Cluster,
        kubelet: DeploymentController,
        operator,
        router: Router,
        demo_model: ModelFile,
    ) -> None:
        await cluster.apply(model_version("fraud-v1", MODEL, "1", demo_model.uri, traffic=100))
        await wait_for_phase(cluster, "fraud-v1", "Ready")
        await wait_for_split(cluster, {"fraud-v1": 100})

        async with load_through(router) as load:
            assert_split(await load.collect(200), {"1": 100.0}, tolerance=0)

            # A canary at 10: nothing until its runtime is Ready.
            await cluster.apply(model_version("fraud-v2", MODEL, "2", demo_model.uri, traffic=10))
            await wait_for(
                lambda: condition(cluster, "fraud-v2", "TrafficAssigned"),
                timeout=30,
                message="v2's TrafficAssigned condition",
            )
            if not any(p.ready for p in kubelet.pods_of("ml", "fraud-v2")):
                assert route_weights(cluster, MODEL) == {"fraud-v1": 100}
                assert serving(cluster, "fraud-v2") == 0
                assert condition(cluster, "fraud-v2", "TrafficAssigned")["reason"] == "NotReady"

            canary = apportion({"fraud-v1": 100, "fraud-v2": 10})  # 91/9
            await wait_for_split(cluster, canary)
            assert condition(cluster, "fraud-v2", "TrafficAssigned")["status"] == "True"
            assert_split(await load.collect(PHASE_REQUESTS), {"1": canary["fraud-v1"], "2": canary["fraud-v2"]})

            await cluster.patch_spec("fraud-v1", {"traffic": 50})
            await cluster.patch_spec("fraud-v2", {"traffic": 50})
            await wait_for_split(cluster, {"fraud-v1": 50, "fraud-v2": 50})
            assert_split(await load.collect(PHASE_REQUESTS), {"1": 50.0, "2": 50.0})

            # The header pins a version whatever the weights.
            async with aiohttp.ClientSession() as http:
                for _ in range(20):
                    async with http.post(
                        router.url + "/predict",
                        json={"features": FEATURES},
                        headers={"x-model-version": "1", "Host": HOST},
                    ) as response:
                        assert response.status == 200 and response.headers["x-model-version"] == "1"

            await cluster.patch_spec("fraud-v2", {"traffic": 100})
            await cluster.patch_spec("fraud-v1", {"traffic": 0})
            await wait_for_split(cluster, {"fraud-v1": 0, "fraud-v2": 100})
            assert_split(await load.collect(400), {"2": 100.0}, tolerance=0)

        assert len(load.answers) < MAX_REQUESTS
        assert Counter(a.status for a in load.answers) == {200: len(load.answers)}
        # Gateway mode keeps a version at weight 0 warm: rollback is instant.
        assert [p.ready for p in kubelet.pods_of("ml", "fraud-v1")] == [True]

    async def test_a_canary_answering_errors_is_rolled_back_while_the_stable_version_serves(
        self,
        cluster: Cluster,
        kubelet: DeploymentController,
        operator,
        router: Router,
        demo_model: ModelFile,
        tmp_path: Path,
    ) -> None:
        broken = failing_model(tmp_path / "broken.onnx")
        await cluster.apply(model_version("fraud-v1", MODEL, "1", demo_model.uri, traffic=100))
        await wait_for_phase(cluster, "fraud-v1", "Ready")
        await wait_for_split(cluster, {"fraud-v1": 100})

        async with load_through(router, POISON) as load:
            await cluster.apply(
                model_version(
                    "fraud-v2",
                    MODEL,
                    "2",
                    broken.uri,
                    traffic=50,
                    rollout={"maxErrorRate": 0.2, "windowSeconds": 10, "minRequests": 10},
                )
            )
            # It warms up (the warmup rows pass), takes its share, fails, and loses it.
            mv = await wait_for_phase(cluster, "fraud-v2", "Degraded", timeout=90)
            assert any(a.status == 500 for a in load.answers)  # it did serve (and fail) before
            assert mv["status"]["servingTraffic"] == 0
            assert mv["status"]["rollout"]["rolledBack"] is True
            assert mv["status"]["rollout"]["errorRate"] > 0.2
            rolled_back = condition(cluster, "fraud-v2", "RolledBack")
            assert rolled_back["status"] == "True" and rolled_back["reason"] == "ErrorRateExceeded"
            assert condition(cluster, "fraud-v2", "Ready")["reason"] == "RolledBack"
            assert condition(cluster, "fraud-v2", "TrafficAssigned")["reason"] == "RolledBack"
            await wait_for_split(cluster, {"fraud-v1": 100, "fraud-v2": 0}, timeout=10)
            [event] = [e for e in cluster.list(EVENTS) if e["involvedObject"]["name"] == "fraud-v2"]
            assert event["type"] == "Warning" and event["reason"] == "RolledBack"
            assert "error rate" in event["message"]

            # The stable version serves everything, and the canary stays rolled back.
            after = await load.collect(600)
            assert_split(after, {"1": 100.0}, tolerance=0)
            assert phase_of(cluster, "fraud-v2") == "Degraded" and serving(cluster, "fraud-v2") == 0
            assert len([e for e in cluster.list(EVENTS) if e["involvedObject"]["name"] == "fraud-v2"]) == 1

            # The canary's own failures were its only failures.
            failures = [a for a in load.answers if a.status != 200]
            assert failures and {a.status for a in failures} == {500}
            assert all(a.status == 200 for a in load.answers if a.version == "1")

            # A fixed spec is judged again from a fresh window, and serves.
            await cluster.patch_spec("fraud-v2", {"source": {"uri": demo_model.uri}})
            shares = apportion({"fraud-v1": 100, "fraud-v2": 50})  # 67/33
            await wait_for_split(cluster, shares)
            assert condition(cluster, "fraud-v2", "RolledBack")["reason"] == "SpecChanged"
            assert_split(await load.collect(PHASE_REQUESTS), {"1": shares["fraud-v1"], "2": shares["fraud-v2"]})


def phase_of(cluster: Cluster, name: str) -> str | None:
    return ((cluster.get(MV, name) or {}).get("status") or {}).get("phase")


def ready_endpoints_by_version(cluster: Cluster, router: Router) -> dict[str, int]:
    """Ready endpoints of the model's Service, by the version of the pod behind each."""
    by_address = {
        p["status"].get("podIP"): p["metadata"]["labels"].get("serving.modelfleet.dev/version")
        for p in cluster.list(("", "v1", "pods"))
    }
    return dict(Counter(by_address.get(address) for address, _ in router.ready_endpoints(MODEL)))


async def test_service_mode_sizes_versions_to_their_shares_and_kube_proxy_follows_the_ready_pods(
    cluster: Cluster,
    kubelet: DeploymentController,
    operator,
    demo_model: ModelFile,
) -> None:
    await cluster.apply(model_version("fraud-v1", MODEL, "1", demo_model.uri, replicas=3, traffic=100))
    await wait_for_phase(cluster, "fraud-v1", "Ready")
    await wait_for(lambda: serving(cluster, "fraud-v1") == 100, timeout=30, message="v1 serving everything")
    assert replicas(cluster, "fraud-v1") == 3

    await cluster.apply(model_version("fraud-v2", MODEL, "2", demo_model.uri, replicas=2, traffic=100))
    # Warming up: one replica of the canary, the stable version keeps its three and all the traffic.
    await wait_for(lambda: replicas(cluster, "fraud-v2") is not None, timeout=30, message="v2's Deployment")
    if phase_of(cluster, "fraud-v2") != "Ready":
        assert replicas(cluster, "fraud-v2") == 1 and replicas(cluster, "fraud-v1") == 3
        assert serving(cluster, "fraud-v1") == 100

    # Ready: 50/50, so ceil(3 x 50%) = 2 and ceil(2 x 50%) = 1 replicas.
    history: list[list[tuple[Any, ...]]] = []

    def settled() -> bool:
        now = [
            (phase_of(cluster, n), serving(cluster, n), replicas(cluster, n), len(kubelet.pods_of("ml", n)))
            for n in ("fraud-v1", "fraud-v2")
        ]
        if not history or history[-1] != now:
            history.append(now)
        return now == [("Ready", 50, 2, 2), ("Ready", 50, 1, 1)]

    await wait_for(settled, timeout=90, message=lambda: f"50/50 with 2 + 1 replicas; history {history}")
    # The shares never moved back once both served: no version lost its share while it scaled.
    served = [(v1[1], v2[1]) for v1, v2 in history]
    assert served[served.index((50, 50)) :] == [(50, 50)] * (len(served) - served.index((50, 50))), history
    assert (math.ceil(3 * 50 / 100), math.ceil(2 * 50 / 100)) == (2, 1)
    async with Router(cluster.emulator, "ml", MODEL, mode="service", seed=3) as router:
        await wait_for(
            lambda: (
                ready_endpoints_by_version(cluster, router) == {"1": 2, "2": 1}
                and phase_of(cluster, "fraud-v1") == "Ready"
                and phase_of(cluster, "fraud-v2") == "Ready"
            ),
            timeout=60,
            message=lambda: f"2 + 1 ready endpoints, both Ready; now {ready_endpoints_by_version(cluster, router)}",
        )
        async with load_through(router) as load:
            answers = await load.collect(900)
        # kube-proxy spreads over ready pods: the split is the pod ratio (one pod of precision).
        assert_split(answers, {"1": 200 / 3, "2": 100 / 3}, tolerance=6)


async def test_service_mode_rollback_takes_the_failing_version_out_of_the_shared_service(
    cluster: Cluster,
    kubelet: DeploymentController,
    operator,
    demo_model: ModelFile,
    tmp_path: Path,
) -> None:
    """After an automatic rollback in service mode the rolled-back version runs no replica, so none
    of 1,000 requests through the shared Service reaches it (it used to keep one ready pod)."""
    broken = failing_model(tmp_path / "broken.onnx")
    await cluster.apply(model_version("fraud-v1", MODEL, "1", demo_model.uri, replicas=2, traffic=100))
    await wait_for_phase(cluster, "fraud-v1", "Ready")
    rollout = {"maxErrorRate": 0.2, "windowSeconds": 10, "minRequests": 10}
    await cluster.apply(model_version("fraud-v2", MODEL, "2", broken.uri, replicas=2, traffic=50, rollout=rollout))
    async with (
        Router(cluster.emulator, "ml", MODEL, mode="service", seed=11) as router,
        load_through(router, POISON) as load,
    ):
        mv = await wait_for_phase(cluster, "fraud-v2", "Degraded", timeout=90)
        assert mv["status"]["rollout"]["rolledBack"] is True and mv["status"]["servingTraffic"] == 0
        assert any(a.status == 500 for a in load.answers)  # it served, and failed
        await wait_for(
            lambda: replicas(cluster, "fraud-v2") == 0 and ready_endpoints_by_version(cluster, router) == {"1": 2},
            timeout=30,
            message=lambda: f"only fraud-v1's pods in the endpoints; now {ready_endpoints_by_version(cluster, router)}",
        )
        after = await load.collect(1000)
    assert Counter(a.version for a in after) == {"1": 1000}, [a for a in after if a.version != "1"]
    assert Counter(a.status for a in after) == {200: 1000}
    assert serving(cluster, "fraud-v1") == 100 and replicas(cluster, "fraud-v1") == 2
