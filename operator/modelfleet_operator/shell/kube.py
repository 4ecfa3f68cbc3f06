"""The operator's Kubernetes I/O on plain dicts: get, list, server-side apply, create, patch, delete.

It uses the official client's connection handling (kubeconfig, in-cluster
service account, token refresh, TLS) and nothing of its typed models: manifests
stay dicts. Calls run in a thread pool so the event loop that kopf and the
operator share never blocks.

The operator's own objects are written with server-side apply under one field
manager (`FIELD_MANAGER`): the server creates what is missing, removes the
fields the manager no longer sends and keeps other managers' fields. Status
and the ModelVersions' own fields (finalizers, a promotion's spec.traffic)
are merge patches; Jobs, child ModelVersions, Secrets and Events are created.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import kubernetes

USER_AGENT = "modelfleet-operator"
# The field manager of every server-side apply: one name, so the operator's fields stay its own.
FIELD_MANAGER = "modelfleet-operator"
APPLY_PATCH = "application/apply-patch+yaml"
# Concurrent API requests (each blocks one thread of the client).
API_THREADS = 16


@dataclass(frozen=True)
class Kind:
    """A resource as the API addresses it."""

    group: str
    version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        path = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            path += f"/namespaces/{namespace}"
        path += f"/{self.plural}"
        if name:
            path += f"/{name}"
            if subresource:
                path += f"/{subresource}"
        return path


MODELVERSIONS = Kind("serving.modelfleet.dev", "v1alpha1", "modelversions")
DEPLOYMENTS = Kind("apps", "v1", "deployments")
SERVICES = Kind("", "v1", "services")
PODS = Kind("", "v1", "pods")
HPAS = Kind("autoscaling", "v2", "horizontalpodautoscalers")
PDBS = Kind("policy", "v1", "poddisruptionbudgets")
HTTPROUTES = Kind("gateway.networking.k8s.io", "v1", "httproutes")
GRPCROUTES = Kind("gateway.networking.k8s.io", "v1", "grpcroutes")
JOBS = Kind("batch", "v1", "jobs")
SECRETS = Kind("", "v1", "secrets")
EVENTS = Kind("", "v1", "events")
ENDPOINTSLICES = Kind("discovery.k8s.io", "v1", "endpointslices")
NETWORKPOLICIES = Kind("networking.k8s.io", "v1", "networkpolicies")

_BY_MANIFEST: dict[tuple[str, str], Kind] = {
    ("apps/v1", "Deployment"): DEPLOYMENTS,
    ("v1", "Service"): SERVICES,
    ("v1", "Pod"): PODS,
    ("autoscaling/v2", "HorizontalPodAutoscaler"): HPAS,
    ("policy/v1", "PodDisruptionBudget"): PDBS,
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): HTTPROUTES,
    ("networking.k8s.io/v1", "NetworkPolicy"): NETWORKPOLICIES,
    ("gateway.networking.k8s.io/v1", "GRPCRoute"): GRPCROUTES,
    ("batch/v1", "Job"): JOBS,
    ("v1", "Secret"): SECRETS,
    ("v1", "Event"): EVENTS,
    ("serving.modelfleet.dev/v1alpha1", "ModelVersion"): MODELVERSIONS,
}


KIND_NAMES: dict[Kind, str] = {kind: name for (_, name), kind in _BY_MANIFEST.items()}


def kind_of(manifest: Mapping[str, Any]) -> Kind:
    try:
        return _BY_MANIFEST[(manifest["apiVersion"], manifest["kind"])]
    except KeyError:
        raise ValueError(f"the operator does not manage {manifest.get('apiVersion')}/{manifest.get('kind')}") from None


class ApiError(Exception):
    """The API server refused a request; `status` is the HTTP status, `retry_after` in seconds if given."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        return self.status in (409, 429) or self.status >= 500


def load_client_configuration() -> kubernetes.client.Configuration:
    """In-cluster service account when running in a pod, else KUBECONFIG / ~/.kube/config."""
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        # The client reads KUBECONFIG once, at import; read it now so a changed variable counts.
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration)
    return configuration


def bearer_token(configuration: kubernetes.client.Configuration) -> tuple[str | None, str | None]:
    """(scheme, token) of the configuration's Authorization header, if any."""
    header = configuration.get_api_key_with_prefix("BearerToken") or configuration.get_api_key_with_prefix(
        "authorization"
    )
    parts = header.split(" ", 1) if header else []
    if not parts:
        return None, None
    return (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])


class Kube:
    """A thin async facade over one `kubernetes.client.ApiClient`."""

    def __init__(self, api_client: kubernetes.client.ApiClient) -> None:
        self._api = api_client
        self._api.user_agent = USER_AGENT
        self._threads = ThreadPoolExecutor(max_workers=API_THREADS, thread_name_prefix="kube-api")

    @classmethod
    def from_environment(cls) -> Kube:
        return cls(kubernetes.client.ApiClient(load_client_configuration()))

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        self._api.close()

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str | None = None,
        query: Sequence[tuple[str, str]] = (),
    ) -> dict[str, Any] | None:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        method, url, headers, body, post = self._api.param_serialize(
            method,
            path,
            query_params=list(query) or None,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self._api.call_api(method, url, headers, body, post, _request_timeout=30)
            # The client declares RESTResponse.data as None; read() returns the body it stores there.
            data: bytes | None = response.read()
        except kubernetes.client.ApiException as exc:
            raise _api_error(exc.status or 0, exc.body, exc.headers) from None
        if response.status >= 400:
            raise _api_error(response.status, data, response.getheaders())
        if not data:
            return None
        answer = json.loads(data)
        if not isinstance(answer, dict):
            raise ApiError(response.status, f"{method} {path} answered {type(answer).__name__}, not a JSON object")
        return answer

    async def _request(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, lambda: self._call(*args, **kwargs))

    async def _write(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """A create or patch: the API server answers with the object as it stored it."""
        answer = await self._request(*args, **kwargs)
        if answer is None:
            raise ApiError(0, f"{args[0]} {args[1]} answered with an empty body, not the object")
        return answer

    async def served(self, kind: Kind) -> bool:
        """Whether the API server serves `kind`, from its discovery document of the kind's group and
        version (open to every authenticated user; 404 when nobody serves that group version)."""
        path = f"/apis/{kind.group}/{kind.version}" if kind.group else f"/api/{kind.version}"
        try:
            found = await self._request("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return any(r.get("name") == kind.plural for r in (found or {}).get("resources") or [])

    async def get(
        self, kind: Kind, namespace: str | None, name: str, subresource: str | None = None
    ) -> dict[str, Any] | None:
        try:
            return await self._request("GET", kind.path(namespace, name, subresource))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(self, kind: Kind, namespace: str | None, *, label_selector: str = "") -> list[dict[str, Any]]:
        query = [("labelSelector", label_selector)] if label_selector else []
        body = await self._request("GET", kind.path(namespace), query=query)
        return list((body or {}).get("items") or [])

    async def apply(self, kind: Kind, namespace: str | None, obj: Mapping[str, Any], *, force: bool) -> dict[str, Any]:
        """Server-side apply of `obj` (apiVersion, kind, metadata.name, and the fields the operator owns).

        `force` takes over fields another manager set to other values; only for objects the
        operator verified it owns. Without it such a field answers 409 (a conflict).
        """
        query = [("fieldManager", FIELD_MANAGER), ("force", "true" if force else "false")]
        return await self._write(
            "PATCH",
            kind.path(namespace, str(obj["metadata"]["name"])),
            body=json.dumps(dict(obj)),
            content_type=APPLY_PATCH,
            query=query,
        )

    async def create(self, kind: Kind, namespace: str | None, obj: Mapping[str, Any]) -> dict[str, Any]:
        return await self._write(
            "POST",
            kind.path(namespace),
            body=dict(obj),
            content_type="application/json",
            query=[("fieldManager", FIELD_MANAGER)],
        )

    async def merge_patch(
        self, kind: Kind, namespace: str | None, name: str, patch: Mapping[str, Any], subresource: str | None = None
    ) -> dict[str, Any]:
        return await self._write(
            "PATCH",
            kind.path(namespace, name, subresource),
            body=dict(patch),
            content_type="application/merge-patch+json",
        )

    async def json_patch(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        ops: Sequence[Mapping[str, Any]],
        subresource: str | None = None,
    ) -> dict[str, Any]:
        return await self._write(
            "PATCH",
            kind.path(namespace, name, subresource),
            body=[dict(op) for op in ops],
            content_type="application/json-patch+json",
        )

    async def delete(self, kind: Kind, namespace: str | None, name: str) -> bool:
        try:
            await self._request(
                "DELETE",
                kind.path(namespace, name),
                body={"propagationPolicy": "Background"},
                content_type="application/json",
            )
            return True
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise


def _api_error(status: int, body: Any, headers: Any) -> ApiError:
    message = str(body)
    try:
        parsed = json.loads(body) if isinstance(body, (str, bytes)) else None
        if isinstance(parsed, dict) and parsed.get("message"):
            message = parsed["message"]
    except ValueError:
        pass
    retry_after: float | None = None
    # Header names are case-insensitive (HTTP/2 sends them lower-case); a plain dict loses that.
    raw = next((value for name, value in (headers or {}).items() if str(name).lower() == "retry-after"), None)
    if raw is not None:
        try:
            retry_after = float(raw)
        except ValueError:
            retry_after = None
    return ApiError(status, message, retry_after)


__all__ = [
    "DEPLOYMENTS",
    "ENDPOINTSLICES",
    "EVENTS",
    "FIELD_MANAGER",
    "GRPCROUTES",
    "HPAS",
    "HTTPROUTES",
    "JOBS",
    "KIND_NAMES",
    "MODELVERSIONS",
    "NETWORKPOLICIES",
    "PDBS",
    "PODS",
    "SECRETS",
    "SERVICES",
    "ApiError",
    "Kind",
    "Kube",
    "kind_of",
    "load_client_configuration",
]
