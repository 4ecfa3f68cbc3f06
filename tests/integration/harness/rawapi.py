"""Raw HTTP calls to the emulated API server, answering (status, body) without raising.

The emulator's own tests use it to see exactly what a client would: status codes,
Status bodies, query parameters (selectors, pagination, fieldManager, force,
dryRun), content types (apply, merge, JSON and strategic-merge patches) and
watch streams. `bench/` uses it to measure the emulator's own throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson

from .emulator import HARNESS_USER_AGENT

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"


class RawApi:
    """`await api.call("PATCH", path, body, content_type=APPLY, params={...})` -> (status, body)."""

    def __init__(self, base_url: str, user_agent: str = HARNESS_USER_AGENT) -> None:
        self.base_url = base_url.rstrip("/")
        self.user_agent = user_agent
        self._session = aiohttp.ClientSession(headers={"User-Agent": user_agent})

    async def close(self) -> None:
        await self._session.close()

    async def __aenter__(self) -> RawApi:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        data = None if body is None else (body if isinstance(body, (str, bytes)) else json.dumps(body))
        headers = {"Content-Type": content_type} if body is not None else {}
        async with self._session.request(
            method, self.base_url + path, data=data, headers=headers, params=params
        ) as response:
            raw = await response.read()
            try:
                return response.status, orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                return response.status, raw.decode(errors="replace")

    async def apply(
        self, path: str, body: Any, manager: str, *, force: bool = False, subresource_params: Mapping[str, str] = {}
    ) -> tuple[int, Any]:
        params = {"fieldManager": manager, **subresource_params}
        if force:
            params["force"] = "true"
        return await self.call("PATCH", path, body, content_type=APPLY, params=params)

    @contextlib.asynccontextmanager
    async def watch(self, path: str, params: Mapping[str, str] | None = None) -> AsyncIterator[Watch]:
        """A watch stream: `await stream.next()` is the next event (a dict), with a deadline."""
        query = {"watch": "true", **(params or {})}
        async with self._session.get(self.base_url + path, params=query) as response:
            yield Watch(response)


class Watch:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.status = response.status

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next event; TimeoutError when none arrives within `timeout` (a deadline, not a pause)."""
        while True:
            line = await asyncio.wait_for(self.response.content.readline(), timeout)
            if not line:
                raise EOFError("the watch stream ended")
            if line.strip():
                event: dict[str, Any] = json.loads(line)
                return event


__all__ = ["APPLY", "JSON_PATCH", "MERGE", "STRATEGIC", "RawApi", "Watch"]
