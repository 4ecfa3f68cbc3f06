"""PyTriton for the benchmark: Triton's C++ HTTP server and dynamic batcher around one InferenceSession.

Runs under PyTriton's own virtualenv, never the project's (nvidia-pytriton is not a
dependency of ModelFleet): bench_runtime.py starts it with the interpreter named by
`--pytriton-python` or `MODELFLEET_BENCH_PYTRITON` and skips it when neither is given.
Needs only numpy, onnxruntime and nvidia-pytriton in that virtualenv.

    /work/pytriton-venv/bin/python bench/pytriton_server.py --model PATH --host 127.0.0.1 --port 8000

Serves the model as `m` on the Open Inference Protocol (`POST /v2/models/m/infer`,
`GET /v2/health/ready`), with Triton's dynamic batcher (up to 64 rows, no queue delay:
the same policy as ModelFleet's batcher) and one Python model instance, gRPC off,
metrics on a free port of 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import socket
import sysconfig
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def same_libpython() -> None:
    """Make Triton's Python stub load this interpreter's libpython, not the system's.

    The stub links libpython3.X.so.1.0 and finds the system's first when it has one; with a
    different patch release than the stdlib this virtualenv's modules come from, model loading
    fails (e.g. `'_thread.RLock' object has no attribute '_recursion_count'`).
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and any(Path(libdir).glob("libpython3*.so*")):
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--intra-op-threads", type=int, default=0)
    parser.add_argument("--max-batch-size", type=int, default=64)
    args = parser.parse_args()
    same_libpython()

    options = ort.SessionOptions()
    if args.intra_op_threads:
        options.intra_op_num_threads = args.intra_op_threads
    session = ort.InferenceSession(args.model, sess_options=options, providers=["CPUExecutionProvider"])
    source, target = session.get_inputs()[0], session.get_outputs()[0]

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        rows = inputs[source.name]
        return {target.name: session.run([target.name], {source.name: rows.astype(np.float32, copy=False)})[0]}

    config = TritonConfig(
        http_address=args.host,
        http_port=args.port,
        allow_grpc=False,
        metrics_address="127.0.0.1",
        metrics_port=free_port(),
        log_verbose=0,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name="m",
            infer_func=infer,
            inputs=[Tensor(name=source.name, dtype=np.float32, shape=(int(source.shape[1]),))],
            outputs=[Tensor(name=target.name, dtype=np.float32, shape=(-1,))],
            config=ModelConfig(
                max_batch_size=args.max_batch_size, batcher=DynamicBatcher(max_queue_delay_microseconds=0)
            ),
            strict=False,
        )
        triton.serve()


if __name__ == "__main__":
    main()
