"""Fallback load generator when wrk is not installed: keep-alive HTTP/1.1 POSTs over raw asyncio sockets.

Runs in its own process (uvloop when available), holds `--connections`
connections open, each sending the body in `--body-file` back to back for
`--duration` seconds, and prints the same JSON line as bench/post.lua.

With `--entities N` the body file holds the request's own features (a JSON
array) and every request is `{"entity_id": ID, "features": [...]}` with the
next id of "0" .. "N-1" (from `--entity-start`), like bench/entity.lua.

    python bench/loadgen.py --url http://127.0.0.1:8080/predict --body-file body.json --connections 64 --duration 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from urllib.parse import urlsplit


class _Requests:
    """The requests to send, in turn, shared by all connections (one event loop: no lock needed)."""

    def __init__(self, requests: list[bytes], start: int = 0) -> None:
        self.requests = requests
        self.index = start % len(requests)

    def next(self) -> bytes:
        request = self.requests[self.index]
        self.index = (self.index + 1) % len(self.requests)
        return request


async def _connection(
    host: str, port: int, requests: _Requests, deadline: float, latencies: list[float], errors: dict[str, int]
) -> None:
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        errors["connect"] += 1
        return
    try:
        while time.perf_counter() < deadline:
            request = requests.next()
            started = time.perf_counter()
            writer.write(request)
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            except TimeoutError:
                errors["timeout"] += 1
                return
            except (asyncio.IncompleteReadError, ConnectionError):
                errors["read"] += 1
                return
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if not head.startswith(b"HTTP/1.1 2"):
                errors["status"] += 1
    finally:
        writer.close()


# The request's headers besides Host and Content-Length: the lines of `<body file>.headers` when it exists.
HEADERS = "Content-Type: application/json\r\n"


def _request(path: str, host: str, port: int, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{HEADERS}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _run(
    url: str, body: bytes, connections: int, duration: float, entities: int = 0, entity_start: int = 0
) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path or "/"
    if entities:
        features = body.strip()
        bodies = [b'{"entity_id":"%d","features":%s}' % (n, features) for n in range(entities)]
    else:
        bodies = [body]
    requests = _Requests([_request(path, host, port, b) for b in bodies], entity_start)
    latencies: list[float] = []
    errors = dict.fromkeys(("connect", "read", "write", "status", "timeout"), 0)
    started = time.perf_counter()
    deadline = started + duration
    await asyncio.gather(*(_connection(host, port, requests, deadline, latencies, errors) for _ in range(connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(q: float) -> int:
        return int(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e6) if latencies else 0

    return {
        "requests": len(latencies),
        "duration_us": int(elapsed * 1e6),
        "p50_us": pct(0.5),
        "p99_us": pct(0.99),
        "mean_us": round(sum(latencies) / len(latencies) * 1e6, 1) if latencies else 0.0,
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--body-file", required=True)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument(
        "--entities",
        type=int,
        default=0,
        help="rotate entity ids 0..N-1; the body file then holds the request's own features",
    )
    parser.add_argument("--entity-start", type=int, default=0, help="first entity id")
    args = parser.parse_args()
    with open(args.body_file, "rb") as f:
        body = f.read()
    sidecar = Path(args.body_file + ".headers")
    if sidecar.exists():
        global HEADERS
        HEADERS = "".join(line + "\r\n" for line in sidecar.read_text().splitlines() if line.strip())
    try:
        from uvloop import run
    except ImportError:
        run = asyncio.run
    print(json.dumps(run(_run(args.url, body, args.connections, args.duration, args.entities, args.entity_start))))


if __name__ == "__main__":
    main()
