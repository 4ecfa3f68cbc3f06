"""Connection bounds (DESIGN.md section 9): slow and idle clients are cut off, memory stays bounded.

Raw sockets on 127.0.0.1 against the real runtime process. Nothing here asserts
a duration: each test sets a short deadline on the server and waits, with a
deadline many times longer, for the server to close the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.onnx_models import build_mlp
from tests.support.polling import wait_for
from tests.support.runtime_process import RuntimeProcess

# Far longer than any deadline the tests set: it only ends a test that hangs.
CLOSED_WITHIN = 60.0
PREDICT = b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"


@contextlib.asynccontextmanager
async def runtime(tmp_path: Path, **env: str) -> AsyncIterator[RuntimeProcess]:
    settings = {"MODELFLEET_MODEL": str(build_mlp(tmp_path / "mlp.onnx")), "MODELFLEET_WARMUP_ITERATIONS": "1"}
    async with RuntimeProcess({**settings, **env}, tmp_path) as process:
        yield process


@pytest.fixture
async def strict(tmp_path: Path) -> AsyncIterator[RuntimeProcess]:
    """Deadlines of one second, so that the server gives up long before the test does."""
    async with runtime(
        tmp_path,
        MODELFLEET_HEADER_TIMEOUT_SECONDS="1",
        MODELFLEET_BODY_TIMEOUT_SECONDS="1",
        MODELFLEET_KEEP_ALIVE_TIMEOUT_SECONDS="1",
    ) as process:
        yield process


async def connect(process: RuntimeProcess) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = process.listener.getsockname()[:2]
    return await asyncio.open_connection(host, port)


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (fails the test if it never does)."""
    return await asyncio.wait_for(reader.read(), CLOSED_WITHIN)


async def trickle(writer: asyncio.StreamWriter, data: bytes, closed: asyncio.Task[bytes]) -> None:
    """Send `data` a byte at a time, as a slowloris client does, until the server closes the connection."""
    for byte in data:
        if closed.done():
            return
        with contextlib.suppress(ConnectionError):
            writer.write(bytes([byte]))
            await writer.drain()
        await asyncio.sleep(0.1)  # the client's pace, not a synchronisation


def status_and_error(response: bytes) -> tuple[int, str]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), orjson.loads(body)["error"]


def counter(text: str, name: str, **labels: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def test_an_idle_connection_is_closed_by_the_header_deadline(strict: RuntimeProcess) -> None:
    reader, writer = await connect(strict)
    assert await read_until_closed(reader) == b""  # closed, and nothing to answer
    writer.close()
    text = (await strict.client.get("/metrics")).text
    assert counter(text, "modelfleet_connections_timed_out_total", phase="header") == 1


async def test_a_header_trickle_gets_408_and_is_closed(strict: RuntimeProcess) -> None:
    reader, writer = await connect(strict)
    closed = asyncio.create_task(read_until_closed(reader))
    await trickle(writer, PREDICT + b"X-Slow: " + b"a" * 600 + b"\r\n\r\n", closed)
    status, error = status_and_error(await closed)
    assert status == 408 and "request head did not arrive within 1s" in error
    writer.close()


async def test_a_body_trickle_gets_408_counted_and_is_closed(strict: RuntimeProcess) -> None:
    body = orjson.dumps({"features": [0.5] * 4}) + b" " * 500
    reader, writer = await connect(strict)
    writer.write(PREDICT + b"Content-Length: %d\r\n\r\n" % len(body))
    closed = asyncio.create_task(read_until_closed(reader))
    await trickle(writer, body, closed)
    status, error = status_and_error(await closed)
    assert status == 408 and "request body did not arrive within 1s" in error
    writer.close()
    text = (await strict.client.get("/metrics")).text
    assert counter(text, "modelfleet_connections_timed_out_total", phase="body") == 1
    assert counter(text, "modelfleet_requests_total", endpoint="/predict", code="408") == 1
    assert counter(text, "modelfleet_requests_total", endpoint="/predict", code="500") == 0


async def test_a_kept_alive_connection_is_closed_when_idle(strict: RuntimeProcess) -> None:
    body = orjson.dumps({"features": [0.5] * 4})
    reader, writer = await connect(strict)
    writer.write(PREDICT + b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    response = await read_until_closed(reader)  # answered, then closed by the keep-alive timeout
    assert response.startswith(b"HTTP/1.1 200") and b'"prediction"' in response
    writer.close()


async def test_a_request_head_over_the_limit_gets_431(tmp_path: Path) -> None:
    async with runtime(tmp_path, MODELFLEET_MAX_HEADER_BYTES="4096") as process:
        reader, writer = await connect(process)
        writer.write(PREDICT + b"X-Big: " + b"a" * 20000)  # never ends its head
        status, error = status_and_error(await read_until_closed(reader))
        writer.close()
        assert status == 431 and "exceeds 4096 bytes" in error
        # A normal request still gets through.
        assert (await process.client.post("/predict", json={"features": [0.5] * 4})).status_code == 200


async def test_over_the_concurrency_cap_requests_get_a_counted_503(tmp_path: Path) -> None:
    async with runtime(tmp_path, MODELFLEET_LIMIT_CONCURRENCY="4") as process:
        held = [await connect(process) for _ in range(4)]
        body = orjson.dumps({"features": [0.5] * 4})
        reader, writer = await connect(process)
        writer.write(PREDICT + b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        response = await read_until_closed(reader)  # answered with connection: close
        writer.close()
        assert response.startswith(b"HTTP/1.1 503")
        assert b"retry-after: 1" in response.lower() and b"connection: close" in response.lower()
        assert "limit of 4 concurrent connections and requests" in status_and_error(response)[1]
        for _, held_writer in held:
            held_writer.close()

        async def metrics() -> str | None:
            answer = await process.client.get("/metrics")
            return answer.text if answer.status_code == 200 else None

        text = await wait_for(metrics, timeout=CLOSED_WITHIN, message="the server under its cap again")
        assert counter(text, "modelfleet_requests_rejected_total", endpoint="/predict", reason="concurrency") == 1
        assert counter(text, "modelfleet_requests_total", endpoint="/predict", code="503") == 1


def peak_and_current_rss(pid: int) -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmHWM"].split()[0]) * 1024, int(fields["VmRSS"].split()[0]) * 1024


async def test_a_hundred_sockets_holding_partial_bodies_do_not_grow_memory_without_bound(tmp_path: Path) -> None:
    """Without the cap the server would buffer all 100 bodies (300 MiB); with it, at most its limit's worth."""
    async with runtime(
        tmp_path,
        MODELFLEET_LIMIT_CONCURRENCY="20",
        MODELFLEET_BODY_TIMEOUT_SECONDS="5",
        MODELFLEET_HEADER_TIMEOUT_SECONDS="30",
    ) as process:
        pid = process.child.pid
        _, before = peak_and_current_rss(pid)
        sent = b"[" + b"0.5," * (3 * 1024 * 1024 // 4)  # 3 MiB of a 4 MiB body that never ends
        sockets = [await connect(process) for _ in range(100)]

        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
            with contextlib.suppress(ConnectionError):
                writer.write(PREDICT + b"Content-Length: %d\r\n\r\n" % (4 * 1024 * 1024 - 1) + sent)
                await writer.drain()
            try:
                return await read_until_closed(reader)
            except ConnectionError:
                return b""  # refused over the cap and reset while still sending
            finally:
                writer.close()

        answers = await asyncio.gather(*(hold(r, w) for r, w in sockets))
        peak, _ = peak_and_current_rss(pid)
        statuses = sorted({a.split(b" ", 2)[1] for a in answers if a})
        assert set(statuses) <= {b"408", b"503"}, statuses
        assert peak - before < 150 * 1024 * 1024, f"grew by {(peak - before) / 2**20:.0f} MiB"
        # Every socket was refused at the cap or cut off by the body deadline; the server still serves.
        text = (await process.client.get("/metrics")).text
        refused = counter(text, "modelfleet_requests_rejected_total", reason="concurrency")
        timed_out = counter(text, "modelfleet_connections_timed_out_total", phase="body")
        assert refused >= 1 and refused + timed_out == 100
        assert (await process.client.post("/predict", json={"features": [0.5] * 4})).status_code == 200
