"""The floor of any server on this stack: a bare ASGI callable on uvicorn answering a constant.

No framework at all: it reads the request body (every real server must) and
sends a fixed JSON answer, on the same uvicorn, uvloop and httptools as the
other servers. Its req/s is the most that any Python server on this stack
can do with one worker here; FastAPI's constant answer (ceiling_server.py)
shows what the framework costs on top.

    python -m bench.bare_server --port 8083        (from the repository root)
"""

from __future__ import annotations

import argparse
from typing import Any

from bench.one_worker import run

ANSWER = b'{"prediction":0.5,"latency_ms":0.0}'
HEALTH = b'{"status":"healthy"}'
HEADERS = [(b"content-type", b"application/json")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    body = HEALTH if scope["path"] == "/health" else ANSWER
    headers = [*HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8083)
    args = parser.parse_args()
    run(app, args.host, args.port)


if __name__ == "__main__":
    main()
