"""The emulated API server's lists and watches select as a real one does.

Label selectors (equality- and set-based), field selectors on metadata.name and
metadata.namespace, on lists and on watches (an object that stops matching is
seen as DELETED, one that starts matching as ADDED), pagination over one
snapshot, and watches resumed from a resourceVersion — as documented in
https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/ and
https://kubernetes.io/docs/reference/using-api/api-concepts/.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.integration.harness.client import resource_path
from tests.integration.harness.cluster import Cluster
from tests.integration.harness.rawapi import MERGE, RawApi
from tests.integration.harness.selectors import SelectorError, parse_label_selector

CONFIGMAPS = ("", "v1", "configmaps")


@pytest.fixture
async def api(cluster: Cluster) -> AsyncIterator[RawApi]:
    async with RawApi(cluster.url) as raw:
        await raw.call("POST", resource_path("", "v1", "namespaces"), {"metadata": {"name": "other"}})
        yield raw


async def make(api: RawApi, name: str, labels: dict[str, str], namespace: str = "ml") -> dict[str, Any]:
    status, body = await api.call(
        "POST", resource_path(*CONFIGMAPS, namespace), {"metadata": {"name": name, "labels": labels}}
    )
    assert status == 201, body
    return body


async def names(api: RawApi, namespace: str | None = "ml", **params: str) -> list[str]:
    status, body = await api.call("GET", resource_path(*CONFIGMAPS, namespace), params=params)
    assert status == 200, body
    return [item["metadata"]["name"] for item in body["items"]]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("app=fraud", ["a", "b"]),
        ("app==fraud", ["a", "b"]),
        ("app!=fraud", ["c", "d"]),  # also those without the label
        ("app in (fraud, churn)", ["a", "b", "c"]),
        ("app notin (fraud)", ["c", "d"]),
        ("tier", ["a"]),
        ("!tier", ["b", "c", "d"]),
        ("app=fraud,tier=web", ["a"]),
        ("app in (fraud),!tier", ["b"]),
        ("rank>1", ["b"]),
        ("rank<2", ["a"]),
        ("", ["a", "b", "c", "d"]),
    ],
)
async def test_a_list_returns_only_the_objects_its_label_selector_selects(
    api: RawApi, selector: str, expected: list[str]
) -> None:
    await make(api, "b", {"app": "fraud", "rank": "2"})
    await make(api, "a", {"app": "fraud", "tier": "web", "rank": "1"})
    await make(api, "c", {"app": "churn"})
    await make(api, "d", {})
    assert await names(api, labelSelector=selector) == expected  # sorted by name, as etcd returns them


@pytest.mark.parametrize("bad", ["app=", "app in ()", "app in fraud", "=x", "a b", "app=(x)", "-bad-=x", "a,"])
def test_a_selector_that_does_not_parse_is_an_error_not_a_match_everything(bad: str) -> None:
    if bad == "app=":
        assert parse_label_selector(bad).matches({"app": ""})  # `app=` selects the empty value, as in Go
        return
    with pytest.raises(SelectorError):
        parse_label_selector(bad)


async def test_a_bad_selector_answers_400_on_list_and_on_watch(api: RawApi) -> None:
    status, body = await api.call("GET", resource_path(*CONFIGMAPS, "ml"), params={"labelSelector": "app in fraud"})
    assert status == 400 and body["reason"] == "BadRequest"
    status, body = await api.call("GET", resource_path(*CONFIGMAPS, "ml"), params={"fieldSelector": "spec.x=1"})
    assert status == 400 and "field label not supported" in body["message"]
    status, body = await api.call(
        "GET", resource_path(*CONFIGMAPS, "ml"), params={"watch": "true", "labelSelector": "a in ("}
    )
    assert status == 400


async def test_field_selectors_select_by_name_and_namespace(api: RawApi) -> None:
    await make(api, "a", {})
    await make(api, "b", {})
    await make(api, "a", {}, namespace="other")
    assert await names(api, fieldSelector="metadata.name=a") == ["a"]
    assert await names(api, fieldSelector="metadata.name!=a") == ["b"]
    assert await names(api, None, fieldSelector="metadata.name=a") == ["a", "a"]
    assert await names(api, None, fieldSelector="metadata.namespace=other") == ["a"]


async def test_pagination_serves_one_consistent_snapshot(api: RawApi) -> None:
    for name in "edcba":
        await make(api, name, {})
    status, first = await api.call("GET", resource_path(*CONFIGMAPS, "ml"), params={"limit": "2"})
    assert status == 200 and [i["metadata"]["name"] for i in first["items"]] == ["a", "b"]
    assert first["metadata"]["remainingItemCount"] == 3
    # A change between pages is not seen: the pages are one list at one resourceVersion.
    await make(api, "aa", {})
    await api.call("DELETE", resource_path(*CONFIGMAPS, "ml", "e"))
    token = first["metadata"]["continue"]
    _, second = await api.call("GET", resource_path(*CONFIGMAPS, "ml"), params={"limit": "2", "continue": token})
    _, third = await api.call(
        "GET", resource_path(*CONFIGMAPS, "ml"), params={"limit": "2", "continue": second["metadata"]["continue"]}
    )
    assert [i["metadata"]["name"] for i in second["items"] + third["items"]] == ["c", "d", "e"]
    assert "continue" not in third["metadata"]
    assert second["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    status, body = await api.call("GET", resource_path(*CONFIGMAPS, "ml"), params={"continue": "garbage"})
    assert status == 400, body


async def test_a_watch_with_a_selector_sees_objects_enter_and_leave_the_selection(api: RawApi) -> None:
    await make(api, "in", {"app": "fraud"})
    await make(api, "out", {"app": "churn"})
    async with api.watch(resource_path(*CONFIGMAPS, "ml"), {"labelSelector": "app=fraud"}) as stream:
        assert stream.status == 200
        first = await stream.next()
        assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "in")

        # An object that starts matching arrives as ADDED, one that stops as DELETED.
        await api.call(
            "PATCH",
            resource_path(*CONFIGMAPS, "ml", "out"),
            {"metadata": {"labels": {"app": "fraud"}}},
            content_type=MERGE,
        )
        event = await stream.next()
        assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "out")
        _, left = await api.call(
            "PATCH",
            resource_path(*CONFIGMAPS, "ml", "in"),
            {"metadata": {"labels": {"app": "churn"}}},
            content_type=MERGE,
        )
        event = await stream.next()
        assert (event["type"], event["object"]["metadata"]["name"]) == ("DELETED", "in")
        # ... with its last matching content at the event's resourceVersion.
        assert event["object"]["metadata"]["labels"] == {"app": "fraud"}
        assert event["object"]["metadata"]["resourceVersion"] == left["metadata"]["resourceVersion"]

        # Changes outside the selection are not seen: the next event is the next matching one.
        await api.call("PATCH", resource_path(*CONFIGMAPS, "ml", "in"), {"data": {"x": "1"}}, content_type=MERGE)
        await make(api, "late", {"app": "churn"})
        await make(api, "sentinel", {"app": "fraud"})
        event = await stream.next()
        assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "sentinel")


async def test_a_watch_resumed_from_a_resource_version_replays_every_event_after_it(api: RawApi) -> None:
    created = await make(api, "a", {})
    await make(api, "b", {})
    await api.call("PATCH", resource_path(*CONFIGMAPS, "ml", "a"), {"data": {"x": "1"}}, content_type=MERGE)
    await api.call("DELETE", resource_path(*CONFIGMAPS, "ml", "b"))
    params = {"resourceVersion": created["metadata"]["resourceVersion"]}
    async with api.watch(resource_path(*CONFIGMAPS, "ml"), params) as stream:
        seen = [await stream.next() for _ in range(3)]
    # A deletion while the client was away is replayed too (kopf would otherwise never see it).
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in seen] == [
        ("ADDED", "b"),
        ("MODIFIED", "a"),
        ("DELETED", "b"),
    ]


async def test_a_watch_from_a_resource_version_no_longer_kept_answers_410_expired(
    api: RawApi, cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster.emulator._log.clear()
    monkeypatch.setattr("tests.integration.harness.emulator.WATCH_LOG_EVENTS", 2)
    first = await make(api, "a", {})
    for name in "bcd":
        await make(api, name, {})
    async with api.watch(
        resource_path(*CONFIGMAPS, "ml"), {"resourceVersion": first["metadata"]["resourceVersion"]}
    ) as stream:
        event = await stream.next()
    assert event["type"] == "ERROR" and event["object"]["code"] == 410


async def test_initial_events_end_with_a_bookmark_when_asked_for(api: RawApi) -> None:
    await make(api, "a", {})
    params = {"sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan", "allowWatchBookmarks": "true"}
    async with api.watch(resource_path(*CONFIGMAPS, "ml"), params) as stream:
        added, bookmark = await stream.next(), await stream.next()
    assert added["type"] == "ADDED" and added["object"]["metadata"]["name"] == "a"
    assert bookmark["type"] == "BOOKMARK"
    assert bookmark["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
