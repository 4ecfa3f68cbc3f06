"""An emulated Kubernetes API server for the integration tests.

kmock's `KubernetesEmulator` stores objects and serves discovery, but (in kmock
0.8) it assigns no uid, resourceVersion, generation or creationTimestamp,
answers create with 200, lists lack `kind`, a failed JSON-patch `test` answers
500 and its watches lose writes. `ClusterEmulator` keeps kmock's storage,
discovery and server, and owns the rest with the API server's semantics:

- writes (`writes.py`, the pure core): create (201, metadata filled in, 409
  AlreadyExists), server-side apply (`apply.py`: field managers, conflicts,
  removal of fields no longer applied), merge and JSON patches, PUT; each
  records its field manager in `metadata.managedFields`; strategic merge
  answers 415; the status subresource changes only `status`; `generation`
  grows when anything outside metadata/status changes; a no-op write changes
  nothing (no new resourceVersion, no watch event); stale preconditions 409;
- what the API server does to every object it stores (`normalise.py`):
  defaults, canonical resource quantities, pruning of unknown fields, CRD
  schema defaults;
- delete: finalizers honoured (deletionTimestamp first), and garbage
  collection by ownerReferences (the kube-controller-manager's job in a real
  cluster) once an owner is really gone;
- lists and watches (`Selection`): label selectors (equality- and set-based,
  `selectors.py`) and field selectors on metadata.name/namespace; lists carry
  `kind`, `apiVersion` and a resourceVersion, sorted by namespace and name,
  paginated with limit/continue over one snapshot; a watch sees objects enter
  and leave its selection, and one resumed from a resourceVersion replays the
  events after it (410 Expired when they are no longer kept).

Every request that does not come from the harness itself (its User-Agent) is
recorded as an `ApiRequest` so that a test can compare what the operator did
with the RBAC the Helm chart grants. Errors are injected with `inject_error`;
an injected error changes nothing, as a real API server's error would not.
The harness's own controllers may subscribe to events and write in-process
(`subscribe`, `write_local`, `peek_object(s)`), through the same write path.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import dataclasses
import datetime
import functools
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import aiohttp.web
import kmock
import orjson
from kmock._internal import apps, enums, parsing, rendering

from . import podsecurity, quota, writes
from .normalise import keep_allocated, normaliser
from .schemas import Schema, builtin_schema, crd_schema
from .selectors import LabelSelector, SelectorError, parse_field_selector, parse_label_selector

HARNESS_USER_AGENT = "modelfleet-test-harness"
PODS = ("", "v1", "pods")
RESOURCE_QUOTAS = ("", "v1", "resourcequotas")

WRITE_ACTIONS = (enums.action.CREATE, enums.action.UPDATE, enums.action.DELETE)


@dataclasses.dataclass(frozen=True, order=True)
class ApiRequest:
    """One kind of request, as RBAC sees it."""

    verb: str  # get, list, watch, create, patch, update, delete, deletecollection
    api_group: str  # "" for the core group
    resource: str  # plural
    subresource: str  # "" for the main resource
    namespace: str  # "" for cluster-scoped or all-namespaces requests

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    subresources: tuple[str, ...] = ()
    shortnames: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> kmock.resource:
        return kmock.resource(self.group, self.version, self.plural)


# Every resource the operator, kopf and the harness touch.
BUILTIN_RESOURCES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "namespaces", "Namespace", namespaced=False, subresources=("status",)),
    ResourceType("", "v1", "pods", "Pod", subresources=("status",)),
    ResourceType("", "v1", "services", "Service", subresources=("status",)),
    ResourceType("", "v1", "endpoints", "Endpoints"),
    ResourceType("", "v1", "configmaps", "ConfigMap"),
    ResourceType("", "v1", "secrets", "Secret"),
    ResourceType("", "v1", "events", "Event"),
    ResourceType("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", subresources=("status",)),
    ResourceType("", "v1", "serviceaccounts", "ServiceAccount"),
    ResourceType("", "v1", "resourcequotas", "ResourceQuota", subresources=("status",)),
    ResourceType("events.k8s.io", "v1", "events", "Event"),
    ResourceType("apps", "v1", "deployments", "Deployment", subresources=("status", "scale")),
    ResourceType("apps", "v1", "replicasets", "ReplicaSet", subresources=("status", "scale")),
    ResourceType("batch", "v1", "jobs", "Job", subresources=("status",)),
    ResourceType("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", subresources=("status",)),
    ResourceType("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", subresources=("status",)),
    ResourceType("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
    ResourceType("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy"),
    ResourceType("coordination.k8s.io", "v1", "leases", "Lease"),
    ResourceType("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute", subresources=("status",)),
    ResourceType("gateway.networking.k8s.io", "v1", "gateways", "Gateway", subresources=("status",)),
    ResourceType(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        namespaced=False,
        subresources=("status",),
    ),
    # kopf's peering, used when the operator does not run --standalone.
    ResourceType("kopf.dev", "v1", "kopfpeerings", "KopfPeering"),
    ResourceType("kopf.dev", "v1", "clusterkopfpeerings", "ClusterKopfPeering", namespaced=False),
)


def resource_types_from_crd(crd: Mapping[str, Any]) -> list[ResourceType]:
    """The served versions of a CustomResourceDefinition as emulator resources."""
    spec = crd["spec"]
    names = spec["names"]
    result = []
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        subresources = tuple(sorted((version.get("subresources") or {}).keys()))
        result.append(
            ResourceType(
                group=spec["group"],
                version=version["name"],
                plural=names["plural"],
                kind=names["kind"],
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                subresources=subresources,
                shortnames=tuple(names.get("shortNames", ())),
                categories=tuple(names.get("categories", ())),
            )
        )
    return result


_stock_parse_path = parsing.parse_path


def _parse_path(path: str) -> parsing.ParsedPath:
    """kmock 0.8 reads `/api/v1/namespaces[/NAME]` as a namespace prefix without a resource and fails."""
    parts = path.strip("/").split("/")
    if (
        len(parts) >= 3
        and parts[0] == "api"
        and parts[2] == "namespaces"
        and (len(parts) <= 4 or parts[4] in ("status", "finalize"))
    ):
        return parsing.ParsedPath(
            group="",
            version=parts[1],
            plural="namespaces",
            name=parts[3] if len(parts) >= 4 else None,
            subresource=parts[4] if len(parts) >= 5 else None,
        )
    return _stock_parse_path(path)


parsing.parse_path = _parse_path


def _json_response(body: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> aiohttp.web.Response:
    """A JSON answer serialised with orjson (lists of a thousand objects are megabytes)."""
    return aiohttp.web.Response(
        body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
    )


@functools.cache
def _resource(group: str, version: str, plural: str) -> kmock.resource:
    return kmock.resource(group, version, plural)


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status_error(
    status: int,
    reason: str,
    message: str,
    retry_after: float | None = None,
    details: Mapping[str, Any] | None = None,
) -> kmock.KubernetesError:
    details = {**(details or {}), **({"retryAfterSeconds": int(retry_after)} if retry_after is not None else {})}
    return kmock.KubernetesError(status=status, reason=reason, message=message, details=details)


def selector_matches(selector: str, labels: Mapping[str, str]) -> bool:
    """Whether `labels` match a label selector string (equality- and set-based, see `selectors`)."""
    return parse_label_selector(selector).matches(labels)


# Watch events kept per resource for watches that resume from a resourceVersion (the API
# server's watch cache); a resourceVersion older than the oldest kept answers 410 Expired.
WATCH_LOG_EVENTS = 4096
# Snapshots of paginated lists (limit/continue) kept at once; an evicted one answers 410.
LIST_SNAPSHOTS = 64


@dataclasses.dataclass(frozen=True)
class Selection:
    """What a list or watch request selects: namespace, name, label and field selectors."""

    namespace: str | None
    name: str | None
    labels: LabelSelector
    fields: LabelSelector

    @classmethod
    def of(cls, request: rendering.Request) -> Selection:
        try:
            labels = parse_label_selector(request.params.get("labelSelector", ""))
            fields = parse_field_selector(request.params.get("fieldSelector", ""))
        except SelectorError as exc:
            raise _status_error(400, "BadRequest", str(exc)) from None
        return cls(request.namespace, request.name, labels, fields)

    def matches(self, obj: Mapping[str, Any] | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if self.name is not None and meta.get("name") != self.name:
            return False
        fields = {"metadata.name": meta.get("name", ""), "metadata.namespace": meta.get("namespace") or ""}
        return self.fields.matches(fields) and self.labels.matches(meta.get("labels") or {})

    def translate(self, event: Mapping[str, Any]) -> dict[str, Any] | None:
        """A stored event as this watcher sees it (the API server's cacher): an object that
        starts matching arrives as ADDED, one that stops matching as DELETED (its previous
        content at the event's resourceVersion), others not at all."""
        kind, obj, previous = event["type"], event["object"], event.get("previous")
        now = kind != "DELETED" and self.matches(obj)
        before = self.matches(previous) if kind != "DELETED" else self.matches(obj)
        if kind == "DELETED":
            return {"type": "DELETED", "object": obj} if before else None
        if now and (before or kind == "ADDED"):
            return {"type": kind, "object": obj}
        if now:
            return {"type": "ADDED", "object": obj}
        if before and kind == "MODIFIED":
            gone = copy.deepcopy(dict(previous or {}))
            gone.setdefault("metadata", {})["resourceVersion"] = obj["metadata"]["resourceVersion"]
            return {"type": "DELETED", "object": gone}
        return None


@dataclasses.dataclass
class _Fault:
    matches: Callable[[rendering.Request], bool]
    status: int
    remaining: int
    retry_after: float | None
    hits: int = 0


class ClusterEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with the API-server semantics the operator and kopf depend on."""

    def __init__(self, resource_types: Iterable[ResourceType] = BUILTIN_RESOURCES) -> None:
        super().__init__()
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        self._versions = itertools.count(1)
        self._faults: list[_Fault] = []
        self.recorded: list[ApiRequest] = []
        self._watches: set[asyncio.Task[Any]] = set()
        # The same requests in full (path, body), index for index, for debugging a test.
        self.recorded_requests: list[rendering.Request] = []
        # Per resource: recent watch events, and the newest resourceVersion no longer kept.
        self._log: dict[kmock.resource, collections.deque[tuple[int, dict[str, Any]]]] = collections.defaultdict(
            lambda: collections.deque(maxlen=WATCH_LOG_EVENTS)
        )
        self._log_floor: dict[kmock.resource, int] = collections.defaultdict(int)
        self._snapshots: collections.OrderedDict[str, tuple[str, list[dict[str, Any]]]] = collections.OrderedDict()
        self._snapshot_ids = itertools.count(1)
        self._schemas: dict[kmock.resource, Schema | None] = {}
        # Every (namespace, name) ever created per resource, and object keys by uid: lookups without a scan.
        # (kmock's own lookups parse the key and check protocols on every access: ~50 us each.)
        self._keys: dict[kmock.resource, dict[tuple[str | None, str], Any]] = collections.defaultdict(dict)
        self._uids: dict[str, tuple[Any, str | None, str]] = {}
        self.register(*resource_types)

    # -- configuration -------------------------------------------------------------------------

    def register(self, *resource_types: ResourceType) -> None:
        for rt in resource_types:
            self._types[(rt.group, rt.version, rt.plural)] = rt
            self.resources[rt.key] = kmock.ResourceInfo(
                kind=rt.kind,
                singular=rt.kind.lower(),
                namespaced=rt.namespaced,
                verbs={"get", "list", "watch", "create", "patch", "update", "delete"},
                subresources=set(rt.subresources),
                shortnames=set(rt.shortnames),
                categories=set(rt.categories),
            )

    def register_crd(self, crd: Mapping[str, Any]) -> list[ResourceType]:
        types = resource_types_from_crd(crd)
        self.register(*types)
        for rt in types:
            self._schemas[rt.key] = crd_schema(crd, rt.version)
        return types

    def type_of(self, group: str, version: str, plural: str) -> ResourceType:
        return self._types[(group, version, plural)]

    def inject_error(
        self,
        status: int,
        *,
        verb: str | None = None,
        plural: str | None = None,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
        times: int = 1,
        retry_after: float | None = None,
        only_operator: bool = True,
    ) -> _Fault:
        """Answer the next `times` matching requests with `status` and change nothing.

        `verb` is an RBAC verb (get, list, watch, create, patch, delete).
        With `retry_after`, the answer carries a `Retry-After` header (as for 429).
        """

        def matches(request: rendering.Request) -> bool:
            if only_operator and request.headers.get("User-Agent", "").startswith(HARNESS_USER_AGENT):
                return False
            if request.resource is None:
                return False
            return (
                (verb is None or _verb_of(request) == verb)
                and (plural is None or request.resource.plural == plural)
                and (namespace is None or request.namespace == namespace)
                and (name is None or request.name == name)
                and (subresource is None or (request.subresource or "") == subresource)
            )

        fault = _Fault(matches=matches, status=status, remaining=times, retry_after=retry_after)
        self._faults.append(fault)
        return fault

    # -- state access for the harness (in-memory, no request) ------------------------------------

    def live_objects(self, group: str, version: str, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return [copy.deepcopy(obj) for obj in self.peek_objects(group, version, plural, namespace)]

    def live_object(
        self, group: str, version: str, plural: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        obj = self.peek_object(group, version, plural, namespace, name)
        return None if obj is None else copy.deepcopy(obj)

    def peek_objects(
        self, group: str, version: str, plural: str, namespace: str | None = None
    ) -> list[Mapping[str, Any]]:
        """The stored objects themselves, without copying: read them, never change them (the harness's hot paths)."""
        resource = _resource(group, version, plural)
        result = []
        for (ns, _), obj in list(self._keys[resource].items()):
            if not obj.deleted and (namespace is None or ns == namespace):
                result.append(obj.raw)
        return result

    def peek_object(
        self, group: str, version: str, plural: str, namespace: str | None, name: str
    ) -> Mapping[str, Any] | None:
        """The stored object itself, without copying: read it, never change it."""
        obj = self._keys[_resource(group, version, plural)].get((namespace, name))
        if obj is not None and not obj.deleted:
            return obj.raw  # type: ignore[no-any-return]
        return None

    @contextlib.asynccontextmanager
    async def subscribe(self, group: str, version: str, plural: str) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """Every watch event of a resource from now on, in-process (for the harness's own controllers).

        `async with emulator.subscribe(...) as events: async for event in events: ...`; an event is
        `{"type", "object", "previous"}` (previous: the object before a MODIFIED, or None).
        """
        bus = self._buses[kmock.resource(group, version, plural)]
        async with self._lock:
            mark = await bus.mark()
        try:
            yield bus.stream(since=mark)
        finally:
            await bus.unmark(mark)

    async def write_local(
        self,
        method: str,
        group: str,
        version: str,
        plural: str,
        namespace: str | None,
        name: str | None,
        body: Any,
        *,
        subresource: str | None = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """One write through the same code as an HTTP request, without the socket (for the harness's controllers).

        It is the harness's (never recorded, never faulted) and raises `writes.WriteError` as the API answers.
        """
        rt = self._types[(group, version, plural)]
        http_method = enums.method(method.upper())
        parsed = parsing.ParsedPath(group, version, plural, namespace, name, subresource)
        request = rendering.Request(
            method=http_method,
            params=dict(params or {}),
            headers={"User-Agent": HARNESS_USER_AGENT, "Content-Type": content_type},
            data=body,
            text=json.dumps(body),
            action=parsing.guess_k8s(parsed, http_method, dict(params or {})),
            resource=rt.key,
            namespace=namespace,
            name=name,
            subresource=subresource,
        )
        async with self._lock:
            _, result = await self._write(rt, request)
        return copy.deepcopy(result)

    # -- request handling ------------------------------------------------------------------------

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        from_harness = request.headers.get("User-Agent", "").startswith(HARNESS_USER_AGENT)
        if not from_harness:
            self._record(request)

        for fault in self._faults:
            if fault.remaining > 0 and fault.matches(request):
                fault.remaining -= 1
                fault.hits += 1
                return self._error_response(
                    _status_error(
                        fault.status,
                        _REASONS.get(fault.status, "InternalError"),
                        f"injected by the test harness: {fault.status}",
                        fault.retry_after,
                    ),
                    fault.retry_after,
                )

        is_resource = request.resource is not None and bool(request.resource.plural)
        try:
            is_put = request.method == enums.method.PUT and request.name is not None
            if (is_resource and request.action == enums.action.CREATE) or (
                is_resource and (request.action in WRITE_ACTIONS or is_put) and request.name is not None
            ):
                rt = self._resource_type(request)
                async with self._lock:
                    status, body = await self._write(rt, request)
                return _json_response(body, status=status)
            if is_resource and request.action == enums.action.LIST:
                rt = self._resource_type(request)
                return _json_response(self._list(rt, request))
            if is_resource and request.action == enums.action.WATCH:
                # Refused before the stream opens, as the API server answers a bad watch with 400.
                self._resource_type(request)
                Selection.of(request)
                _watch_start(request)
            if is_resource and request.action == enums.action.FETCH:
                rt = self._resource_type(request)
                obj = self._get(rt, request.namespace if rt.namespaced else None, request.name)
                if obj is None:
                    group = f".{rt.group}" if rt.group else ""
                    details = {"name": request.name, "group": rt.group, "kind": rt.plural}
                    raise _status_error(
                        404, "NotFound", f'{rt.plural}{group} "{request.name}" not found', details=details
                    )
                return _json_response(obj.raw)
        except writes.WriteError as exc:
            return self._error_response(_status_error(exc.status, exc.reason, exc.message, details=exc.details))
        except kmock.KubernetesError as exc:
            return self._error_response(exc)
        # Fetches, watches and discovery: kmock's own serving.
        return await apps.RawHandler._handle(self, request)

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[Any]:
        """Snapshot and subscription under one lock, so no event falls between them.

        kmock 0.8 subscribes only after replaying the current objects, and a write in
        between is lost (kopf then patches with a stale resourceVersion forever). Without a
        resourceVersion (or with "0", or sendInitialEvents=true) the watch starts with
        synthetic ADDED events of the selected objects; with one, it replays the events
        after it from the watch log, or answers 410 Expired when they are no longer kept.
        Label and field selectors filter as the API server's cacher does (see `Selection`).
        """
        yield b""  # send the headers: the stream is open even if nothing happens
        assert request.resource is not None
        rt = self._resource_type(request)
        selection = Selection.of(request)
        since = _watch_start(request)
        bus = self._buses[rt.key]
        handler = asyncio.current_task()
        monitor = None
        if handler is not None:
            self._watches.add(handler)
            monitor = asyncio.create_task(self._cancel_on_disconnect(request, handler))
        async with self._lock:
            mark = await bus.mark()
            events = self._initial_events(rt, selection, request, since)
        try:
            for event in events:
                yield event
            if events and events[-1]["type"] == "ERROR":
                return
            async for event in bus.stream(since=mark):
                seen = selection.translate(event)
                if seen is not None:
                    yield seen
        finally:
            if monitor is not None:
                monitor.cancel()
            self._watches.discard(handler)
            await bus.unmark(mark)

    def _initial_events(
        self, rt: ResourceType, selection: Selection, request: rendering.Request, since: int | None
    ) -> list[dict[str, Any]]:
        if since is not None and request.params.get("sendInitialEvents") != "true":
            if since < self._log_floor[rt.key]:
                status = _status_body(410, "Expired", f"too old resource version: {since} ({self._log_floor[rt.key]})")
                return [{"type": "ERROR", "object": status}]
            replay = (selection.translate(event) for version, event in self._log[rt.key] if version > since)
            return [event for event in replay if event is not None]
        events: list[dict[str, Any]] = [{"type": "ADDED", "object": obj.raw} for obj in self._selected(rt, selection)]
        if request.params.get("sendInitialEvents") == "true":
            bookmark = {
                "apiVersion": rt.api_version,
                "kind": rt.kind,
                "metadata": {
                    "resourceVersion": str(self._current_version()),
                    "annotations": {"k8s.io/initial-events-end": "true"},
                },
            }
            events.append({"type": "BOOKMARK", "object": bookmark})
        return events

    def _selected(self, rt: ResourceType, selection: Selection) -> list[Any]:
        """The live objects a request selects, in the API server's order (namespace, name)."""
        candidates = ((ns, name, obj) for (ns, name), obj in list(self._keys[rt.key].items()))
        found = [
            (ns or "", name, obj) for ns, name, obj in candidates if not obj.deleted and selection.matches(obj.raw)
        ]
        return [obj for _, _, obj in sorted(found, key=lambda item: (item[0], item[1]))]

    async def _cancel_on_disconnect(self, request: rendering.Request, handler: asyncio.Task[Any]) -> None:
        """End a watch whose client is gone (aiohttp does not cancel handlers on disconnect)."""
        raw = request._raw_request
        while raw is not None and raw.transport is not None and not raw.transport.is_closing():
            await asyncio.sleep(0.2)
        handler.cancel()

    def close_watches(self) -> None:
        """End every open watch, so that the server can shut down at once."""
        for task in list(self._watches):
            task.cancel()

    def _error_response(self, exc: kmock.KubernetesError, retry_after: float | None = None) -> aiohttp.web.Response:
        headers = {"Retry-After": str(int(retry_after))} if retry_after is not None else None
        body = _status_body(exc.status, exc.reason or "", exc.message or "", exc.details)
        return _json_response(body, status=exc.status, headers=headers)

    def _record(self, request: rendering.Request) -> None:
        if request.resource is None:
            return  # non-resource URLs (discovery) are open to every authenticated user
        if not request.resource.plural:
            return  # /api/v1, /apis/group/version: discovery too
        self.recorded_requests.append(request)
        self.recorded.append(
            ApiRequest(
                verb=_verb_of(request),
                api_group=request.resource.group or "",
                resource=request.resource.plural,
                subresource=request.subresource or "",
                namespace=request.namespace or "",
            )
        )

    def _resource_type(self, request: rendering.Request) -> ResourceType:
        assert request.resource is not None
        key = (request.resource.group or "", request.resource.version or "", request.resource.plural or "")
        if key not in self._types:
            raise kmock.KubernetesResourceNotFoundError()
        return self._types[key]

    def _get(self, rt: ResourceType, namespace: str | None, name: str | None) -> Any:
        obj = self._keys[rt.key].get((namespace if rt.namespaced else None, name))
        if obj is not None and not obj.deleted:
            return obj
        return None

    def _list(self, rt: ResourceType, request: rendering.Request) -> dict[str, Any]:
        """A list, paginated with `limit` and `continue` over one consistent snapshot (as from etcd)."""
        selection = Selection.of(request)
        token = request.params.get("continue", "")
        limit_text = request.params.get("limit", "")
        if limit_text and not limit_text.isdigit():
            raise _status_error(400, "BadRequest", f"limit must be a non-negative integer, got {limit_text!r}")
        limit = int(limit_text or 0)
        if token:
            version, items, offset = self._snapshot(token)
        else:
            version = str(self._current_version())
            # Stored versions are never changed in place: the list (and its snapshot) shares them.
            items = [obj.raw for obj in self._selected(rt, selection)]
            offset = 0
        metadata: dict[str, Any] = {"resourceVersion": version}
        page = items[offset:]
        if limit and len(page) > limit:
            page = page[:limit]
            snapshot_id = token.split(":")[0] if token else self._keep_snapshot(version, items)
            metadata["continue"] = f"{snapshot_id}:{offset + limit}"
            if not selection.labels.requirements and not selection.fields.requirements:
                metadata["remainingItemCount"] = len(items) - offset - limit
        return {"apiVersion": rt.api_version, "kind": f"{rt.kind}List", "metadata": metadata, "items": page}

    def _keep_snapshot(self, version: str, items: list[dict[str, Any]]) -> str:
        snapshot_id = f"emulated-{next(self._snapshot_ids)}"
        self._snapshots[snapshot_id] = (version, items)
        while len(self._snapshots) > LIST_SNAPSHOTS:
            self._snapshots.popitem(last=False)
        return snapshot_id

    def _snapshot(self, token: str) -> tuple[str, list[dict[str, Any]], int]:
        snapshot_id, _, offset = token.partition(":")
        if not snapshot_id.startswith("emulated-") or not offset.isdigit():
            raise _status_error(400, "BadRequest", f"continue key is not valid: {token!r}")
        if snapshot_id not in self._snapshots:
            raise _status_error(
                410,
                "Expired",
                "The provided continue parameter is too old to display a consistent list result. "
                "You can start a new list without the continue parameter.",
            )
        self._snapshots.move_to_end(snapshot_id)
        version, items = self._snapshots[snapshot_id]
        return version, items, int(offset)

    def _current_version(self) -> int:
        # itertools.count has no peek: keep the last issued version next to it.
        return getattr(self, "_last_version", 0)

    def _next_version(self) -> str:
        self._last_version = next(self._versions)
        return str(self._last_version)

    async def _publish(
        self, rt: ResourceType, event_type: str, obj: Mapping[str, Any], previous: Mapping[str, Any] | None = None
    ) -> None:
        """Log the event for resumed watches and stream it; `previous` is the object before (for selectors)."""
        # Stored versions are never changed in place (a write appends a new one), so the event shares them.
        event = {"type": event_type, "object": obj, "previous": previous}
        log = self._log[rt.key]
        if len(log) == log.maxlen:
            self._log_floor[rt.key] = log[0][0]
        log.append((int(obj["metadata"]["resourceVersion"]), event))
        await self._buses[rt.key].put(event)

    def kind_of(self, rt: ResourceType) -> writes.Kind:
        """What the pure write functions need to know of a resource (its schema and normalisation)."""
        custom = rt.key in self._schemas
        schema = self._schemas[rt.key] if custom else builtin_schema(rt.api_version, rt.kind)
        normalise, canonicalise = normaliser(rt.api_version, rt.kind, schema, builtin=not custom)
        return writes.Kind(
            api_version=rt.api_version,
            kind=rt.kind,
            plural=rt.plural,
            group=rt.group,
            namespaced=rt.namespaced,
            has_status="status" in rt.subresources,
            schema=schema,
            normalise=normalise,
            canonicalise=canonicalise,
            carry=lambda old, new: keep_allocated(rt.kind, old, new),
        )

    async def _write(self, rt: ResourceType, request: rendering.Request) -> tuple[int, dict[str, Any]]:
        if request.params.get("dryRun"):
            raise writes.WriteError(400, "BadRequest", "dryRun is not emulated: the emulator would really write")
        if request.action == enums.action.CREATE:
            return await self._create(rt, request)
        if request.action == enums.action.DELETE:
            return await self._delete(rt, request.namespace, request.name)
        return await self._update(rt, request)

    async def _create(self, rt: ResourceType, request: rendering.Request) -> tuple[int, dict[str, Any]]:
        manager = writes.manager_of(request.params, request.headers.get("User-Agent", ""), options="CreateOptions")
        obj = writes.create(
            self.kind_of(rt), request.namespace if rt.namespaced else None, request.data, manager=manager, now=_now()
        )
        return 201, await self._store_new(rt, obj)

    async def _store_new(self, rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        namespace = meta.get("namespace") if rt.namespaced else None
        if self._get(rt, namespace, meta["name"]) is not None:
            raise writes.WriteError(409, "AlreadyExists", f'{rt.plural}.{rt.group} "{meta["name"]}" already exists')
        if rt.key == _resource(*PODS) and namespace is not None:
            podsecurity.admit_pod(obj, self.peek_object("", "v1", "namespaces", None, namespace))
            quota.admit_pod(obj, self.peek_objects(*RESOURCE_QUOTAS, namespace), self.peek_objects(*PODS, namespace))
        meta.setdefault("uid", str(uuid.uuid4()))
        meta["resourceVersion"] = self._next_version()
        key = (rt.key, namespace, meta["name"])
        if key in self.objects:
            self.objects[key].history.append(obj)
        else:
            self.objects[key] = obj
        self._keys[rt.key][(namespace, meta["name"])] = self.objects[key]
        self._uids[meta["uid"]] = key
        await self._publish(rt, "ADDED", obj)
        await self._count_quota(rt, namespace)
        return obj

    async def _count_quota(self, rt: ResourceType, namespace: str | None) -> None:
        """The quota controller: a ResourceQuota's status.hard and status.used follow the namespace's pods."""
        if namespace is None or rt.key not in (_resource(*PODS), _resource(*RESOURCE_QUOTAS)):
            return
        quotas = self.peek_objects(*RESOURCE_QUOTAS, namespace)
        pods = self.peek_objects(*PODS, namespace) if quotas else []
        quota_type = self._types[RESOURCE_QUOTAS]
        for stored_quota in quotas:
            counted = quota.status(stored_quota, pods)
            if stored_quota.get("status") == counted:
                continue
            stored = self._get(quota_type, namespace, stored_quota["metadata"]["name"])
            new = {**copy.deepcopy(dict(stored_quota)), "status": counted}
            new["metadata"]["resourceVersion"] = self._next_version()
            stored.history.append(new)
            await self._publish(quota_type, "MODIFIED", new, previous=stored_quota)

    async def _update(self, rt: ResourceType, request: rendering.Request) -> tuple[int, dict[str, Any]]:
        """PATCH (apply, merge, JSON) and PUT, on the main resource or /status."""
        kind = self.kind_of(rt)
        namespace = request.namespace if rt.namespaced else None
        subresource = request.subresource or ""
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        if request.method == enums.method.PUT:
            content_type = "application/json"
        elif request.method != enums.method.PATCH:
            raise writes.WriteError(405, "MethodNotAllowed", f"{request.method} is not a write the emulator knows")
        force = writes.apply_options(request.params, content_type)
        user_agent = request.headers.get("User-Agent", "")
        manager = writes.manager_of(request.params, user_agent)
        stored = self._get(rt, namespace, request.name)
        # The stored version is never changed in place (writes.py builds a new object), so no copy is needed.
        old = stored.raw if stored is not None else None
        now = _now()
        if content_type == writes.APPLY_PATCH:
            if not request.params.get("fieldManager"):
                raise writes.WriteError(
                    422,
                    "Invalid",
                    'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch',
                )
            config = writes.apply_configuration(kind, request.name, request.data, request.text)
            if old is None and subresource:
                raise kind.not_found(request.name)
            new = writes.apply(kind, old, config, subresource, namespace, manager=manager, force=force, now=now)
            if old is None:
                return 201, await self._store_new(rt, new)
        elif old is None:
            raise kind.not_found(request.name)
        elif request.method == enums.method.PUT:
            new = writes.replace(kind, old, request.data, subresource, manager=manager, now=now)
        else:
            new = writes.patch(kind, old, request.data, content_type, subresource, manager=manager, now=now)
        assert old is not None and stored is not None
        finished = writes.finish(old, new)
        if finished is None:
            return 200, old  # a no-op: no new version, no event
        finished["metadata"]["resourceVersion"] = self._next_version()
        stored.history.append(finished)
        if finished["metadata"].get("deletionTimestamp") and not finished["metadata"].get("finalizers"):
            await self._remove(rt, namespace, request.name)
        else:
            await self._publish(rt, "MODIFIED", finished, previous=old)
            await self._count_quota(rt, namespace)
        return 200, finished

    async def _delete(self, rt: ResourceType, namespace: str | None, name: str | None) -> tuple[int, dict[str, Any]]:
        namespace = namespace if rt.namespaced else None
        stored = self._get(rt, namespace, name)
        if stored is None:
            raise _status_error(404, "NotFound", f'{rt.plural}.{rt.group} "{name}" not found')
        obj = copy.deepcopy(stored.raw)
        if obj["metadata"].get("finalizers"):
            if not obj["metadata"].get("deletionTimestamp"):
                previous = copy.deepcopy(obj)
                obj["metadata"]["deletionTimestamp"] = _now()
                obj["metadata"]["resourceVersion"] = self._next_version()
                stored.history.append(obj)
                await self._publish(rt, "MODIFIED", obj, previous=previous)
            return 200, obj
        await self._remove(rt, namespace, name)
        return 200, obj

    async def _remove(self, rt: ResourceType, namespace: str | None, name: str | None) -> None:
        stored = self.objects[(rt.key, namespace, name)]
        last = copy.deepcopy(stored.raw)
        last["metadata"]["resourceVersion"] = self._next_version()
        stored.delete()
        await self._publish(rt, "DELETED", last)
        await self._count_quota(rt, namespace)
        await self._collect_garbage(last["metadata"]["uid"])

    async def _collect_garbage(self, owner_uid: str) -> None:
        """Drop references to a gone owner; delete dependents that have no owner left."""
        for (res, ns, name), stored in list(self.objects.items()):
            if stored.deleted:
                continue
            obj = stored.raw
            refs = obj.get("metadata", {}).get("ownerReferences") or []
            if not any(ref.get("uid") == owner_uid for ref in refs):
                continue
            rt = self._types.get((res.group or "", res.version or "", res.plural or ""))
            if rt is None:
                continue
            remaining = [ref for ref in refs if ref.get("uid") != owner_uid and self._uid_alive(ref.get("uid"))]
            if remaining:
                new = copy.deepcopy(obj)
                new["metadata"]["ownerReferences"] = remaining
                new["metadata"]["resourceVersion"] = self._next_version()
                stored.history.append(new)
                await self._publish(rt, "MODIFIED", new, previous=obj)
            else:
                await self._delete(rt, ns, name)

    def _uid_alive(self, uid: str | None) -> bool:
        key = self._uids.get(uid or "")
        if key is None or key not in self.objects or self.objects[key].deleted:
            return False
        return bool(self.objects[key].raw.get("metadata", {}).get("uid") == uid)


_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    410: "Expired",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def _status_body(status: int, reason: str, message: str, details: Any = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "code": status,
        "reason": reason,
        "message": message,
        "details": details or {},
    }


def _watch_start(request: rendering.Request) -> int | None:
    """The resourceVersion a watch resumes after; None to start from the current state."""
    since = request.params.get("resourceVersion", "")
    if since in ("", "0"):
        return None
    if not since.isdigit():
        raise _status_error(400, "BadRequest", f"invalid resource version {since!r}")
    return int(since)


def _verb_of(request: rendering.Request) -> str:
    method = request.method
    if method == enums.method.GET:
        if request.params.get("watch") in ("true", "1"):
            return "watch"
        return "get" if request.name else "list"
    if method == enums.method.POST:
        return "create"
    if method == enums.method.PATCH:
        return "patch"
    if method == enums.method.PUT:
        return "update"
    if method == enums.method.DELETE:
        return "delete" if request.name else "deletecollection"
    return str(method.value).lower()


def dump_requests(requests: Iterable[ApiRequest]) -> str:
    """The distinct requests as stable JSON (one object per line inside a list)."""
    unique = sorted(set(requests))
    return "[\n" + ",\n".join(json.dumps(r.as_dict(), sort_keys=True) for r in unique) + "\n]\n"


__all__ = [
    "BUILTIN_RESOURCES",
    "HARNESS_USER_AGENT",
    "ApiRequest",
    "ClusterEmulator",
    "ResourceType",
    "dump_requests",
    "resource_types_from_crd",
    "selector_matches",
]
