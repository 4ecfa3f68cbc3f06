"""The real app under a real uvicorn server on 127.0.0.1, in the test's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import httpx
import uvicorn

from modelfleet_runtime.app import create_app
from modelfleet_runtime.model_server import ModelServer
from modelfleet_runtime.settings import Settings
from onnx_models import free_port


@dataclasses.dataclass
class Live:
    url: str
    server: ModelServer
    client: httpx.AsyncClient


async def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.02) -> None:
    """Poll `predicate` (sync or async) until it is true; fail after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def live_server(settings: Settings, *, wait_ready: bool = True) -> AsyncIterator[Live]:
    port = free_port()
    # No gRPC unless a test starts it (on a port of its own): the default 8081 would be shared.
    settings = dataclasses.replace(settings, host="127.0.0.1", port=port, grpc_port=0)
    model_server = ModelServer(settings)
    config = uvicorn.Config(
        create_app(settings, model_server),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        access_log=False,
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # older uvicorn
    task = asyncio.get_running_loop().create_task(server.serve())
    limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=60) as client:
        try:
            await wait_for(lambda: server.started or task.done())
            if task.done():
                task.result()
            if wait_ready:
                await wait_for(lambda: model_server.state.value != "loading")
            yield Live(f"http://127.0.0.1:{port}", model_server, client)
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 30)
