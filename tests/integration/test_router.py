"""The test router follows the Gateway API over every HTTPRoute attached to its Gateway.

Precedence, conflicts, hostnames, filters and weights as the Gateway API (v1)
specifies them for HTTPRoute; kube-proxy's uniform spread over a Service's ready
endpoints in service mode. The end-to-end cases send real HTTP through the
router to real backends on loopback, with Services and EndpointSlices in the
emulated API server.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import aiohttp.web
import pytest

from tests.integration.harness.client import resource_path
from tests.integration.harness.cluster import Cluster
from tests.integration.harness.gateway import GatewayRef, HttpRequest, NoRoute, decide, hostname_matches
from tests.integration.harness.rawapi import RawApi
from tests.integration.harness.router import Gateway, Router

ROUTES = ("gateway.networking.k8s.io", "v1", "httproutes")


def route(
    name: str,
    *rules: dict[str, Any],
    namespace: str = "ml",
    hostnames: list[str] | None = None,
    created: str = "2026-01-01T00:00:00Z",
    gateway: str = "public",
    gateway_namespace: str = "ml",
) -> dict[str, Any]:
    spec: dict[str, Any] = {"parentRefs": [{"name": gateway, "namespace": gateway_namespace}], "rules": list(rules)}
    if hostnames:
        spec["hostnames"] = hostnames
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": created},
        "spec": spec,
    }


def rule(backend: str, *, path: tuple[str, str] | None = None, weight: int = 1, **match: Any) -> dict[str, Any]:
    matches = {**match}
    if path is not None:
        matches["path"] = {"type": path[0], "value": path[1]}
    return {"matches": [matches] if matches else [], "backendRefs": [{"name": backend, "port": 80, "weight": weight}]}


def winner(routes: list[dict[str, Any]], path: str = "/", host: str = "gw.example.com", **request: Any) -> str:
    decision = decide(routes, HttpRequest.of(request.pop("method", "GET"), host, path, **request))
    assert decision.backend is not None
    return f"{decision.route['metadata']['name']}->{decision.backend['name']}"


# -- precedence and conflicts (the pure core) ----------------------------------------------------------


def test_an_exact_path_beats_a_prefix_and_the_longest_prefix_wins() -> None:
    routes = [
        route("a", rule("root", path=("PathPrefix", "/"))),
        route("b", rule("v1", path=("PathPrefix", "/v1"))),
        route("c", rule("v1-models", path=("PathPrefix", "/v1/models"))),
        route("d", rule("exact", path=("Exact", "/v1/models/x"))),
    ]
    assert winner(routes, "/v1/models/x") == "d->exact"
    assert winner(routes, "/v1/models/y") == "c->v1-models"
    assert winner(routes, "/v1/other") == "b->v1"
    assert winner(routes, "/v10") == "a->root"  # a prefix matches whole path elements only


def test_method_then_header_count_then_query_count_break_path_ties() -> None:
    both = [{"name": "x-model-version", "value": "2"}, {"name": "x-tenant", "value": "t"}]
    routes = [
        route("plain", rule("plain", path=("PathPrefix", "/"))),
        route("post", rule("post", path=("PathPrefix", "/"), method="POST")),
        route("one-header", rule("one", path=("PathPrefix", "/"), headers=[both[0]])),
        route("two-headers", rule("two", path=("PathPrefix", "/"), headers=both)),
        route("query", rule("query", path=("PathPrefix", "/"), queryParams=[{"name": "debug", "value": "1"}])),
    ]
    assert winner(routes, method="POST", headers={"x-model-version": "2", "X-Tenant": "t"}) == "post->post"
    assert winner(routes, headers={"x-model-version": "2", "X-Tenant": "t"}) == "two-headers->two"
    assert winner(routes, headers={"x-model-version": "2"}) == "one-header->one"
    assert winner(routes, query={"debug": "1"}) == "query->query"
    assert winner(routes) == "plain->plain"


def test_identical_matches_go_to_the_oldest_route_then_alphabetically_then_the_first_rule() -> None:
    same = ("PathPrefix", "/")
    older = route("zeta", rule("zeta", path=same), created="2026-01-01T00:00:00Z")
    newer = route("alpha", rule("alpha", path=same), created="2026-01-02T00:00:00Z")
    assert winner([newer, older]) == "zeta->zeta"
    tied = [route("beta", rule("b", path=same), namespace="ml"), route("alpha", rule("a", path=same), namespace="zz")]
    assert winner(tied) == "beta->b"  # "ml/beta" < "zz/alpha"
    assert winner([route("one", rule("first", path=same), rule("second", path=same))]) == "one->first"


def test_hostnames_match_exactly_or_by_wildcard_and_the_most_specific_wins() -> None:
    assert hostname_matches("*.example.com", "a.example.com")
    assert hostname_matches("*.example.com", "a.b.example.com")
    assert not hostname_matches("*.example.com", "example.com")
    routes = [
        route("any", rule("any")),
        route("wild", rule("wild"), hostnames=["*.example.com"]),
        route("exact", rule("exact"), hostnames=["fraud.example.com"]),
    ]
    assert winner(routes, host="fraud.example.com:8080") == "exact->exact"
    assert winner(routes, host="churn.example.com") == "wild->wild"
    assert winner(routes, host="example.org") == "any->any"
    # A route that names hostnames matches no other host, whatever its paths.
    with pytest.raises(NoRoute) as no_route:
        decide([routes[2]], HttpRequest.of("GET", "other.example.com", "/"))
    assert no_route.value.status == 404


def test_only_routes_attached_to_the_gateway_count_and_allowed_routes_limit_namespaces() -> None:
    mine = route("mine", rule("mine"), hostnames=["a.example.com"])
    elsewhere = route("elsewhere", rule("elsewhere"), hostnames=["a.example.com"], gateway="internal")
    other_ns = route("other", rule("other"), namespace="team", hostnames=["b.example.com"])
    request_a, request_b = HttpRequest.of("GET", "a.example.com", "/"), HttpRequest.of("GET", "b.example.com", "/")
    ref = GatewayRef("ml", "public")
    assert decide([elsewhere, mine], request_a, gateway_ref=ref).route["metadata"]["name"] == "mine"
    # Without a Gateway object every namespace may attach; with one, its listener decides (Same by default).
    assert decide([other_ns], request_b, gateway_ref=ref).route["metadata"]["name"] == "other"
    same_only = {"spec": {"listeners": [{"name": "http", "protocol": "HTTP", "port": 80}]}}
    with pytest.raises(NoRoute):
        decide([other_ns], request_b, gateway_ref=ref, gateway=same_only)
    selector = {"from": "Selector", "selector": {"matchLabels": {"gateway-access": "yes"}}}
    by_label = {
        "spec": {"listeners": [{"name": "http", "protocol": "HTTP", "allowedRoutes": {"namespaces": selector}}]}
    }
    namespaces = {"team": {"metadata": {"name": "team", "labels": {"gateway-access": "yes"}}}}
    chosen = decide([other_ns], request_b, gateway_ref=ref, gateway=by_label, namespaces=namespaces)
    assert chosen.route["metadata"]["name"] == "other"


def test_weights_split_requests_and_a_zero_weight_gets_none() -> None:
    split = {
        "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
        "backendRefs": [
            {"name": "v1", "port": 80, "weight": 90},
            {"name": "v2", "port": 80, "weight": 10},
            {"name": "v3", "port": 80, "weight": 0},
        ],
    }
    rng = random.Random(7)
    counts = collections.Counter(
        decide([route("r", split)], HttpRequest.of("GET", "h", "/"), rng=rng).backend["name"] for _ in range(2000)
    )
    assert counts["v3"] == 0
    assert abs(counts["v2"] / 2000 - 0.10) < 0.03  # 3 standard deviations of 2000 draws at 10%
    zero = {**split, "backendRefs": [{"name": "v3", "port": 80, "weight": 0}]}
    with pytest.raises(NoRoute) as no_route:
        decide([route("r", zero)], HttpRequest.of("GET", "h", "/"))
    assert no_route.value.status == 500


def test_filters_rewrite_the_path_and_modify_headers_and_unknown_filters_fail() -> None:
    rewrite = {
        "matches": [{"path": {"type": "PathPrefix", "value": "/models/fraud"}}],
        "filters": [
            {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}},
            {
                "type": "RequestHeaderModifier",
                "requestHeaderModifier": {"set": [{"name": "X-Model", "value": "fraud"}], "remove": ["x-drop"]},
            },
        ],
        "backendRefs": [{"name": "fraud", "port": 80}],
    }
    decision = decide([route("r", rewrite)], HttpRequest.of("GET", "h", "/models/fraud/predict", {"X-Drop": "1"}))
    assert decision.path == "/predict"
    assert decision.headers.get("x-model") == "fraud" and "x-drop" not in decision.headers
    assert decide([route("r", rewrite)], HttpRequest.of("GET", "h", "/models/fraud")).path == "/"
    unknown = {**rewrite, "filters": [{"type": "ExtensionRef", "extensionRef": {"name": "x"}}]}
    with pytest.raises(NoRoute) as no_route:
        decide([route("r", unknown)], HttpRequest.of("GET", "h", "/models/fraud"))
    assert no_route.value.status == 500


# -- end to end: real HTTP through the router to backends on loopback ------------------------------------


@contextlib.asynccontextmanager
async def backend(name: str) -> AsyncIterator[int]:
    """An HTTP server that answers which backend it is, the path it got and a header the router may add."""

    async def answer(request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response(
            {"backend": name, "path": request.path, "x-model": request.headers.get("x-model")}
        )

    app = aiohttp.web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


class Backends:
    """Services with one ready endpoint each, the endpoint a real HTTP server."""

    def __init__(self, api: RawApi, stack: contextlib.AsyncExitStack) -> None:
        self.api, self.stack = api, stack

    async def add(self, namespace: str, name: str, *, ready: bool = True) -> None:
        port = await self.stack.enter_async_context(backend(f"{namespace}/{name}"))
        svc = {"metadata": {"name": name}, "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80}]}}
        status, body = await self.api.call("POST", resource_path("", "v1", "services", namespace), svc)
        assert status == 201, body
        eps = {
            "metadata": {"name": f"{name}-x", "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": port}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": ready}}],
        }
        status, body = await self.api.call(
            "POST", resource_path("discovery.k8s.io", "v1", "endpointslices", namespace), eps
        )
        assert status == 201, body

    async def route(self, manifest: dict[str, Any]) -> None:
        namespace = manifest["metadata"]["namespace"]
        status, body = await self.api.call("POST", resource_path(*ROUTES, namespace), manifest)
        assert status == 201, body


@pytest.fixture
async def backends(cluster: Cluster) -> AsyncIterator[Backends]:
    async with RawApi(cluster.url) as api, contextlib.AsyncExitStack() as stack:
        await api.call("POST", resource_path("", "v1", "namespaces"), {"metadata": {"name": "team"}})
        yield Backends(api, stack)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Creation timestamps a second apart, so that "the oldest route" is well defined in one test."""
    ticks = (f"2026-01-01T00:00:{second:02d}Z" for second in itertools.count())
    monkeypatch.setattr("tests.integration.harness.emulator._now", lambda: next(ticks))


async def send(router: Router, path: str, host: str = "", **headers: str) -> tuple[int, Any]:
    if host:
        headers["Host"] = host
    async with aiohttp.ClientSession() as http, http.get(router.url + path, headers=headers) as response:
        return response.status, await response.json(content_type=None)


def model_route(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    manifest = route(name, rule(name), namespace=namespace, **spec)
    del manifest["metadata"]["creationTimestamp"]
    return manifest


async def test_two_models_in_one_namespace_and_one_in_another_are_each_reached_by_hostname(
    cluster: Cluster, backends: Backends
) -> None:
    for namespace, name in (("ml", "fraud"), ("ml", "churn"), ("team", "fraud")):
        await backends.add(namespace, name)
        await backends.route(model_route(name, namespace, hostnames=[f"{name}-{namespace}.models.example.com"]))
    async with Gateway(cluster.emulator, "ml/public", seed=1) as gateway:
        for namespace, name in (("ml", "fraud"), ("ml", "churn"), ("team", "fraud")):
            for _ in range(5):
                status, body = await send(gateway, "/predict", f"{name}-{namespace}.models.example.com")
                assert status == 200 and body["backend"] == f"{namespace}/{name}"
        status, _ = await send(gateway, "/predict", "nobody.models.example.com")
        assert status == 404
        assert gateway.forwarded_to == {("ml", "fraud"): 5, ("ml", "churn"): 5, ("team", "fraud"): 5}


async def test_per_model_path_prefixes_with_a_rewrite_reach_each_model_at_its_own_paths(
    cluster: Cluster, backends: Backends
) -> None:
    for name in ("fraud", "churn"):
        await backends.add("ml", name)
        manifest = model_route(name, "ml")
        manifest["spec"]["rules"] = [
            {
                "matches": [{"path": {"type": "PathPrefix", "value": f"/models/{name}"}}],
                "filters": [
                    {
                        "type": "URLRewrite",
                        "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}},
                    },
                    {
                        "type": "RequestHeaderModifier",
                        "requestHeaderModifier": {"add": [{"name": "x-model", "value": name}]},
                    },
                ],
                "backendRefs": [{"name": name, "port": 80}],
            }
        ]
        await backends.route(manifest)
    async with Gateway(cluster.emulator, "ml/public") as gateway:
        assert await send(gateway, "/models/churn/v2/health/ready") == (
            200,
            {"backend": "ml/churn", "path": "/v2/health/ready", "x-model": "churn"},
        )
        status, body = await send(gateway, "/models/fraud/predict")
        assert (status, body["backend"], body["path"]) == (200, "ml/fraud", "/predict")
        status, _ = await send(gateway, "/models/fraudulent/predict")
        assert status == 404


async def test_every_model_on_path_prefix_slash_without_hostnames_sends_everything_to_the_oldest_route(
    cluster: Cluster, backends: Backends, clock: None
) -> None:
    """The operator's old routes: a real Gateway gives the conflict to the oldest; the other models are unreachable."""
    for namespace, name in (("ml", "zeta"), ("ml", "alpha"), ("team", "beta")):
        await backends.add(namespace, name)
        await backends.route(model_route(name, namespace))
    async with Gateway(cluster.emulator, "ml/public") as gateway:
        answers = [await send(gateway, "/predict") for _ in range(20)]
    assert {body["backend"] for _, body in answers} == {"ml/zeta"}


async def test_a_route_attached_to_another_gateway_is_ignored(cluster: Cluster, backends: Backends) -> None:
    await backends.add("ml", "fraud")
    await backends.add("ml", "shadow")
    await backends.route(model_route("shadow", "ml", gateway="internal"))
    await backends.route(model_route("fraud", "ml"))
    async with Gateway(cluster.emulator, "ml/public") as gateway:
        assert {(await send(gateway, "/"))[1]["backend"] for _ in range(10)} == {"ml/fraud"}


async def test_a_backend_without_ready_endpoints_answers_503(cluster: Cluster, backends: Backends) -> None:
    await backends.add("ml", "cold", ready=False)
    await backends.route(model_route("cold", "ml"))
    async with Gateway(cluster.emulator, "ml/public") as gateway:
        status, body = await send(gateway, "/")
    assert status == 503 and "no ready endpoint" in body["error"]


async def test_service_mode_spreads_over_the_ready_endpoints_of_the_model_service(
    cluster: Cluster, backends: Backends
) -> None:
    await backends.add("ml", "fraud")
    async with Router(cluster.emulator, "ml", "fraud", mode="service", seed=2) as router:
        status, body = await send(router, "/predict", "anything.example.com")
        assert (status, body["backend"], body["path"]) == (200, "ml/fraud", "/predict")
        assert router.forwarded == {"fraud": 1}
