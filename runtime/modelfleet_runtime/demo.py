"""The built-in demo model: a small, deterministic fraud-score MLP made with onnx.helper.

8 float features -> Gemm(16) -> Relu -> Gemm(1) -> Sigmoid: a probability per row.
The weights come from a fixed seed, so every machine writes the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DEMO_FEATURES = 8
DEMO_HIDDEN = 16


def build_demo_model(seed: int = 7) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((DEMO_FEATURES, DEMO_HIDDEN)) * 0.5).astype(np.float32)
    b1 = (rng.standard_normal(DEMO_HIDDEN) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((DEMO_HIDDEN, 1)) * 0.5).astype(np.float32)
    b2 = np.zeros(1, dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["features", "w1", "b1"], ["h"]),
            helper.make_node("Relu", ["h"], ["h_relu"]),
            helper.make_node("Gemm", ["h_relu", "w2", "b2"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["probability"]),
        ],
        "modelfleet_demo",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", DEMO_FEATURES])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="modelfleet")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_demo_model(path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build_demo_model(), str(path))
    return path
