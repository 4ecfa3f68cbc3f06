"""`modelfleet-runtime serve` as a child process, on a listening socket the test already holds.

    async with RuntimeProcess({"MODELFLEET_MODEL": str(path)}, tmp_path) as runtime:
        await runtime.client.post("/predict", json={"features": [...]})

The test binds the socket (port 0 on 127.0.0.1) and hands it to the server
with `--listen-fd`, so no other process can take the port between choosing it
and serving on it, and a server that dies leaves the socket listening: requests
wait in its backlog for the next server started on the same `listener`.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

from .polling import wait_for
from .processes import ChildProcess

RUNTIME = str(Path(sys.executable).with_name("modelfleet-runtime"))
READY_PATH = "/v2/health/ready"


def listening_socket(host: str = "127.0.0.1", backlog: int = 512, *, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to a port the system chose and listening; inheritable by a child process.

    With `reuse_port` the runtime's supervisor gives each of its workers a sibling socket on the
    same port, as it does with the port it binds itself (runtime/modelfleet_runtime/supervisor.py).
    """
    listener = socket.create_server((host, 0), backlog=backlog, reuse_port=reuse_port)
    listener.set_inheritable(True)
    return listener


class RuntimeProcess:
    """One `modelfleet-runtime serve` process: `start()`, `wait_ready()`, `stop()` (SIGTERM), `kill()`.

    `env` holds its MODELFLEET_* settings (the process inherits the rest of the test's
    environment). Without a `listener` it makes one and closes it when stopped.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        workdir: Path,
        *,
        listener: socket.socket | None = None,
        args: tuple[str, ...] = (),
        name: str = "runtime",
    ) -> None:
        self._own_listener = listener is None
        self.listener = listener if listener is not None else listening_socket()
        host, port = self.listener.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        fd = self.listener.fileno()
        # gRPC off unless `env` sets MODELFLEET_GRPC_PORT: its default 8081 would be shared by every runtime.
        environ = {
            **os.environ,
            "MODELFLEET_LOG_LEVEL": "warning",
            "MODELFLEET_CACHE_DIR": str(workdir),
            "MODELFLEET_GRPC_PORT": "0",
            **env,
        }
        self.child = ChildProcess(
            [RUNTIME, "serve", "--listen-fd", str(fd), *args], environ, workdir / f"{name}.log", pass_fds=[fd]
        )
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        """An HTTP client on this server's address (made at the first use, closed by stop())."""
        if self._client is None:
            limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
            self._client = httpx.AsyncClient(base_url=self.url, limits=limits, timeout=60)
        return self._client

    async def start(self) -> None:
        await self.child.start()

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the readiness endpoint answers 200; fails at once, with its log, if the process exits."""

        async def ready() -> bool:
            assert self.child.running, f"the runtime exited with {self.child.returncode}:\n{self.child.log_tail()}"
            try:
                return (await self.client.get(READY_PATH, timeout=5)).status_code == 200
            except httpx.TransportError:
                return False

        await wait_for(ready, timeout, interval=0.05, message=lambda: f"the runtime ready:\n{self.child.log_tail()}")

    def kill(self) -> None:
        """SIGKILL now, as a node failure would; the listener stays open."""
        self.child.kill()

    async def wait(self) -> int:
        return await self.child.wait()

    async def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM (the server drains), SIGKILL after `grace`; returns the exit code."""
        code = await self.child.stop(grace)
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._own_listener:
            self.listener.close()
        return code

    async def __aenter__(self) -> Self:
        await self.start()
        try:
            await self.wait_ready()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
