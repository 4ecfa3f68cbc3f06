"""The two benchmark models, built with onnx.helper from a fixed seed.

tabular: 32 -> 256 -> 256 -> 1 (Sigmoid), a typical fraud/churn scorer.
wide:    256 -> 1024 -> 1024 -> 10 (Softmax), a heavier multi-class MLP.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# name -> (layer widths, final activation)
MODELS: dict[str, tuple[tuple[int, ...], str]] = {
    "tabular": ((32, 256, 256, 1), "Sigmoid"),
    "wide": ((256, 1024, 1024, 10), "Softmax"),
}


def build_mlp(widths: tuple[int, ...], head: str, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    current = "features"
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [f"z{i}"]))
        last = i == len(widths) - 2
        current = "output" if last else f"h{i}"
        if last:
            attrs = {"axis": -1} if head == "Softmax" else {}
            nodes.append(helper.make_node(head, [f"z{i}"], [current], **attrs))
        else:
            nodes.append(helper.make_node("Relu", [f"z{i}"], [current]))
    graph = helper.make_graph(
        nodes,
        "bench_mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", widths[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", widths[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="modelfleet-bench")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_models(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (widths, head) in MODELS.items():
        paths[name] = folder / f"{name}.onnx"
        onnx.save(build_mlp(widths, head), str(paths[name]))
    return paths


def input_width(name: str) -> int:
    return MODELS[name][0][0]
