"""Real ONNX models (onnx.helper) for the protocol tests: every datatype, mixed inputs, strings.

Each model changes its inputs (x + 1, not x, a label lookup), so an answer shows what the
model received: a server that decoded a tensor wrongly cannot pass by echoing its bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .onnx_models import save_model

# Open Inference Protocol datatype -> (ONNX element type, NumPy dtype), the numeric ones and BOOL.
NUMERIC = {
    "BOOL": (TensorProto.BOOL, np.bool_),
    "UINT8": (TensorProto.UINT8, np.uint8),
    "UINT16": (TensorProto.UINT16, np.uint16),
    "UINT32": (TensorProto.UINT32, np.uint32),
    "UINT64": (TensorProto.UINT64, np.uint64),
    "INT8": (TensorProto.INT8, np.int8),
    "INT16": (TensorProto.INT16, np.int16),
    "INT32": (TensorProto.INT32, np.int32),
    "INT64": (TensorProto.INT64, np.int64),
    "FP16": (TensorProto.FLOAT16, np.float16),
    "FP32": (TensorProto.FLOAT, np.float32),
    "FP64": (TensorProto.DOUBLE, np.float64),
}
WIDTH = 3
LABELS = ["cat", "dog", "émeu"]


def _plus_one(datatype: str, source: str, target: str) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    if datatype == "BOOL":
        return helper.make_node("Not", [source], [target]), []
    one = numpy_helper.from_array(np.array(1, dtype=NUMERIC[datatype][1]), f"one_{datatype}")
    return helper.make_node("Add", [source, one.name], [target]), [one]


def build_every_datatype(path: Path, datatypes: tuple[str, ...] = tuple(NUMERIC)) -> Path:
    """Inputs `in_<DATATYPE>` [batch, 3] for each datatype; `out_<DATATYPE>` = in + 1 (BOOL: not)."""
    nodes, inits, inputs, outputs = [], [], [], []
    for datatype in datatypes:
        element = NUMERIC[datatype][0]
        source, target = f"in_{datatype}", f"out_{datatype}"
        inputs.append(helper.make_tensor_value_info(source, element, ["batch", WIDTH]))
        outputs.append(helper.make_tensor_value_info(target, element, ["batch", WIDTH]))
        node, constants = _plus_one(datatype, source, target)
        nodes.append(node)
        inits += constants
    return save_model(helper.make_graph(nodes, "every_datatype", inputs, outputs, inits), path)


def build_mixed(path: Path) -> Path:
    """x FP32 [batch, 3] and k INT64 [batch, 1] -> scaled = x * k (FP32), next = k + 1 (INT64)."""
    one = numpy_helper.from_array(np.array(1, dtype=np.int64), "one")
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["k"], ["k_float"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["x", "k_float"], ["scaled"]),
            helper.make_node("Add", ["k", "one"], ["next"]),
        ],
        "mixed",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("k", TensorProto.INT64, ["batch", 1]),
        ],
        [
            helper.make_tensor_value_info("scaled", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("next", TensorProto.INT64, ["batch", 1]),
        ],
        [one],
    )
    return save_model(graph, path)


def build_labels(path: Path) -> Path:
    """text BYTES [batch, 2] -> ids = index in LABELS (-1 if absent, INT64), echo = text (BYTES)."""
    graph = helper.make_graph(
        [
            helper.make_node(
                "LabelEncoder",
                ["text"],
                ["ids"],
                domain="ai.onnx.ml",
                keys_strings=LABELS,
                values_int64s=list(range(len(LABELS))),
                default_int64=-1,
            ),
            helper.make_node("Identity", ["text"], ["echo"]),
        ],
        "labels",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch", 2])],
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 2]),
            helper.make_tensor_value_info("echo", TensorProto.STRING, ["batch", 2]),
        ],
    )
    return save_model(graph, path, ml=True)


def extreme_rows(datatype: str) -> np.ndarray:
    """Two rows of values that `out = in + 1` keeps in range, including the largest such value (exact in no float)."""
    dtype = NUMERIC[datatype][1]
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if np.dtype(dtype).kind == "f":
        return np.array([[0.5, -2.25, 1000.0], [3.0, -0.125, 7.5]], dtype=dtype)
    info = np.iinfo(dtype)
    top = int(info.max) - 1
    return np.array([[int(info.min), 0, top], [7, top - 1, 1]], dtype=dtype)


def expected(datatype: str, rows: np.ndarray) -> np.ndarray:
    if datatype == "BOOL":
        return ~rows
    return rows + np.array(1, dtype=rows.dtype)
