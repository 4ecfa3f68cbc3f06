"""The comparison server: a plain, unbatched FastAPI endpoint around one InferenceSession.

What a careful engineer writes in an afternoon: orjson in and out, a numpy
array, one `session.run` per request, no queue. The run happens inline on the
event loop (for models this small a thread hop costs more than it saves, and
nothing else would use the loop meanwhile). Same uvicorn settings as the other
servers: one worker, uvloop, httptools, no access log.

    python -m bench.naive_server --model PATH --port 8081 [--intra-op-threads N]   (from the repository root)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort
import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response

from bench.one_worker import run


def create_app(model_path: str, intra_op_threads: int = 0) -> FastAPI:
    options = ort.SessionOptions()
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    session = ort.InferenceSession(model_path, sess_options=options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    width = session.get_inputs()[0].shape[1]
    app = FastAPI()

    def error(message: str) -> Response:
        return Response(orjson.dumps({"error": message}), status_code=400, media_type="application/json")

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        try:
            payload = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            return error(f"malformed JSON: {exc}")
        single = "features" in payload
        rows = [payload["features"]] if single else payload.get("instances")
        try:
            x = np.asarray(rows, dtype=np.float32)
        except (TypeError, ValueError):
            return error("features must be lists of numbers")
        if x.ndim != 2 or x.shape[1] != width:
            return error(f"expected rows of {width} features")
        out = session.run(None, {input_name: x})[0]
        values = out[:, 0].tolist() if out.shape[1] == 1 else out.tolist()
        answer = {"prediction": values[0]} if single else {"predictions": values}
        answer["latency_ms"] = round((time.perf_counter() - started) * 1000.0, 3)
        return Response(orjson.dumps(answer), media_type="application/json")

    @app.get("/health")
    async def health() -> Response:
        return Response(b'{"status":"healthy"}', media_type="application/json")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--intra-op-threads", type=int, default=0)
    args = parser.parse_args()
    run(create_app(args.model, args.intra_op_threads), args.host, args.port)


if __name__ == "__main__":
    main()
