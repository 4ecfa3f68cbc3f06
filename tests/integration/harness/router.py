"""A test router on 127.0.0.1: the data path a Gateway or kube-proxy would be in a cluster.

`Router` forwards every request it receives to one pod, chosen from the objects
in the emulated API server as they are at that request (nothing is cached, so a
weight, a route or an endpoint the operator or the test kubelet changes takes
effect on the next request):

- gateway mode: a Gateway that follows the Gateway API (`gateway.py`): it reads
  *every* HTTPRoute in the cluster, keeps those attached to its Gateway
  (`gateway="NAMESPACE/NAME"`; with None, every route with a Gateway parent), and
  applies hostname matching against the request's Host header, the spec's
  precedence and conflict rules across all of them, filters, and a backendRef
  picked at random by weight. Send `Host:` per request to reach a model by
  hostname. When a Gateway object of that name exists, its listeners'
  `allowedRoutes` and hostnames apply too.
- service mode: kube-proxy for the Service `model` in `namespace`: one ready
  endpoint of that Service, picked uniformly per request.

Either way a Service resolves through its EndpointSlices (label
`kubernetes.io/service-name`, written by the EndpointSlice controller from the
Service's `spec.selector`) to endpoints whose `conditions.ready` is true, on the
slice port named like the Service's port. No ready endpoint answers 503, an
endpoint that refuses the connection 502, a request no route matches 404, and
a backend the Gateway cannot use 500, as Gateway implementations do.
`forwarded` counts the requests sent to each backend Service by name,
`forwarded_to` by (namespace, name).
"""

from __future__ import annotations

import collections
import random
from collections.abc import Mapping
from typing import Any, Literal

import aiohttp
import aiohttp.web

from .emulator import ClusterEmulator
from .gateway import Decision, GatewayRef, HttpRequest, NoRoute, decide, modify_headers

SERVICES = ("", "v1", "services")
ENDPOINTSLICES = ("discovery.k8s.io", "v1", "endpointslices")
HTTPROUTES = ("gateway.networking.k8s.io", "v1", "httproutes")
GATEWAYS = ("gateway.networking.k8s.io", "v1", "gateways")
NAMESPACES = ("", "v1", "namespaces")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
# Not forwarded either way: they describe one connection, not the request.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "proxy-connection",
    "te",
    "trailer",
}


def ready_endpoints(
    cluster: ClusterEmulator, namespace: str, service_name: str, port: int | None = None
) -> list[tuple[str, int]]:
    """(address, port) of a Service's ready endpoints for its `port` (default: its first), as kube-proxy sees them."""
    service = cluster.peek_object(*SERVICES, namespace, service_name)
    if service is None:
        raise NoRoute(500, f"backend Service {namespace}/{service_name} does not exist")
    service_ports = (service.get("spec") or {}).get("ports") or []
    service_port = next((p for p in service_ports if port is None or p.get("port") == port), None)
    if service_port is None:
        raise NoRoute(500, f"Service {namespace}/{service_name} has no port {port}")
    port_name = service_port.get("name", "")
    endpoints = []
    for eps in cluster.peek_objects(*ENDPOINTSLICES, namespace):
        if ((eps.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL) != service_name:
            continue
        target = next((p["port"] for p in eps.get("ports") or [] if p.get("name", "") == port_name), None)
        if target is None:
            continue
        for endpoint in eps.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready", True) is False:
                continue
            endpoints.extend((address, int(target)) for address in endpoint.get("addresses") or [])
    return sorted(endpoints)


class Router:
    """See the module docstring. `async with Router(...) as router:` then send to `router.url`."""

    def __init__(
        self,
        cluster: ClusterEmulator,
        namespace: str,
        model: str,
        *,
        mode: Literal["gateway", "service"],
        seed: int | None = None,
        gateway: str | None = None,
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.model = model
        self.mode = mode
        self.gateway = GatewayRef.parse(gateway) if gateway else None
        self.forwarded: collections.Counter[str] = collections.Counter()
        self.forwarded_to: collections.Counter[tuple[str, str]] = collections.Counter()
        self._random = random.Random(seed)
        self._runner: aiohttp.web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self.url = ""

    async def __aenter__(self) -> Router:
        # Idle connections are dropped before the runtime's own keep-alive timeout (uvicorn's 5 s)
        # closes them, as a gateway's upstream idle timeout is set: reusing one the pod is closing
        # answered 502 under load.
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=2))
        app = aiohttp.web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = aiohttp.web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = aiohttp.web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()

    # -- choosing an endpoint (reads the emulator's store on every call) ---------------------------

    def ready_endpoints(
        self, service_name: str, port: int | None = None, namespace: str | None = None
    ) -> list[tuple[str, int]]:
        return ready_endpoints(self.cluster, namespace or self.namespace, service_name, port)

    def _pick_endpoint(self, namespace: str, service_name: str, port: int | None) -> tuple[str, int]:
        endpoints = self.ready_endpoints(service_name, port, namespace)
        if not endpoints:
            raise NoRoute(503, f"no ready endpoint behind Service {namespace}/{service_name}")
        return self._random.choice(endpoints)

    def decide(self, request: HttpRequest) -> Decision:
        """What the Gateway does with `request` (gateway mode)."""
        gateway = None
        if self.gateway is not None:
            gateway = self.cluster.peek_object(*GATEWAYS, self.gateway.namespace, self.gateway.name)
        # Read, never changed: the stored objects themselves, as they are at this request.
        namespaces = {n["metadata"]["name"]: n for n in self.cluster.peek_objects(*NAMESPACES)}
        return decide(
            self.cluster.peek_objects(*HTTPROUTES),
            request,
            gateway_ref=self.gateway,
            gateway=gateway,
            namespaces=namespaces,
            rng=self._random,
        )

    def choose(
        self,
        path: str,
        headers: Mapping[str, str],
        *,
        host: str = "",
        method: str = "GET",
        query: Mapping[str, str] | None = None,
    ) -> tuple[str, tuple[str, int]]:
        """(backend Service, endpoint) for one request."""
        service, _, endpoint, _ = self._route(HttpRequest.of(method, host, path, headers, query))
        return service, endpoint

    def _route(self, request: HttpRequest) -> tuple[str, str, tuple[str, int], Decision | None]:
        if self.mode == "service":
            return self.model, self.namespace, self._pick_endpoint(self.namespace, self.model, None), None
        decision = self.decide(request)
        if decision.backend is None:
            return "", "", ("", 0), decision
        namespace = decision.route["metadata"]["namespace"]
        name = str(decision.backend["name"])
        return name, namespace, self._pick_endpoint(namespace, name, decision.backend.get("port")), decision

    # -- forwarding -----------------------------------------------------------------------------------

    async def _handle(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        assert self._http is not None
        incoming = HttpRequest.of(request.method, request.host, request.path, request.headers, request.query)
        try:
            service, namespace, (address, port), decision = self._route(incoming)
        except NoRoute as no_route:
            return aiohttp.web.json_response({"error": no_route.reason}, status=no_route.status)
        if decision is not None and decision.redirect is not None:
            status, location = decision.redirect
            return aiohttp.web.Response(status=status, headers={"Location": location})
        self.forwarded[service] += 1
        self.forwarded_to[(namespace, service)] += 1
        body = await request.read()
        forward = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        path = request.path
        if decision is not None:
            forward = {k: v for k, v in decision.headers.items() if k not in HOP_BY_HOP}
            forward["Host"] = decision.host or request.host
            path = decision.path
        url = f"http://{address}:{port}{path}" + (f"?{request.query_string}" if request.query_string else "")
        try:
            async with self._http.request(request.method, url, data=body, headers=forward) as upstream:
                payload = await upstream.read()
                answer = {k.lower(): v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
                for modifier in decision.response_modifiers if decision is not None else ():
                    modify_headers(answer, modifier)
                return aiohttp.web.Response(status=upstream.status, body=payload, headers=answer)
        except aiohttp.ClientError as exc:
            return aiohttp.web.json_response({"error": f"upstream {address}:{port}: {exc}"}, status=502)


class Gateway(Router):
    """A Router in gateway mode keyed by its Gateway (`"NAMESPACE/NAME"`) rather than by one model."""

    def __init__(self, cluster: ClusterEmulator, gateway: str, *, seed: int | None = None) -> None:
        ref = GatewayRef.parse(gateway)
        super().__init__(cluster, ref.namespace, "", mode="gateway", seed=seed, gateway=gateway)


__all__ = ["GATEWAYS", "HTTPROUTES", "Gateway", "NoRoute", "Router", "ready_endpoints"]
