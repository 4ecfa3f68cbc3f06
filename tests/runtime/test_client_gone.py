"""A client that goes away is a 499, never a server error (issue 11, finding 5)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelfleet_runtime.settings import Settings
from tests.support.live_server import Live, live_server
from tests.support.polling import wait_for


def request_counts(metrics_text: str) -> dict[tuple[str, str], float]:
    """(endpoint, code) -> requests, from modelfleet_requests_total."""
    counts: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "modelfleet_requests":
            for sample in family.samples:
                if sample.name == "modelfleet_requests_total":
                    counts[(sample.labels["endpoint"], sample.labels["code"])] = sample.value
    return counts


async def send_and_leave(live: Live, path: str, head: bytes, declared: int) -> None:
    """Send the headers and the first `head` bytes of a `declared`-byte JSON body, then close."""
    port = int(live.url.rsplit(":", 1)[1])
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\n\r\n".encode()
        + head
    )
    await writer.drain()
    writer.close()
    await writer.wait_closed()


@pytest.fixture
def server_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Records of the runtime's and uvicorn's loggers (uvicorn's do not propagate to the root)."""
    caplog.set_level(logging.INFO)
    uvicorn_errors = logging.getLogger("uvicorn.error")
    uvicorn_errors.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        uvicorn_errors.removeHandler(caplog.handler)


async def test_aborted_uploads_are_499_and_leave_the_5xx_counters_alone(
    mlp_path: Path, server_logs: pytest.LogCaptureFixture
) -> None:
    settings = Settings(model=str(mlp_path), name="fraud", warmup_iterations=1)
    async with live_server(settings) as live:
        for _ in range(10):
            await send_and_leave(live, "/predict", b'{"instances": [[1, 2, 3, 4], [1,', declared=10_000)
            await send_and_leave(live, "/v2/models/fraud/infer", b'{"inputs": [{"name": "x", ', declared=10_000)

        async def counts() -> dict[tuple[str, str], float]:
            return request_counts((await live.client.get("/metrics")).text)

        async def all_answered() -> bool:
            return sum(n for (endpoint, _), n in (await counts()).items() if endpoint != "/metrics") >= 20

        await wait_for(all_answered)
        answered = await counts()
        # The server still serves.
        served = await live.client.post("/predict", json={"features": [1, 2, 3, 4]})
    assert served.status_code == 200
    assert answered[("/predict", "499")] == 10
    assert answered[("/v2/models/{name}/infer", "499")] == 10
    assert not [key for key in answered if key[1].startswith("5")], answered
    assert not [r for r in server_logs.records if r.levelno >= logging.ERROR], server_logs.text
    gone = [r for r in server_logs.records if "closed the connection before sending the whole body" in r.message]
    assert len(gone) == 20 and all(r.levelno == logging.INFO and r.exc_info is None for r in gone)
