"""A test router on 127.0.0.1: the data path a Gateway or kube-proxy would be in a cluster.

`Router` forwards every request it receives to one pod of a model, chosen from
the objects in the emulated API server as they are at that request (nothing is
cached, so a weight or an endpoint the operator or the test kubelet changes
takes effect on the next request):

- gateway mode: the HTTPRoute named after the model. The rule is chosen as the
  Gateway API says (the longest matching path prefix, then the most header
  matches, so `x-model-version: V` pins a version); a backendRef of that rule is
  picked at random by weight; its Service is resolved through the EndpointSlices
  labelled with the Service's name to a ready endpoint, picked uniformly. A rule
  with no backend of positive weight answers 500, a backend without a ready
  endpoint 503, as Gateway implementations do.
- service mode: the model's shared Service, one ready endpoint picked uniformly
  per request, as kube-proxy spreads connections over ready endpoints.

An endpoint that refuses the connection answers 502. `forwarded` counts the
requests sent to each backend Service.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import aiohttp
import aiohttp.web

from .emulator import ClusterEmulator

SERVICES = ("", "v1", "services")
ENDPOINTSLICES = ("discovery.k8s.io", "v1", "endpointslices")
HTTPROUTES = ("gateway.networking.k8s.io", "v1", "httproutes")
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


class NoRoute(Exception):
    """The request cannot be forwarded; `status` is what the Gateway or kube-proxy would answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _header_matches(match: Mapping[str, Any], headers: Mapping[str, str]) -> bool:
    for wanted in match.get("headers") or []:
        if wanted.get("type", "Exact") != "Exact":
            raise NotImplementedError(f"header match type {wanted.get('type')!r}")
        if headers.get(wanted["name"]) != wanted["value"]:
            return False
    return True


def _path_matches(match: Mapping[str, Any], path: str) -> int | None:
    """The length of the matched prefix (the Gateway API's precedence), None when it does not match."""
    wanted = match.get("path") or {"type": "PathPrefix", "value": "/"}
    value = wanted.get("value", "/")
    if wanted.get("type", "PathPrefix") == "Exact":
        return len(value) + 1 if path == value else None
    prefix = value.rstrip("/")
    if path == prefix or path.startswith(prefix + "/") or not prefix:
        return len(prefix)
    return None


def choose_rule(route: Mapping[str, Any], path: str, headers: Mapping[str, str]) -> Mapping[str, Any]:
    """The rule a Gateway applies: most specific path first, then the most header matches, then order."""
    candidates = []
    for index, rule in enumerate((route.get("spec") or {}).get("rules") or []):
        for match in rule.get("matches") or [{}]:
            length = _path_matches(match, path)
            if length is not None and _header_matches(match, headers):
                candidates.append((-length, -len(match.get("headers") or []), index, rule))
    if not candidates:
        raise NoRoute(404, "no rule of the HTTPRoute matches")
    return min(candidates, key=lambda c: c[:3])[3]


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
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.model = model
        self.mode = mode
        self.forwarded: collections.Counter[str] = collections.Counter()
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

    def ready_endpoints(self, service_name: str, port: int | None = None) -> list[tuple[str, int]]:
        """(address, port) of the Service's ready endpoints, for its `port` (default: its first)."""
        service = self.cluster.live_object(*SERVICES, self.namespace, service_name)
        if service is None:
            raise NoRoute(500, f"backend Service {service_name!r} does not exist")
        service_ports = (service.get("spec") or {}).get("ports") or []
        service_port = next((p for p in service_ports if port is None or p.get("port") == port), None)
        if service_port is None:
            raise NoRoute(500, f"Service {service_name!r} has no port {port}")
        port_name = service_port.get("name", "")
        endpoints = []
        for eps in self.cluster.live_objects(*ENDPOINTSLICES, self.namespace):
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

    def _pick_endpoint(self, service_name: str, port: int | None) -> tuple[str, int]:
        endpoints = self.ready_endpoints(service_name, port)
        if not endpoints:
            raise NoRoute(503, f"no ready endpoint behind Service {service_name!r}")
        return self._random.choice(endpoints)

    def _pick_backend(self, refs: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
        weighted = [r for r in refs if int(r.get("weight", 1)) > 0]
        if not weighted:
            raise NoRoute(500, "the rule has no backend with a positive weight")
        return self._random.choices(weighted, weights=[int(r.get("weight", 1)) for r in weighted])[0]

    def choose(self, path: str, headers: Mapping[str, str]) -> tuple[str, tuple[str, int]]:
        """(backend Service, endpoint) for one request."""
        if self.mode == "service":
            return self.model, self._pick_endpoint(self.model, None)
        route = self.cluster.live_object(*HTTPROUTES, self.namespace, self.model)
        if route is None:
            raise NoRoute(404, f"no HTTPRoute {self.model!r}")
        backend = self._pick_backend(choose_rule(route, path, headers).get("backendRefs") or [])
        if backend.get("kind", "Service") != "Service" or backend.get("group", ""):
            raise NoRoute(500, f"unsupported backend {backend!r}")
        namespace = backend.get("namespace", self.namespace)
        if namespace != self.namespace:
            raise NoRoute(500, "cross-namespace backends need a ReferenceGrant; the test router has none")
        return backend["name"], self._pick_endpoint(backend["name"], backend.get("port"))

    # -- forwarding -----------------------------------------------------------------------------------

    async def _handle(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        assert self._http is not None
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            service, (address, port) = self.choose(request.path, headers)
        except NoRoute as no_route:
            return aiohttp.web.json_response({"error": no_route.reason}, status=no_route.status)
        self.forwarded[service] += 1
        body = await request.read()
        forward = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        url = f"http://{address}:{port}{request.path_qs}"
        try:
            async with self._http.request(request.method, url, data=body, headers=forward) as upstream:
                payload = await upstream.read()
                answer = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
                return aiohttp.web.Response(status=upstream.status, body=payload, headers=answer)
        except aiohttp.ClientError as exc:
            return aiohttp.web.json_response({"error": f"upstream {address}:{port}: {exc}"}, status=502)


__all__ = ["NoRoute", "Router", "choose_rule"]
