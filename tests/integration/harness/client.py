"""The harness's own API client.

The test kubelet, the controllers and the tests (acting as a user with kubectl)
talk to the emulated API server over HTTP like any other client, so every
write produces the watch events the operator sees. Their User-Agent marks them
as the harness, so their requests are not counted as the operator's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp

from .emulator import HARNESS_USER_AGENT


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"API answered {status}: {body}")
        self.status = status
        self.body = body


def resource_path(
    group: str,
    version: str,
    plural: str,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    base = f"/apis/{group}/{version}" if group else f"/api/{version}"
    if namespace:
        base += f"/namespaces/{namespace}"
    base += f"/{plural}"
    if name:
        base += f"/{name}"
    if subresource:
        base += f"/{subresource}"
    return base


class ClusterClient:
    """A minimal async client: get, list, create, merge-patch, JSON-patch, delete."""

    def __init__(self, base_url: str, user_agent: str = HARNESS_USER_AGENT) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = aiohttp.ClientSession(headers={"User-Agent": user_agent})

    async def close(self) -> None:
        await self._session.close()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> Any:
        headers = {"Content-Type": content_type} if json_body is not None else {}
        async with self._session.request(
            method, self.base_url + path, json=json_body, headers=headers, params=params
        ) as response:
            body = await response.json(content_type=None)
            if response.status >= 400:
                raise ApiError(response.status, body)
            return body

    async def get(
        self, group: str, version: str, plural: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        try:
            return await self._request("GET", resource_path(group, version, plural, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(self, group: str, version: str, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        body = await self._request("GET", resource_path(group, version, plural, namespace))
        return list(body.get("items", []))

    async def create(
        self, group: str, version: str, plural: str, namespace: str | None, obj: Mapping[str, Any]
    ) -> dict[str, Any]:
        return await self._request("POST", resource_path(group, version, plural, namespace), json_body=dict(obj))

    async def merge_patch(
        self,
        group: str,
        version: str,
        plural: str,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any],
        subresource: str | None = None,
    ) -> dict[str, Any]:
        return await self._request(
            "PATCH",
            resource_path(group, version, plural, namespace, name, subresource),
            json_body=dict(patch),
            content_type="application/merge-patch+json",
        )

    async def write_status(
        self, group: str, version: str, plural: str, namespace: str | None, name: str, status: Mapping[str, Any]
    ) -> bool:
        """Merge `status` into the object's status subresource; False when the object is gone (404)."""
        try:
            await self.merge_patch(group, version, plural, namespace, name, {"status": dict(status)}, "status")
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def json_patch(
        self,
        group: str,
        version: str,
        plural: str,
        namespace: str | None,
        name: str,
        ops: list[dict[str, Any]],
        subresource: str | None = None,
    ) -> dict[str, Any]:
        return await self._request(
            "PATCH",
            resource_path(group, version, plural, namespace, name, subresource),
            json_body=ops,
            content_type="application/json-patch+json",
        )

    async def delete(self, group: str, version: str, plural: str, namespace: str | None, name: str) -> bool:
        try:
            await self._request("DELETE", resource_path(group, version, plural, namespace, name))
            return True
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
