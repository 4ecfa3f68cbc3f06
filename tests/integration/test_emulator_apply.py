"""Server-side apply and field management in the emulated API server, as documented.

https://kubernetes.io/docs/reference/using-api/server-side-apply/: apply creates
the object; every manager's fields are recorded in metadata.managedFields
(FieldsV1); fields a manager stops sending are removed unless another manager
owns them; changing a field another manager owns is a 409 conflict unless
forced; lists merge by their schema's keys (containers and env by name, Service
ports by port and protocol) or are atomic; PUT and non-apply patches record
their manager with operation Update; the status subresource applies separately.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml

from tests.integration.harness.client import resource_path
from tests.integration.harness.cluster import Cluster
from tests.integration.harness.rawapi import APPLY, JSON_PATCH, MERGE, STRATEGIC, RawApi

DEPLOYMENTS = ("apps", "v1", "deployments")
SERVICES = ("", "v1", "services")
MV = ("serving.modelfleet.dev", "v1alpha1", "modelversions")


@pytest.fixture
async def api(cluster: Cluster) -> AsyncIterator[RawApi]:
    async with RawApi(cluster.url, user_agent="test-client/1.0") as raw:
        yield raw
    # A client of its own User-Agent is recorded like the operator; these requests are not the operator's
    # and must not reach the RBAC replay of the chart.
    cluster.emulator.recorded.clear()
    cluster.emulator.recorded_requests.clear()


def deployment(**spec: Any) -> dict[str, Any]:
    container = {"name": "runtime", "image": "ghcr.io/modelfleet/runtime:1", **spec.pop("container", {})}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "labels": spec.pop("labels", {"app": "web"})},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [container]}},
            **spec,
        },
    }


WEB = resource_path(*DEPLOYMENTS, "ml", "web")


def entry(obj: dict[str, Any], manager: str, operation: str = "Apply") -> dict[str, Any] | None:
    return next(
        (
            e
            for e in obj["metadata"].get("managedFields") or []
            if e["manager"] == manager and e["operation"] == operation
        ),
        None,
    )


def container(obj: dict[str, Any]) -> dict[str, Any]:
    [first] = obj["spec"]["template"]["spec"]["containers"]
    return first


async def test_apply_creates_the_object_and_records_what_its_manager_sent(api: RawApi) -> None:
    status, created = await api.apply(WEB, deployment(replicas=2), "modelfleet")
    assert status == 201, created
    assert created["metadata"]["uid"] and created["spec"]["replicas"] == 2
    mine = entry(created, "modelfleet")
    assert mine is not None and mine["fieldsType"] == "FieldsV1" and mine["apiVersion"] == "apps/v1"
    fields = mine["fieldsV1"]
    assert fields["f:metadata"] == {"f:labels": {"f:app": {}}}  # no name, uid, ...: those are the server's
    assert fields["f:spec"]["f:replicas"] == {}
    assert fields["f:spec"]["f:selector"] == {}  # a LabelSelector is atomic
    runtime = fields["f:spec"]["f:template"]["f:spec"]["f:containers"]['k:{"name":"runtime"}']
    assert runtime == {".": {}, "f:image": {}, "f:name": {}}
    # Defaults the server added are nobody's.
    assert container(created)["imagePullPolicy"] and "f:imagePullPolicy" not in runtime


async def test_the_same_apply_again_changes_nothing(api: RawApi, cluster: Cluster) -> None:
    _, first = await api.apply(WEB, deployment(), "modelfleet")
    status, second = await api.apply(WEB, deployment(), "modelfleet")
    assert status == 200
    assert second["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert second["metadata"]["generation"] == 1


async def test_a_field_the_manager_no_longer_sends_is_removed(api: RawApi) -> None:
    limited = deployment(container={"resources": {"limits": {"cpu": "1"}, "requests": {"cpu": "500m"}}})
    await api.apply(WEB, limited, "modelfleet")
    status, after = await api.apply(
        WEB, deployment(container={"resources": {"requests": {"cpu": "500m"}}}), "modelfleet"
    )
    assert status == 200
    assert container(after)["resources"] == {"requests": {"cpu": "500m"}}
    assert after["metadata"]["generation"] == 2
    # ... and everything below a field that is no longer sent.
    _, bare = await api.apply(WEB, deployment(), "modelfleet")
    assert container(bare)["resources"] == {}  # the struct stays, as a real server shows it


async def test_fields_of_other_managers_are_kept(api: RawApi) -> None:
    await api.apply(WEB, deployment(labels={"app": "web", "team": "fraud"}), "modelfleet")
    other = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"owner": "ops"}}}
    status, body = await api.apply(WEB, other, "ops-tool")
    assert status == 200, body
    _, after = await api.apply(WEB, deployment(labels={"app": "web"}), "modelfleet")
    assert after["metadata"]["labels"] == {"app": "web", "owner": "ops"}
    assert entry(after, "ops-tool")["fieldsV1"] == {"f:metadata": {"f:labels": {"f:owner": {}}}}


async def test_changing_a_field_another_manager_owns_is_a_conflict_unless_forced(api: RawApi) -> None:
    _, created = await api.apply(WEB, deployment(replicas=2), "modelfleet")
    hpa = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 5}}
    status, body = await api.apply(WEB, hpa, "autoscaler")
    assert status == 409 and body["reason"] == "Conflict", body
    assert body["details"]["causes"] == [
        {"reason": "FieldManagerConflict", "message": 'conflict with "modelfleet"', "field": ".spec.replicas"}
    ]
    assert body["message"] == 'Apply failed with 1 conflict: conflict with "modelfleet": .spec.replicas'
    _, unchanged = await api.call("GET", WEB)
    assert unchanged["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]

    status, forced = await api.apply(WEB, hpa, "autoscaler", force=True)
    assert status == 200 and forced["spec"]["replicas"] == 5
    assert entry(forced, "autoscaler")["fieldsV1"] == {"f:spec": {"f:replicas": {}}}
    assert "f:replicas" not in entry(forced, "modelfleet")["fieldsV1"]["f:spec"]
    # Now the first manager's apply of its old value conflicts the other way round.
    status, body = await api.apply(WEB, deployment(replicas=2), "modelfleet")
    assert status == 409 and body["details"]["causes"][0]["message"] == 'conflict with "autoscaler"'


async def test_two_managers_that_apply_the_same_value_share_the_field(api: RawApi) -> None:
    await api.apply(WEB, deployment(replicas=2), "modelfleet")
    same = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 2}}
    status, shared = await api.apply(WEB, same, "ops-tool")
    assert status == 200, shared
    # The first stops sending it: the other still owns it, so it stays.
    _, after = await api.apply(WEB, deployment(), "modelfleet")
    assert after["spec"]["replicas"] == 2
    # The second stops too: nobody owns it, and the server's default comes back.
    _, gone = await api.apply(WEB, {**same, "spec": {}}, "ops-tool")
    assert gone["spec"]["replicas"] == 1


async def test_a_merge_patch_records_its_manager_as_an_update_that_an_apply_then_conflicts_with(
    api: RawApi,
) -> None:
    await api.apply(WEB, deployment(replicas=2), "modelfleet")
    status, patched = await api.call("PATCH", WEB, {"spec": {"replicas": 3}}, content_type=MERGE)
    assert status == 200
    # Without ?fieldManager the manager is the User-Agent up to its first "/".
    update = entry(patched, "test-client", "Update")
    assert update is not None and update["fieldsV1"] == {"f:spec": {"f:replicas": {}}} and update["time"]
    assert "f:replicas" not in entry(patched, "modelfleet")["fieldsV1"]["f:spec"]
    status, body = await api.apply(WEB, deployment(replicas=2), "modelfleet")
    assert status == 409
    assert body["details"]["causes"][0]["message"] == 'conflict with "test-client" using apps/v1'
    # ?fieldManager names it explicitly, for JSON patches too.
    ops = [{"op": "replace", "path": "/spec/replicas", "value": 4}]
    status, body = await api.call("PATCH", WEB, ops, content_type=JSON_PATCH, params={"fieldManager": "scaler"})
    assert status == 200 and entry(body, "scaler", "Update")["fieldsV1"] == {"f:spec": {"f:replicas": {}}}


async def test_keyed_lists_merge_item_by_item_and_atomic_lists_are_replaced(api: RawApi) -> None:
    first = deployment(container={"env": [{"name": "A", "value": "1"}], "args": ["serve", "--demo"]})
    await api.apply(WEB, first, "modelfleet")
    sidecar = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "template": {
                "spec": {"containers": [{"name": "runtime", "env": [{"name": "B", "value": "2"}]}]},
            }
        },
    }
    status, body = await api.apply(WEB, sidecar, "injector")
    assert status == 200, body
    assert container(body)["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    # The first manager drops A and changes the args: B (another manager's) stays, args are replaced whole.
    second = deployment(container={"args": ["serve"]})
    _, after = await api.apply(WEB, second, "modelfleet")
    assert container(after)["env"] == [{"name": "B", "value": "2"}]
    assert container(after)["args"] == ["serve"]


async def test_service_ports_are_keyed_by_port_and_protocol(api: RawApi) -> None:
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "fraud"},
        "spec": {"selector": {"app": "fraud"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }
    status, created = await api.apply(resource_path(*SERVICES, "ml", "fraud"), svc, "modelfleet")
    assert status == 201, created
    ports = created["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"]["f:ports"]
    assert list(ports) == ['k:{"port":80,"protocol":"TCP"}']  # the defaulted protocol is part of the key
    grpc = copy.deepcopy(svc)
    grpc["spec"] = {"ports": [{"name": "grpc", "port": 81, "targetPort": 8081}]}
    _, both = await api.apply(resource_path(*SERVICES, "ml", "fraud"), grpc, "grpc-addon")
    assert [p["name"] for p in both["spec"]["ports"]] == ["http", "grpc"]


async def test_the_status_subresource_applies_only_the_status(api: RawApi, cluster: Cluster) -> None:
    await api.apply(WEB, deployment(replicas=2), "modelfleet")
    status_config = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": 9},
        "status": {"replicas": 2, "readyReplicas": 1},
    }
    status, body = await api.apply(WEB + "/status", status_config, "kubelet")
    assert status == 200, body
    assert body["spec"]["replicas"] == 2 and body["status"]["readyReplicas"] == 1
    kubelet = entry(body, "kubelet")
    assert kubelet["subresource"] == "status"
    assert kubelet["fieldsV1"] == {"f:status": {"f:readyReplicas": {}, "f:replicas": {}}}
    # The main resource ignores status in an apply, and a status apply to nothing is 404.
    _, main = await api.apply(WEB, {**deployment(replicas=2), "status": {"replicas": 7}}, "modelfleet")
    assert main["status"]["replicas"] == 2
    nothing = {**status_config, "metadata": {"name": "nothing"}}
    status, _ = await api.apply(resource_path(*DEPLOYMENTS, "ml", "nothing", "status"), nothing, "kubelet")
    assert status == 404


async def test_a_custom_resource_merges_by_its_crd_schema(api: RawApi) -> None:
    mv = {
        "apiVersion": "serving.modelfleet.dev/v1alpha1",
        "kind": "ModelVersion",
        "metadata": {"name": "fraud-v1"},
        "spec": {"model": "fraud", "version": "1", "source": {"uri": "https://models.example.com/m.onnx"}},
    }
    path = resource_path(*MV, "ml", "fraud-v1")
    status, created = await api.apply(path, mv, "user")
    assert status == 201, created

    def conditions(kind: str) -> dict[str, Any]:
        return {
            "apiVersion": mv["apiVersion"],
            "kind": "ModelVersion",
            "metadata": {"name": "fraud-v1"},
            "status": {"conditions": [{"type": kind, "status": "True", "reason": "Test", "message": ""}]},
        }

    await api.apply(path + "/status", conditions("Available"), "operator")
    _, both = await api.apply(path + "/status", conditions("TrafficAssigned"), "traffic")
    # status.conditions is a map keyed by type in the CRD: two managers' conditions live side by side.
    assert [c["type"] for c in both["status"]["conditions"]] == ["Available", "TrafficAssigned"]


async def test_apply_takes_yaml_and_checks_what_it_is_given(api: RawApi) -> None:
    body = yaml.safe_dump(deployment())
    status, created = await api.call("PATCH", WEB, body, content_type=APPLY, params={"fieldManager": "kubectl"})
    assert status == 201 and created["metadata"]["name"] == "web"
    status, body = await api.call("PATCH", WEB, deployment(), content_type=APPLY)
    assert status == 422 and "fieldManager" in body["message"]
    status, body = await api.call("PATCH", WEB, {"spec": {"replicas": 3}}, content_type=MERGE, params={"force": "true"})
    assert status == 422 and "force" in body["message"]
    status, _ = await api.apply(WEB, {**deployment(), "kind": "StatefulSet"}, "kubectl")
    assert status == 400
    status, _ = await api.apply(resource_path(*DEPLOYMENTS, "ml", "other"), deployment(), "kubectl")
    assert status == 400  # the name in the body is not the name in the URL
    stale = deployment()
    stale["metadata"]["resourceVersion"] = "1"
    status, body = await api.apply(WEB, stale, "kubectl")
    assert status == 409 and body["reason"] == "Conflict"
    status, _ = await api.call("PATCH", WEB, {"spec": {"replicas": 3}}, content_type=STRATEGIC)
    assert status == 415


async def test_an_injected_error_answers_an_apply_and_changes_nothing(api: RawApi, cluster: Cluster) -> None:
    _, created = await api.apply(WEB, deployment(replicas=1), "modelfleet")
    fault = cluster.emulator.inject_error(500, verb="patch", plural="deployments")
    status, _ = await api.apply(WEB, deployment(replicas=3), "modelfleet")
    assert status == 500 and fault.hits == 1
    _, now = await api.call("GET", WEB)
    assert now["spec"]["replicas"] == 1 and now["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


async def test_put_replaces_the_object_and_records_its_manager(api: RawApi) -> None:
    _, created = await api.apply(WEB, deployment(replicas=2), "modelfleet")
    replaced = copy.deepcopy(created)
    replaced["spec"]["replicas"] = 4
    status, body = await api.call("PUT", WEB, replaced, params={"fieldManager": "editor"})
    assert status == 200 and body["spec"]["replicas"] == 4
    assert entry(body, "editor", "Update")["fieldsV1"] == {"f:spec": {"f:replicas": {}}}
    status, body = await api.call("PUT", WEB, replaced)  # the resourceVersion it carries is stale now
    assert status == 409


async def test_reapplying_quantities_in_another_spelling_is_no_change(api: RawApi) -> None:
    spelled = deployment(container={"resources": {"limits": {"cpu": 1, "memory": "1024Mi"}}})
    _, first = await api.apply(WEB, spelled, "modelfleet")
    assert container(first)["resources"]["limits"] == {"cpu": "1", "memory": "1Gi"}
    _, again = await api.apply(WEB, spelled, "modelfleet")
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
