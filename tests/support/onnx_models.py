"""Small real ONNX models built with onnx.helper, shared by every suite."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def save_model(graph: onnx.GraphProto, path: Path, *, ml: bool = False) -> Path:
    """`graph` as a checked opset-17 model at `path` (`ml`: with the ai.onnx.ml operators too)."""
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("ai.onnx.ml", 3)] if ml else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def build_mlp(
    path: Path,
    sizes: tuple[int, ...] = (4, 16, 1),
    *,
    softmax: bool = False,
    seed: int = 0,
    input_name: str = "x",
    output_name: str = "y",
) -> Path:
    """Gemm/Relu layers of `sizes`; the last layer is linear, or Softmax when `softmax`."""
    rng = np.random.default_rng(seed)
    nodes, inits, current = [], [], input_name
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(sizes) - 2
        out = (output_name if not softmax else "logits") if last else f"h{i}"
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [out]))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"{out}_relu"]))
            out = f"{out}_relu"
        current = out
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], [output_name], axis=1))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", sizes[-1]])],
        inits,
    )
    return save_model(graph, path)


def build_logistic(path: Path, w: np.ndarray, b: float = 0.0) -> Path:
    """A logistic regression: x -> Sigmoid(x @ w + b), one probability per row."""
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["logit"]), helper.make_node("Sigmoid", ["logit"], ["p"])],
        "logistic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", len(w)])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["batch", 1])],
        [
            numpy_helper.from_array(np.asarray(w).reshape(-1, 1).astype(np.float32), "w"),
            numpy_helper.from_array(np.array([b], np.float32), "b"),
        ],
    )
    return save_model(graph, path)


def build_two_output(path: Path, width: int = 3) -> Path:
    """x -> (doubled = 2x, total = sum(x) per row): a model with two outputs."""
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["doubled"]),
            helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=1),
        ],
        "two_outputs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [
            helper.make_tensor_value_info("doubled", TensorProto.FLOAT, ["batch", width]),
            helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch", 1]),
        ],
        [two, axes],
    )
    return save_model(graph, path)


TABLE_ROWS = 10


def build_lookup(path: Path) -> Path:
    """idx (int64, one per row) -> row idx of a table of TABLE_ROWS rows [2i, 2i+1]; an index out of range
    is refused by onnxruntime itself (INVALID_ARGUMENT from the Gather node named 'lookup')."""
    table = numpy_helper.from_array(np.arange(2 * TABLE_ROWS, dtype=np.float32).reshape(TABLE_ROWS, 2), "table")
    shape = numpy_helper.from_array(np.array([-1, 2], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "idx"], ["rows"], axis=0, name="lookup"),
            helper.make_node("Reshape", ["rows", "shape"], ["y"]),
        ],
        "lookup",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [table, shape],
    )
    return save_model(graph, path)


def with_external_weights(path: Path, location: str) -> Path:
    """Rewrite the model at `path` to keep its weights outside the .onnx file, at `location`.

    `location` is stored as given, and the weights are written where it points from the
    model's folder, so a test can make a model whose data lies outside its folder.
    """
    model = onnx.load(str(path))
    data = b""
    for tensor in model.graph.initializer:
        raw = numpy_helper.to_array(tensor).tobytes()
        offset, data = len(data), data + raw
        tensor.ClearField("raw_data")
        tensor.ClearField("float_data")
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(raw)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    (path.parent / location).write_bytes(data)
    path.write_bytes(model.SerializeToString())
    return path
