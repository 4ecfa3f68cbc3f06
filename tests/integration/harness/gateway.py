"""Gateway API request matching over every HTTPRoute attached to a Gateway: the pure core of the test router.

It follows the Gateway API specification (v1, HTTPRoute and Gateway):

- Attachment: a route attaches through a `parentRef` (group
  gateway.networking.k8s.io, kind Gateway; namespace defaults to the route's own)
  naming the Gateway. When the Gateway object exists, its listeners' `allowedRoutes`
  decide which namespaces may attach (`Same` by default, `All`, or `Selector` over
  the namespaces' labels) and a `sectionName` picks a listener; without a Gateway
  object every namespace may attach.
- Hostnames: a route's `hostnames` match the request's Host (port removed) exactly,
  or as a wildcard `*.example.com` (a suffix of one label or more, never
  example.com itself); a route without hostnames matches every host.
- Matching: path (`Exact`, `PathPrefix` element-wise, `RegularExpression`), method,
  headers (names case-insensitive) and query parameters (`Exact`, `RegularExpression`);
  a rule without matches matches `PathPrefix /`.
- Precedence across all attached routes: the most specific hostname (characters of
  a matching non-wildcard hostname, then of a matching hostname), then an `Exact`
  path, the longest `PathPrefix`, a method match, the most header matches, the most
  query parameter matches; ties go to the oldest route (creationTimestamp), then
  to "{namespace}/{name}" alphabetically, then to the first rule and match in order.
- Filters: `RequestHeaderModifier` (set, add, remove), `URLRewrite`
  (`ReplacePrefixMatch`, `ReplaceFullPath`, hostname), `RequestRedirect`, and
  `ResponseHeaderModifier`; any other filter answers 500, as the spec requires of an
  unsupported filter. Backends are picked at random by weight; a rule with no backend
  of positive weight, a backend that is not a Service, has no port, or is in another
  namespace (no ReferenceGrant is emulated) answers 500.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .selectors import match_labels

GATEWAY_GROUP = "gateway.networking.k8s.io"


class NoRoute(Exception):
    """The request cannot be forwarded; `status` is what the Gateway or kube-proxy would answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class HttpRequest:
    method: str
    host: str
    path: str
    headers: Mapping[str, str]  # lower-case names
    query: Mapping[str, str]

    @classmethod
    def of(
        cls,
        method: str,
        host: str,
        path: str,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
    ) -> HttpRequest:
        hostname = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        return cls(
            method.upper(),
            hostname.lower().rstrip("."),
            path or "/",
            {k.lower(): v for k, v in (headers or {}).items()},
            dict(query or {}),
        )


@dataclasses.dataclass(frozen=True)
class GatewayRef:
    namespace: str
    name: str

    @classmethod
    def parse(cls, text: str) -> GatewayRef:
        namespace, _, name = text.partition("/")
        if not namespace or not name:
            raise ValueError(f"a Gateway is NAMESPACE/NAME, got {text!r}")
        return cls(namespace, name)


@dataclasses.dataclass(frozen=True)
class Decision:
    """Where one request goes: the route and rule that won, the backend picked, and the rewritten request."""

    route: Mapping[str, Any]
    rule_index: int
    backend: Mapping[str, Any] | None  # None for a redirect
    path: str
    host: str
    headers: Mapping[str, str]
    response_modifiers: Sequence[Mapping[str, Any]]  # ResponseHeaderModifier filters, for the answer
    redirect: tuple[int, str] | None = None


# -- attachment --------------------------------------------------------------------------------


def _listeners(gateway: Mapping[str, Any] | None, section: str | None) -> list[Mapping[str, Any]]:
    listeners = list(((gateway or {}).get("spec") or {}).get("listeners") or [])
    return [listener for listener in listeners if section is None or listener.get("name") == section]


def _namespace_allowed(
    listener: Mapping[str, Any], route_namespace: str, gateway_namespace: str, namespaces: Mapping[str, Any]
) -> bool:
    allowed = (listener.get("allowedRoutes") or {}).get("namespaces") or {}
    origin = allowed.get("from", "Same")
    if origin == "All":
        return True
    if origin == "Same":
        return route_namespace == gateway_namespace
    if origin == "Selector":
        selector = match_labels(allowed.get("selector"))
        labels = ((namespaces.get(route_namespace) or {}).get("metadata") or {}).get("labels") or {}
        return selector is not None and selector.matches(labels)
    return False


def attachment(
    route: Mapping[str, Any],
    gateway_ref: GatewayRef | None,
    gateway: Mapping[str, Any] | None,
    namespaces: Mapping[str, Any],
) -> list[Mapping[str, Any]] | None:
    """The listeners the route attaches to (an empty list: any host), or None when it is not attached."""
    route_namespace = route["metadata"]["namespace"]
    listeners: list[Mapping[str, Any]] = []
    attached = False
    for ref in (route.get("spec") or {}).get("parentRefs") or []:
        if ref.get("group", GATEWAY_GROUP) != GATEWAY_GROUP or ref.get("kind", "Gateway") != "Gateway":
            continue
        namespace = ref.get("namespace", route_namespace)
        if gateway_ref is not None and (namespace, ref.get("name")) != (gateway_ref.namespace, gateway_ref.name):
            continue
        if gateway is None:
            attached = True
            continue
        for listener in _listeners(gateway, ref.get("sectionName")):
            if listener.get("protocol", "HTTP") in ("HTTP", "HTTPS") and _namespace_allowed(
                listener, route_namespace, namespace, namespaces
            ):
                listeners.append(listener)
                attached = True
    return listeners if attached else None


# -- matching ---------------------------------------------------------------------------------------


def hostname_matches(pattern: str, host: str) -> bool:
    pattern = pattern.lower()
    if pattern.startswith("*."):
        suffix = pattern[1:]
        return host.endswith(suffix) and len(host) > len(suffix)
    return host == pattern


def _host_rank(route: Mapping[str, Any], listeners: Sequence[Mapping[str, Any]], host: str) -> tuple[int, int] | None:
    """(characters of the matching non-wildcard hostname, characters of the matching hostname); None: no match."""
    if listeners and not any(
        not listener.get("hostname") or hostname_matches(str(listener["hostname"]), host) for listener in listeners
    ):
        return None
    hostnames = (route.get("spec") or {}).get("hostnames") or []
    if not hostnames:
        return (0, 0)
    ranks = [
        (0 if name.startswith("*.") else len(name), len(name))
        for name in map(str, hostnames)
        if hostname_matches(name, host)
    ]
    return max(ranks) if ranks else None


def _path_rank(match: Mapping[str, Any], path: str) -> tuple[int, int] | None:
    """(kind: 0 Exact, 1 PathPrefix, 2 RegularExpression; -length) for a matching path, else None."""
    wanted = match.get("path") or {"type": "PathPrefix", "value": "/"}
    kind, value = wanted.get("type", "PathPrefix"), str(wanted.get("value", "/"))
    if kind == "Exact":
        return (0, -len(value)) if path == value else None
    if kind == "RegularExpression":
        return (2, -len(value)) if re.fullmatch(value, path) else None
    prefix = value.rstrip("/")
    if not prefix or path == prefix or path.startswith(prefix + "/"):
        return (1, -len(prefix))
    return None


def _value_matches(wanted: Mapping[str, Any], actual: str | None) -> bool:
    if actual is None:
        return False
    if wanted.get("type", "Exact") == "RegularExpression":
        return re.fullmatch(str(wanted["value"]), actual) is not None
    return actual == str(wanted["value"])


def match_rank(match: Mapping[str, Any], request: HttpRequest) -> tuple[int, ...] | None:
    """The precedence of one match for this request (lower is better), None when it does not match."""
    path = _path_rank(match, request.path)
    if path is None:
        return None
    method = match.get("method")
    if method and method.upper() != request.method:
        return None
    headers = match.get("headers") or []
    if not all(_value_matches(h, request.headers.get(str(h["name"]).lower())) for h in headers):
        return None
    query = match.get("queryParams") or []
    if not all(_value_matches(q, request.query.get(str(q["name"]))) for q in query):
        return None
    return (*path, 0 if method else 1, -len(headers), -len(query))


def decide(
    routes: Sequence[Mapping[str, Any]],
    request: HttpRequest,
    *,
    gateway_ref: GatewayRef | None = None,
    gateway: Mapping[str, Any] | None = None,
    namespaces: Mapping[str, Any] | None = None,
    rng: random.Random | None = None,
) -> Decision:
    """The one rule of all attached routes that serves `request`, its filters applied and a backend picked."""
    candidates = []
    for route in routes:
        listeners = attachment(route, gateway_ref, gateway, namespaces or {})
        if listeners is None:
            continue
        host = _host_rank(route, listeners, request.host)
        if host is None:
            continue
        meta = route["metadata"]
        tie = (meta.get("creationTimestamp", ""), f"{meta['namespace']}/{meta['name']}")
        for rule_index, rule in enumerate((route.get("spec") or {}).get("rules") or []):
            for match_index, match in enumerate(rule.get("matches") or [{}]):
                rank = match_rank(match, request)
                if rank is not None:
                    key = (-host[0], -host[1], *rank, *tie, rule_index, match_index)
                    candidates.append((key, route, rule_index, match))
    if not candidates:
        raise NoRoute(404, f"no HTTPRoute attached to the Gateway matches {request.host}{request.path}")
    _, route, rule_index, match = min(candidates, key=lambda c: c[0])
    rule = route["spec"]["rules"][rule_index]
    return _forward(route, rule_index, rule, match, request, rng or random.Random())


# -- filters and backends -----------------------------------------------------------------------------


def modify_headers(headers: dict[str, str], modifier: Mapping[str, Any]) -> None:
    for item in modifier.get("set") or []:
        headers[str(item["name"]).lower()] = str(item["value"])
    for item in modifier.get("add") or []:
        name = str(item["name"]).lower()
        headers[name] = f"{headers[name]},{item['value']}" if name in headers else str(item["value"])
    for name in modifier.get("remove") or []:
        headers.pop(str(name).lower(), None)


def _rewrite(path: str, match: Mapping[str, Any], rewrite: Mapping[str, Any]) -> str:
    kind = rewrite.get("type")
    if kind == "ReplaceFullPath":
        return str(rewrite.get("replaceFullPath", "/"))
    if kind == "ReplacePrefixMatch":
        matched = str((match.get("path") or {}).get("value", "/")).rstrip("/")
        replacement = str(rewrite.get("replacePrefixMatch", "/"))
        return (replacement.rstrip("/") + path[len(matched) :]) or "/"
    raise NoRoute(500, f"unsupported URLRewrite path type {kind!r}")


def _apply_filters(
    filters: Sequence[Mapping[str, Any]],
    match: Mapping[str, Any],
    state: dict[str, Any],
) -> tuple[int, str] | None:
    """Apply filters to `state` (path, host, headers, response_modifiers); a redirect ends the request."""
    for item in filters:
        kind = item.get("type")
        if kind == "RequestHeaderModifier":
            modify_headers(state["headers"], item.get("requestHeaderModifier") or {})
        elif kind == "ResponseHeaderModifier":
            state["response_modifiers"].append(item.get("responseHeaderModifier") or {})
        elif kind == "URLRewrite":
            rewrite = item.get("urlRewrite") or {}
            if rewrite.get("hostname"):
                state["host"] = str(rewrite["hostname"])
            if rewrite.get("path"):
                state["path"] = _rewrite(state["path"], match, rewrite["path"])
        elif kind == "RequestRedirect":
            redirect = item.get("requestRedirect") or {}
            path = _rewrite(state["path"], match, redirect["path"]) if redirect.get("path") else state["path"]
            host = redirect.get("hostname", state["host"])
            location = f"{redirect.get('scheme', 'http')}://{host}" + (
                f":{redirect['port']}" if redirect.get("port") else ""
            )
            return int(redirect.get("statusCode", 302)), location + path
        else:
            raise NoRoute(500, f"unsupported filter {kind!r}")
    return None


def _pick_backend(refs: Sequence[Mapping[str, Any]], rng: random.Random) -> Mapping[str, Any]:
    weighted = [r for r in refs if int(r.get("weight", 1)) > 0]
    if not weighted:
        raise NoRoute(500, "the rule has no backend with a positive weight")
    return rng.choices(weighted, weights=[int(r.get("weight", 1)) for r in weighted])[0]


def _forward(
    route: Mapping[str, Any],
    rule_index: int,
    rule: Mapping[str, Any],
    match: Mapping[str, Any],
    request: HttpRequest,
    rng: random.Random,
) -> Decision:
    state: dict[str, Any] = {
        "path": request.path,
        "host": request.host,
        "headers": dict(request.headers),
        "response_modifiers": [],
    }
    redirect = _apply_filters(rule.get("filters") or [], match, state)
    if redirect is not None:
        return Decision(route, rule_index, None, state["path"], state["host"], state["headers"], [], redirect)
    backend = _pick_backend(rule.get("backendRefs") or [], rng)
    if backend.get("kind", "Service") != "Service" or backend.get("group", ""):
        raise NoRoute(500, f"unsupported backend {dict(backend)!r}")
    if backend.get("port") is None:
        raise NoRoute(500, f"backend {backend.get('name')!r}: a Service backend needs a port")
    if backend.get("namespace", route["metadata"]["namespace"]) != route["metadata"]["namespace"]:
        raise NoRoute(500, "a backend in another namespace needs a ReferenceGrant; the test Gateway has none")
    _apply_filters(backend.get("filters") or [], match, state)
    return Decision(
        route, rule_index, backend, state["path"], state["host"], state["headers"], state["response_modifiers"]
    )


__all__ = [
    "Decision",
    "GatewayRef",
    "HttpRequest",
    "NoRoute",
    "attachment",
    "decide",
    "hostname_matches",
    "match_rank",
    "modify_headers",
]
