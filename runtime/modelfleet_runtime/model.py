"""One onnxruntime session and what the model says about its tensors.

Knows nothing about HTTP or batching: it runs feeds, reports names, dtypes and
shapes, and warms itself up at the batch sizes the batcher will use.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .errors import InvalidValue, ModelLoadError

log = logging.getLogger("modelfleet.model")

# onnxruntime's status for values a graph cannot compute with (an index out of range, a shape a
# Reshape cannot take): the request's fault, not the server's.
_InvalidArgument = ort.capi.onnxruntime_pybind11_state.InvalidArgument
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : [A-Z_]+ : ")
_NODE_FAILURE = re.compile(r"while running (\w+) node\. Name:'([^']*)' Status Message: (.*)", re.DOTALL)
_MAX_REASON = 200

# ONNX tensor type -> (numpy dtype, Open Inference Protocol datatype)
_ORT_TYPES: dict[str, tuple[np.dtype, str]] = {
    "tensor(float)": (np.dtype(np.float32), "FP32"),
    "tensor(double)": (np.dtype(np.float64), "FP64"),
    "tensor(float16)": (np.dtype(np.float16), "FP16"),
    "tensor(int8)": (np.dtype(np.int8), "INT8"),
    "tensor(int16)": (np.dtype(np.int16), "INT16"),
    "tensor(int32)": (np.dtype(np.int32), "INT32"),
    "tensor(int64)": (np.dtype(np.int64), "INT64"),
    "tensor(uint8)": (np.dtype(np.uint8), "UINT8"),
    "tensor(uint16)": (np.dtype(np.uint16), "UINT16"),
    "tensor(uint32)": (np.dtype(np.uint32), "UINT32"),
    "tensor(uint64)": (np.dtype(np.uint64), "UINT64"),
    "tensor(bool)": (np.dtype(np.bool_), "BOOL"),
    # onnxruntime takes and gives string tensors as object arrays of str.
    "tensor(string)": (np.dtype(object), "BYTES"),
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: np.dtype
    datatype: str
    # None marks a dimension the model leaves free (symbolic or unknown).
    shape: tuple[int | None, ...]

    @property
    def row_shape(self) -> tuple[int | None, ...]:
        return self.shape[1:]

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": [-1 if d is None else d for d in self.shape]}


def _spec(node: ort.NodeArg) -> TensorSpec:
    if node.type not in _ORT_TYPES:
        raise ModelLoadError(f"tensor {node.name!r} has type {node.type}, which this server does not support")
    dtype, datatype = _ORT_TYPES[node.type]
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in (node.shape or []))
    return TensorSpec(node.name, dtype, datatype, shape)


class OnnxModel:
    """A loaded model. `run` may be called from any one thread at a time per batch."""

    def __init__(self, path: Path, *, intra_op_threads: int = 0, inter_op_threads: int = 0) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        if inter_op_threads:
            options.inter_op_num_threads = inter_op_threads
        # A refused request is answered (422) and logged by the server; onnxruntime need not print it too.
        self._run_options = ort.RunOptions()
        self._run_options.log_severity_level = 4
        # Spinning worker threads would compete with the event loop for the same cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise ModelLoadError(f"onnxruntime cannot load {path}: {exc}") from exc
        self.inputs = [_spec(n) for n in self.session.get_inputs()]
        self.outputs = [_spec(n) for n in self.session.get_outputs()]
        for spec in self.inputs:
            if not spec.shape:
                raise ModelLoadError(f"input {spec.name!r} is a scalar; the server batches along a first dimension")
            if any(d is None for d in spec.row_shape):
                raise ModelLoadError(
                    f"input {spec.name!r} has shape {spec.metadata()['shape']}: only the first "
                    "(batch) dimension may be free"
                )
        self.output_names = [o.name for o in self.outputs]
        fixed = {s.shape[0] for s in self.inputs if s.shape[0] is not None}
        # A model exported with a fixed batch dimension of 1 can still be served, one row per run.
        self.max_rows_per_run: int | None = min(fixed) if fixed else None

    @property
    def single_input(self) -> TensorSpec | None:
        return self.inputs[0] if len(self.inputs) == 1 else None

    @property
    def input_width(self) -> int | None:
        """Features per row for the common single 2-D numeric input; None for other shapes and strings."""
        spec = self.single_input
        if spec is None or len(spec.shape) != 2 or spec.dtype.kind == "O":
            return None
        return spec.shape[1]

    @property
    def input_dtype(self) -> np.dtype | None:
        spec = self.single_input
        return spec.dtype if spec else None

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's outputs for `feeds`; InvalidValue (422) when the graph refuses their values."""
        try:
            results = self.session.run(self.output_names, feeds, self._run_options)
        except _InvalidArgument as exc:
            raise InvalidValue(self._refusal(str(exc))) from None
        return dict(zip(self.output_names, results, strict=True))

    def _refusal(self, text: str) -> str:
        """onnxruntime's INVALID_ARGUMENT told in terms of the model's inputs, without its framing."""
        log.debug("onnxruntime refused a request's values: %s", text)
        names = ", ".join(repr(spec.name) for spec in self.inputs)
        subject = f"input {names}" if len(self.inputs) == 1 else f"one of the inputs {names}"
        reason = _ORT_PREFIX.sub("", text).strip()
        node = _NODE_FAILURE.search(reason)
        if node is not None:
            op, name, detail = node.groups()
            reason = f"{op} node {name!r}: {detail.strip()}"
        if len(reason) > _MAX_REASON:
            reason = reason[: _MAX_REASON - 3] + "..."
        return f"{subject} holds values the model cannot compute with ({reason})"

    def sample_feeds(self, rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        feeds = {}
        for spec in self.inputs:
            # OnnxModel refused inputs with a free dimension past the first one.
            row_shape = tuple(d for d in spec.row_shape if d is not None)
            assert len(row_shape) == len(spec.row_shape), f"input {spec.name!r} has a free row dimension"
            shape = (rows, *row_shape)
            if spec.dtype.kind == "f":
                feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
            elif spec.dtype.kind == "b":
                feeds[spec.name] = rng.integers(0, 2, shape).astype(bool)
            elif spec.dtype.kind == "O":
                feeds[spec.name] = np.array([f"warmup {i}" for i in range(math.prod(shape))], dtype=object).reshape(
                    shape
                )
            else:
                feeds[spec.name] = rng.integers(0, 2, shape).astype(spec.dtype)
        return feeds

    def warmup(self, iterations: int, max_batch_size: int) -> list[int]:
        """Run `iterations` inferences cycling through the batch sizes the batcher will form.

        Every size is run at least once, so each is ready before the first request.
        """
        largest = max_batch_size if self.max_rows_per_run is None else self.max_rows_per_run
        sizes = sorted({1, largest} | {s for s in (2, 4, 8, 16, 32, 64, 128, 256) if s < largest})
        if self.max_rows_per_run is not None:
            sizes = [self.max_rows_per_run]
        rng = np.random.default_rng(0)
        count = max(iterations, len(sizes)) if iterations else 0
        started = time.perf_counter()
        for i in range(count):
            try:
                self.run(self.sample_feeds(sizes[i % len(sizes)], rng))
            except Exception as exc:
                raise ModelLoadError(f"warmup inference at batch size {sizes[i % len(sizes)]} failed: {exc}") from exc
        log.info("warmup: %d inferences at batch sizes %s in %.3fs", count, sizes, time.perf_counter() - started)
        return sizes
