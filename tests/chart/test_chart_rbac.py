"""The chart's RBAC is least privilege: no wildcards, exactly the rules the
operator and kopf use, cluster-wide only when watching all namespaces."""

from __future__ import annotations

import pytest

from tests.chart.chart_render import VALUE_SETS, find
from tests.chart.rbac import check_requests, grants, request_from_http

# Children are watched, looked up once by name before they are first made, written by server-side apply.
APPLIED = {"get", "list", "watch", "patch"}

# Which Secrets carry the consumable label: a labelled list and watch, never a get.
CONSUMABLE_SECRETS = {("list", "", "secrets"), ("watch", "", "secrets")}
NETWORK_POLICIES = {(v, "networking.k8s.io", "networkpolicies") for v in APPLIED}
# What the operator does in a watched namespace (service routing, one replica); the
# integration suite's replay (tests/integration/test_zz_rbac_replay.py) proves each is used.
NAMESPACED = (
    {(v, "serving.modelfleet.dev", "modelversions") for v in ("list", "watch", "create", "patch")}
    | {("patch", "serving.modelfleet.dev", "modelversions/status")}
    | {("update", "serving.modelfleet.dev", "modelversions/finalizers")}
    | {(v, "apps", "deployments") for v in APPLIED}
    | {(v, "", "services") for v in APPLIED}
    | {(v, "autoscaling", "horizontalpodautoscalers") for v in APPLIED | {"delete"}}
    | {(v, "policy", "poddisruptionbudgets") for v in APPLIED | {"delete"}}
    | {(v, "batch", "jobs") for v in ("list", "watch", "create")}
    | {("list", "", "pods"), ("watch", "", "pods")}
    | {("list", "discovery.k8s.io", "endpointslices")}
    | {(v, "networking.k8s.io", "networkpolicies") for v in APPLIED}
    | {("create", "", "secrets")}
    | CONSUMABLE_SECRETS
    | {("create", "", "events")}
)
CRD_DISCOVERY = {
    ("list", "apiextensions.k8s.io", "customresourcedefinitions"),
    ("watch", "apiextensions.k8s.io", "customresourcedefinitions"),
}
NAMESPACE_DISCOVERY = {("list", "", "namespaces"), ("watch", "", "namespaces")}
# Gateway mode: the HTTPRoute and, where the cluster serves the kind, the GRPCRoute of each model.
ROUTES = {(v, "gateway.networking.k8s.io", plural) for v in APPLIED for plural in ("httproutes", "grpcroutes")}
CLUSTER_PEERING = {(v, "kopf.dev", "clusterkopfpeerings") for v in ("get", "list", "watch", "patch")}
NAMESPACED_PEERING = {(v, "kopf.dev", "kopfpeerings") for v in ("get", "list", "watch", "patch")}


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_no_rule_uses_a_wildcard(render, value_set: str) -> None:
    objects = render(VALUE_SETS[value_set])
    for role in find(objects, "ClusterRole") + find(objects, "Role"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                assert "*" not in rule.get(field, []), (role["metadata"], rule)
                assert not any("*" in item for item in rule.get(field, [])), (role["metadata"], rule)


def test_all_namespaces_grants_exactly_the_operators_rules_cluster_wide(render) -> None:
    objects = render(VALUE_SETS["default"])
    [cluster_role] = find(objects, "ClusterRole")
    assert grants([cluster_role]) == NAMESPACED | CRD_DISCOVERY
    [binding] = find(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == cluster_role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "modelfleet", "namespace": "modelfleet"}]


def test_gateway_routing_adds_http_and_grpc_routes_only(render) -> None:
    assert grants(find(render(VALUE_SETS["gateway"]), "ClusterRole")) == NAMESPACED | CRD_DISCOVERY | ROUTES


def test_several_replicas_add_cluster_peering_only(render) -> None:
    assert grants(find(render(VALUE_SETS["peering"]), "ClusterRole")) == NAMESPACED | CRD_DISCOVERY | CLUSTER_PEERING


def test_watch_namespaces_keep_object_rights_inside_those_namespaces(render) -> None:
    objects = render(VALUE_SETS["namespaced"])
    [cluster_role] = find(objects, "ClusterRole")
    # Only kopf's discovery stays cluster-wide, read-only.
    assert grants([cluster_role]) == CRD_DISCOVERY | NAMESPACE_DISCOVERY
    roles = find(objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml", "team-b"]
    for role in roles:
        assert grants([role]) == NAMESPACED
    bindings = find(objects, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["ml", "team-b"]
    for binding in bindings:
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "modelfleet"}
        assert binding["subjects"][0]["namespace"] == "modelfleet"


def test_namespaced_peering_is_granted_in_each_watched_namespace(render) -> None:
    objects = render(VALUE_SETS["namespaced-peering"])
    assert grants(find(objects, "ClusterRole")) == CRD_DISCOVERY | NAMESPACE_DISCOVERY
    [role] = find(objects, "Role")
    assert grants([role]) == NAMESPACED | NAMESPACED_PEERING


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_no_role_grants_get_on_secrets(render, value_set: str) -> None:
    # Issue 11, finding 9: the operator never reads a Secret by name (a create answering 409 means it is there).
    objects = render(VALUE_SETS[value_set])
    assert not {g for g in grants(objects) if g[1:] == ("", "secrets") and g[0] not in ("create", "list", "watch")}


def test_secret_listing_and_network_policies_go_with_their_settings(render) -> None:
    objects = render({"secretReferences": {"consumableLabel": ""}, "networkPolicy": {"models": False}})
    [cluster_role] = find(objects, "ClusterRole")
    assert grants([cluster_role]) == (NAMESPACED - CONSUMABLE_SECRETS - NETWORK_POLICIES) | CRD_DISCOVERY


def test_rbac_can_be_left_to_an_administrator(render) -> None:
    objects = render({"rbac": {"create": False}})
    for kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
        assert not find(objects, kind)


# The helpers the request-replay test (over the integration tests' request log) relies on.


@pytest.mark.parametrize(
    ("method", "url", "expected"),
    [
        (
            "GET",
            "/apis/serving.modelfleet.dev/v1alpha1/modelversions?watch=true&resourceVersion=1",
            ("watch", "serving.modelfleet.dev", "modelversions"),
        ),
        (
            "GET",
            "/apis/serving.modelfleet.dev/v1alpha1/namespaces/ml/modelversions",
            ("list", "serving.modelfleet.dev", "modelversions"),
        ),
        (
            "PATCH",
            "/apis/serving.modelfleet.dev/v1alpha1/namespaces/ml/modelversions/fraud-v2/status",
            ("patch", "serving.modelfleet.dev", "modelversions/status"),
        ),
        ("POST", "/apis/apps/v1/namespaces/ml/deployments", ("create", "apps", "deployments")),
        ("GET", "/api/v1/namespaces/ml/secrets/fraud-feedback-token", ("get", "", "secrets")),
        (
            "DELETE",
            "/apis/policy/v1/namespaces/ml/poddisruptionbudgets/fraud-v2",
            ("delete", "policy", "poddisruptionbudgets"),
        ),
        ("PUT", "/apis/apps/v1/namespaces/ml/deployments/fraud-v2/scale", ("update", "apps", "deployments/scale")),
        ("GET", "/api/v1/namespaces?watch=1", ("watch", "", "namespaces")),
        ("GET", "/api/v1/namespaces/ml", ("get", "", "namespaces")),
        (
            "GET",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            ("list", "apiextensions.k8s.io", "customresourcedefinitions"),
        ),
        ("PATCH", "/apis/kopf.dev/v1/clusterkopfpeerings/modelfleet", ("patch", "kopf.dev", "clusterkopfpeerings")),
        ("POST", "/api/v1/namespaces/ml/events", ("create", "", "events")),
        ("DELETE", "/apis/batch/v1/namespaces/ml/jobs", ("deletecollection", "batch", "jobs")),
        ("GET", "/apis", None),
        ("GET", "/api/v1", None),
        ("GET", "/apis/apps/v1", None),
        ("GET", "/version", None),
    ],
)
def test_http_requests_map_to_rbac_verbs(method: str, url: str, expected) -> None:
    assert request_from_http(method, url) == expected


def test_check_requests_reports_refused_and_unused_grants() -> None:
    role = {
        "kind": "ClusterRole",
        "rules": [
            {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "create", "delete"]},
            {"apiGroups": ["serving.modelfleet.dev"], "resources": ["modelversions/finalizers"], "verbs": ["update"]},
        ],
    }
    requests = [
        ("get", "apps", "deployments"),
        ("create", "apps", "deployments", None),
        ("patch", "apps", "deployments"),
        ("update", "v1", "services", "status"),
    ]
    missing, unused = check_requests(requests, [role])
    assert missing == {("patch", "apps", "deployments"), ("update", "", "services/status")}
    # The finalizers grant is implicit (admission plugins), so not reported as unused.
    assert unused == {("delete", "apps", "deployments")}


def test_check_requests_reads_the_harness_request_records() -> None:
    """The integration harness records dataclasses; their JSON dump gives dicts. Both work."""
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Recorded:
        verb: str
        api_group: str
        resource: str
        subresource: str
        namespace: str

    role = {
        "kind": "Role",
        "rules": [{"apiGroups": ["serving.modelfleet.dev"], "resources": ["modelversions/status"], "verbs": ["patch"]}],
    }
    recorded = Recorded("patch", "serving.modelfleet.dev", "modelversions", "status", "ml")
    assert check_requests([recorded], [role], implicit=frozenset()) == (set(), set())
    assert check_requests([dataclasses.asdict(recorded)], [role], implicit=frozenset()) == (set(), set())
