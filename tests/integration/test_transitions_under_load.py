"""Traffic transitions under steady load: no transition ever drops capacity (issue 10, point 4).

Each scenario runs the real operator, real runtime pods and clients that send
predictions through the test router the whole time, while a sampler checks the
cluster every 50 ms. They hold in both routing modes:

- every request is answered 200: no 5xx, no queue-full 503 (a version that takes
  a share is Available before the one that gives it up scales down);
- at every sampled moment the model's Ready replicas cover the shares the
  traffic layer applies (`steady_load.CapacitySampler`).

Scale-down delays are short through the operator's configuration; the resync
is the default (300 s), so what passes is the event path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from modelfleet_operator.config import OperatorConfig
from tests.integration.harness.cluster import DEPLOYMENTS, MV, Cluster
from tests.integration.harness.kubelet import DeploymentController
from tests.integration.harness.router import Router
from tests.integration.model_versions import LOCAL_SOURCES, ModelFile, condition, model_version, wait_for_phase
from tests.integration.steady_load import CapacitySampler, Load, applied_split, route_weights
from tests.support.polling import wait_for

MODEL = "fraud"
HOST = "fraud-ml.example.com"
DELAY, RETIRE = 2.0, 3.0
MODES = ("service", "gateway")


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def operator_config(mode: str) -> OperatorConfig:
    routing: dict[str, Any] = {"routing": "gateway", "gateway": "ml/public"} if mode == "gateway" else {}
    return OperatorConfig(
        namespaces=("ml",),
        standalone=True,
        allowed_uri_schemes=LOCAL_SOURCES,
        scale_down_delay_seconds=DELAY,
        retire_after_seconds=RETIRE,
        **routing,
    )


@pytest.fixture
async def router(cluster: Cluster, mode: str) -> AsyncIterator[Router]:
    gateway = "ml/public" if mode == "gateway" else None
    async with Router(cluster.emulator, "ml", MODEL, mode=mode, seed=7, gateway=gateway) as running:  # type: ignore[arg-type]
        yield running


def status(cluster: Cluster, name: str) -> dict[str, Any]:
    return (cluster.get(MV, name) or {}).get("status") or {}


def serving(cluster: Cluster) -> dict[str, int | None]:
    return {mv["metadata"]["name"]: (mv.get("status") or {}).get("servingTraffic") for mv in cluster.list(MV)}


def replicas(cluster: Cluster, name: str) -> int | None:
    deployment = cluster.get(DEPLOYMENTS, name)
    return None if deployment is None else deployment["spec"].get("replicas")


def ready_pods(kubelet: DeploymentController, name: str) -> int:
    return len([p for p in kubelet.pods_of("ml", name) if p.ready])


async def stable_v1(cluster: Cluster, kubelet: DeploymentController, router: Router, demo_model: ModelFile) -> None:
    """fraud-v1 alone, Ready on both its replicas (the router sees both) and serving all the traffic."""
    await cluster.apply(model_version("fraud-v1", MODEL, "1", demo_model.uri, replicas=2, traffic=100))

    def stable() -> bool:
        mine = status(cluster, "fraud-v1")
        ready = mine.get("phase") == "Ready" and mine.get("servingTraffic") == 100
        return ready and applied_split(cluster, router, MODEL) == ({"fraud-v1": 100.0}, {"fraud-v1": 2})

    await wait_for(stable, timeout=90, message=lambda: f"fraud-v1 Ready on 2 replicas; {status(cluster, 'fraud-v1')}")


async def settle(cluster: Cluster, router: Router, shares: dict[str, int], timeout: float = 90.0) -> None:
    """Until the versions' statuses (and the route, in gateway mode) carry `shares`."""

    def done() -> bool:
        if {n: serving(cluster).get(n) for n in shares} != shares:
            return False
        return router.mode != "gateway" or route_weights(cluster, MODEL) == {n: s for n, s in shares.items() if s}

    await wait_for(done, timeout=timeout, message=lambda: f"shares {shares}; now {serving(cluster)}")


def check(load: Load, sampler: CapacitySampler) -> None:
    """The scenario's promises: every request answered 200, and capacity covered at every sample."""
    assert len(load.answers) > 100, "the load did not run"
    assert load.statuses() == {200: len(load.answers)}, load.statuses()
    assert sampler.samples >= 5, "the sampler did not run"
    assert sampler.violations == [], sampler.violations[:5]


def under_load(router: Router) -> Load:
    return Load(router.url, host=HOST if router.mode == "gateway" else None)


async def test_a_canary_then_its_promotion_never_drops_capacity(
    cluster: Cluster, kubelet: DeploymentController, operator, router: Router, demo_model: ModelFile
) -> None:
    await stable_v1(cluster, kubelet, router, demo_model)
    sampler = CapacitySampler(cluster, router, MODEL)
    async with under_load(router) as load, sampler.running():
        await cluster.apply(model_version("fraud-v2", MODEL, "2", demo_model.uri, replicas=2, traffic=10))
        await settle(cluster, router, {"fraud-v1": 91, "fraud-v2": 9})
        # The promotion the retraining loop makes: the child first, then the parent.
        await cluster.patch_spec("fraud-v2", {"traffic": 100})
        await cluster.patch_spec("fraud-v1", {"traffic": 0})
        await settle(cluster, router, {"fraud-v1": 0, "fraud-v2": 100})
        await wait_for(
            lambda: replicas(cluster, "fraud-v1") == 0 and not kubelet.pods_of("ml", "fraud-v1"),
            timeout=60,
            message=lambda: f"fraud-v1 scaled down after the delay; replicas {replicas(cluster, 'fraud-v1')}",
        )
        await load.collect(200)
    check(load, sampler)
    assert status(cluster, "fraud-v1")["phase"] == "Retired"
    assert status(cluster, "fraud-v2")["phase"] == "Ready" and replicas(cluster, "fraud-v2") == 2


async def test_a_rollback_by_weights_after_a_promotion_never_drops_capacity(
    cluster: Cluster, kubelet: DeploymentController, operator, router: Router, demo_model: ModelFile
) -> None:
    await stable_v1(cluster, kubelet, router, demo_model)
    await cluster.apply(model_version("fraud-v2", MODEL, "2", demo_model.uri, replicas=2, traffic=100))
    await cluster.patch_spec("fraud-v1", {"traffic": 0})
    await settle(cluster, router, {"fraud-v1": 0, "fraud-v2": 100})
    await wait_for(lambda: replicas(cluster, "fraud-v1") == 0, timeout=60, message="fraud-v1 retired")
    await wait_for(lambda: ready_pods(kubelet, "fraud-v2") == 2, timeout=60, message="fraud-v2 on 2 ready pods")
    sampler = CapacitySampler(cluster, router, MODEL)
    async with under_load(router) as load, sampler.running():
        await cluster.patch_spec("fraud-v1", {"traffic": 100})
        await cluster.patch_spec("fraud-v2", {"traffic": 0})
        await settle(cluster, router, {"fraud-v1": 100, "fraud-v2": 0})
        await wait_for(
            lambda: replicas(cluster, "fraud-v2") == 0 and not kubelet.pods_of("ml", "fraud-v2"),
            timeout=60,
            message=lambda: f"fraud-v2 scaled to 0; replicas {replicas(cluster, 'fraud-v2')}",
        )
        await load.collect(200)
    check(load, sampler)
    assert status(cluster, "fraud-v2")["phase"] == "Retired"


async def test_a_weight_change_never_drops_capacity(
    cluster: Cluster, kubelet: DeploymentController, operator, router: Router, demo_model: ModelFile
) -> None:
    await stable_v1(cluster, kubelet, router, demo_model)
    await cluster.apply(model_version("fraud-v2", MODEL, "2", demo_model.uri, replicas=2, traffic=100))
    await settle(cluster, router, {"fraud-v1": 50, "fraud-v2": 50})
    sampler = CapacitySampler(cluster, router, MODEL)
    async with under_load(router) as load, sampler.running():
        await cluster.patch_spec("fraud-v1", {"traffic": 80})
        await cluster.patch_spec("fraud-v2", {"traffic": 20})
        await settle(cluster, router, {"fraud-v1": 80, "fraud-v2": 20})
        wanted = {"fraud-v1": 2, "fraud-v2": 1} if router.mode == "service" else {"fraud-v1": 2, "fraud-v2": 2}
        await wait_for(
            lambda: {n: replicas(cluster, n) for n in wanted} == wanted,
            timeout=60,
            message=lambda: f"replicas {wanted}; now { {n: replicas(cluster, n) for n in wanted} }",
        )
        await load.collect(200)
    check(load, sampler)


async def test_deleting_the_serving_version_moves_its_traffic_before_its_pods_go(
    cluster: Cluster, kubelet: DeploymentController, operator, router: Router, demo_model: ModelFile
) -> None:
    await stable_v1(cluster, kubelet, router, demo_model)
    await cluster.apply(model_version("fraud-v2", MODEL, "2", demo_model.uri, replicas=2, traffic=100))
    await settle(cluster, router, {"fraud-v1": 50, "fraud-v2": 50})
    await wait_for(
        lambda: "serving.modelfleet.dev/finalizer" in (cluster.get(MV, "fraud-v1")["metadata"].get("finalizers") or []),
        timeout=30,
        message="fraud-v1 carries the handover finalizer while it serves beside fraud-v2",
    )
    sampler = CapacitySampler(cluster, router, MODEL)
    async with under_load(router) as load, sampler.running():
        await cluster.delete(MV, "fraud-v1")
        await wait_for(lambda: cluster.get(MV, "fraud-v1") is None, timeout=90, message="fraud-v1 to go")
        assert serving(cluster) == {"fraud-v2": 100}
        await wait_for(lambda: not kubelet.pods_of("ml", "fraud-v1"), timeout=60, message="fraud-v1's pods gone")
        await load.collect(200)
    check(load, sampler)
    assert condition(cluster, "fraud-v2", "TrafficAssigned")["status"] == "True"
    await wait_for_phase(cluster, "fraud-v2", "Ready")
