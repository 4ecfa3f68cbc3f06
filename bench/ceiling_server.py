"""The HTTP-stack ceiling: the same FastAPI + uvicorn stack answering a constant.

It reads the request body (every real server must) and returns a fixed JSON
answer without parsing or computing anything, so its req/s is the most any
FastAPI endpoint can do on this machine with one worker.

    python -m bench.ceiling_server --port 8082     (from the repository root)
"""

from __future__ import annotations

import argparse

from fastapi import FastAPI, Request
from starlette.responses import Response

from bench.one_worker import run

ANSWER = b'{"prediction":0.5,"latency_ms":0.0}'


def create_app() -> FastAPI:
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        await request.body()
        return Response(ANSWER, media_type="application/json")

    @app.get("/health")
    async def health() -> Response:
        return Response(b'{"status":"healthy"}', media_type="application/json")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8082)
    args = parser.parse_args()
    run(create_app(), args.host, args.port)


if __name__ == "__main__":
    main()
