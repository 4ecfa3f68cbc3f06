"""ResourceQuota admission in the emulated API server (kubernetes.io/docs/concepts/policy/resource-quotas/).

A Pod that would exceed a quota's hard limit is refused with 403 and the API
server's message; a Pod that does not say what a compute quota limits is refused;
terminal pods do not count; the quota's status follows the namespace's pods.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.integration.harness.client import resource_path
from tests.integration.harness.cluster import Cluster
from tests.integration.harness.rawapi import MERGE, RawApi

PODS = ("", "v1", "pods")
QUOTAS = ("", "v1", "resourcequotas")


@pytest.fixture
async def api(cluster: Cluster) -> AsyncIterator[RawApi]:
    async with RawApi(cluster.url) as raw:
        status, body = await raw.call(
            "POST",
            resource_path(*QUOTAS, "ml"),
            {"metadata": {"name": "compute"}, "spec": {"hard": {"pods": "2", "requests.cpu": "1"}}},
        )
        assert status == 201, body
        yield raw


def pod(name: str, cpu: str | None = "500m") -> dict[str, Any]:
    resources = {"requests": {"cpu": cpu}} if cpu else {}
    return {"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "x:1", "resources": resources}]}}


async def test_a_pod_beyond_the_quota_is_forbidden_until_one_goes(api: RawApi, cluster: Cluster) -> None:
    for name in ("a", "b"):
        status, body = await api.call("POST", resource_path(*PODS, "ml"), pod(name))
        assert status == 201, body
    status, body = await api.call("POST", resource_path(*PODS, "ml"), pod("c", "100m"))
    assert status == 403 and body["reason"] == "Forbidden"
    assert body["message"] == (
        'pods "c" is forbidden: exceeded quota: compute, requested: pods=1,requests.cpu=100m, '
        "used: pods=2,requests.cpu=1, limited: pods=2,requests.cpu=1"
    )
    assert cluster.get(QUOTAS, "compute")["status"] == {
        "hard": {"pods": "2", "requests.cpu": "1"},
        "used": {"pods": "2", "requests.cpu": "1"},
    }
    await api.call("DELETE", resource_path(*PODS, "ml", "a"))
    status, body = await api.call("POST", resource_path(*PODS, "ml"), pod("c", "100m"))
    assert status == 201, body
    assert cluster.get(QUOTAS, "compute")["status"]["used"] == {"pods": "2", "requests.cpu": "600m"}


async def test_a_pod_that_does_not_say_what_the_quota_limits_is_forbidden(api: RawApi) -> None:
    status, body = await api.call("POST", resource_path(*PODS, "ml"), pod("a", None))
    assert status == 403
    assert body["message"] == 'pods "a" is forbidden: failed quota: compute: must specify requests.cpu'


async def test_terminal_pods_do_not_count(api: RawApi) -> None:
    for name in ("a", "b"):
        await api.call("POST", resource_path(*PODS, "ml"), pod(name))
    path = resource_path(*PODS, "ml", "a", "status")
    status, _ = await api.call("PATCH", path, {"status": {"phase": "Succeeded"}}, content_type=MERGE)
    assert status == 200
    status, body = await api.call("POST", resource_path(*PODS, "ml"), pod("c"))
    assert status == 201, body
