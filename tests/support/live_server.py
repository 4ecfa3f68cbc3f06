"""The real app under a real uvicorn server on 127.0.0.1, in the test's own event loop.

For tests that look inside the running server (its batcher's history, its
state) while talking HTTP to it. The server listens on a socket bound before
it starts (port 0), so no other test can take its port meanwhile. Tests of the
process itself (flags, signals, exit codes) use runtime_process.RuntimeProcess.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator

import httpx
import uvicorn

from modelfleet_runtime.app import create_app
from modelfleet_runtime.model_server import ModelServer, State
from modelfleet_runtime.settings import Settings

from .polling import wait_for
from .runtime_process import listening_socket


@dataclasses.dataclass
class Live:
    url: str
    server: ModelServer
    client: httpx.AsyncClient


@contextlib.asynccontextmanager
async def live_server(settings: Settings, *, wait_ready: bool = True) -> AsyncIterator[Live]:
    """Serve `settings` until the block ends; with `wait_ready`, enter once the model loaded or failed."""
    listener = listening_socket()
    port = listener.getsockname()[1]
    # No gRPC on the default port (8081 would be shared by every server): a test that wants gRPC starts
    # grpc_api.GrpcServer on a port of its own.
    settings = dataclasses.replace(settings, host="127.0.0.1", port=port, grpc_port=0)
    model_server = ModelServer(settings)
    config = uvicorn.Config(create_app(settings, model_server), log_level="warning", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[listener]))
    url = f"http://127.0.0.1:{port}"
    limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
    try:
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
            await wait_for(lambda: server.started or task.done(), message="uvicorn to start")
            if task.done():
                task.result()
            if wait_ready:
                await wait_for(lambda: model_server.state is not State.LOADING, message="the model to load")
            yield Live(url, model_server, client)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
        listener.close()
