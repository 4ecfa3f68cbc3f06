"""RBAC arithmetic for the chart tests: what a rendered role grants, and
whether a log of API requests needs exactly that.

The integration tests run the real operator against an emulated API server
that records every request. Turn each recorded request into a
`(verb, group, resource)` triple with `request_from_http`, then
`check_requests(requests, roles)` says which requests the chart's RBAC would
refuse (missing) and which grants no request used (unused).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

# (verb, apiGroup, resource) where resource may be "resource/subresource".
Grant = tuple[str, str, str]

ROLE_KINDS = frozenset({"ClusterRole", "Role"})

# Grants that no recorded request can prove, kept on purpose. The emulated API
# server has no admission plugins, so it never asks for these.
IMPLICIT_GRANTS: frozenset[Grant] = frozenset(
    {
        # OwnerReferencesPermissionEnforcement (on in OpenShift) requires update on
        # the owner's finalizers to set blockOwnerDeletion, which kopf.adopt() sets.
        ("update", "serving.modelfleet.dev", "modelversions/finalizers"),
    }
)


def grants(roles: Iterable[Mapping[str, Any]]) -> set[Grant]:
    """Every (verb, apiGroup, resource) the rules of these ClusterRoles/Roles grant.

    Objects of other kinds are ignored, so a whole `helm template` output can be
    passed. Wildcards are kept literally ("*"); `test_no_rule_uses_a_wildcard`
    makes sure there are none.
    """
    result: set[Grant] = set()
    for role in roles:
        if role.get("kind") not in ROLE_KINDS:
            continue
        for rule in role.get("rules") or []:
            if rule.get("nonResourceURLs"):
                continue
            for verb in rule.get("verbs") or []:
                for group in rule.get("apiGroups") or []:
                    for resource in rule.get("resources") or []:
                        result.add((verb, group, resource))
    return result


def _normalise(request: Any) -> Grant:
    """One request -> (verb, group, "resource[/subresource]").

    Accepts a (verb, group, resource[, subresource]) tuple, a mapping or an
    object with `verb`, `api_group` (or `group`), `resource` and `subresource`
    (the integration harness's `ApiRequest`, or its `as_dict()` / JSON dump).
    """
    if isinstance(request, Mapping):
        fields = request
    elif hasattr(request, "verb") and hasattr(request, "resource"):
        fields = (
            vars(request)
            if hasattr(request, "__dict__")
            else {
                name: getattr(request, name)
                for name in ("verb", "api_group", "group", "resource", "subresource")
                if hasattr(request, name)
            }
        )
    else:
        verb, group, resource, *rest = request
        fields = {"verb": verb, "group": group, "resource": resource, "subresource": rest[0] if rest else None}
    verb = fields["verb"]
    group = fields.get("api_group", fields.get("group"))
    resource = fields["resource"]
    subresource = fields.get("subresource")
    if group in ("v1", "core", None):  # the core group is "" in RBAC
        group = ""
    if subresource:
        resource = f"{resource}/{subresource}"
    return (str(verb), str(group), str(resource))


def check_requests(
    requests: Iterable[Any],
    role: Iterable[Mapping[str, Any]] | set[Grant],
    *,
    implicit: frozenset[Grant] = IMPLICIT_GRANTS,
) -> tuple[set[Grant], set[Grant]]:
    """Compare the requests an operator made with what `role` grants.

    `requests` holds (verb, group, resource[, subresource]) tuples or the
    integration harness's recorded requests (objects or dicts with `verb`,
    `api_group`, `resource`, `subresource`); `role` is rendered role objects or a set from
    `grants()`. Returns (missing, unused): requests the role would refuse, and
    grants no request used (minus the `implicit` ones).
    """
    granted = role if isinstance(role, set) else grants(role)
    used = {_normalise(request) for request in requests}
    missing = {request for request in used if request not in granted}
    unused = granted - used - implicit
    return missing, unused


def request_from_http(method: str, url: str) -> Grant | None:
    """The RBAC (verb, group, resource) of one HTTP request to the API server.

    Returns None for discovery and other non-resource paths (/api, /apis,
    /apis/GROUP/VERSION, /version, /healthz), which every authenticated user
    may read.
    """
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    query = parse_qs(parts.query)
    if not segments:
        return None
    if segments[0] == "api" and len(segments) > 2:
        group, rest = "", segments[2:]
    elif segments[0] == "apis" and len(segments) > 3:
        group, rest = segments[1], segments[3:]
    else:
        return None

    # Namespaced paths: /namespaces/NS/RESOURCE[/NAME[/SUB]]. The namespace
    # object itself: /namespaces[/NAME[/status|finalize]].
    is_namespace_object = rest[0] == "namespaces" and (
        len(rest) <= 2 or (group == "" and len(rest) == 3 and rest[2] in ("status", "finalize"))
    )
    if rest[0] == "namespaces" and not is_namespace_object:
        rest = rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else None
    subresource = rest[2] if len(rest) > 2 else None

    method = method.upper()
    if method == "GET":
        if name:
            verb = "get"
        elif query.get("watch", ["false"])[0].lower() in ("true", "1"):
            verb = "watch"
        else:
            verb = "list"
    elif method == "POST":
        verb = "create"
    elif method == "PUT":
        verb = "update"
    elif method == "PATCH":
        verb = "patch"
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        raise ValueError(f"unexpected HTTP method {method!r} for {url}")
    return _normalise((verb, group, resource, subresource))
