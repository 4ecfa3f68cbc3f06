"""An ONNX graph as trainable numpy: forward, backward, and writing the weights back.

The trainer's own small autodiff engine. It covers the operators of the models
it warm-starts (Gemm, MatMul, Add, Relu, Sigmoid, Softmax over the last axis);
any other operator is refused with UnsupportedModel before training starts, so
a graph is never trained half-understood. The graph itself is never changed:
only its float initializers, so the same runtime serves the result.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import UnsupportedModel

SUPPORTED_OPS = ("Gemm", "MatMul", "Add", "Relu", "Sigmoid", "Softmax")


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum `grad` down to `shape`, undoing numpy broadcasting."""
    while grad.ndim > len(shape):
        grad = grad.sum(axis=0)
    for axis, size in enumerate(shape):
        if size == 1 and grad.shape[axis] != 1:
            grad = grad.sum(axis=axis, keepdims=True)
    return grad


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    p: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return p


def sigmoid(z: np.ndarray) -> np.ndarray:
    y: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * z))  # stable for large |z|
    return y


class Network:
    """A trainable view of an ONNX graph: forward, backward, and writing the weights back."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        unsupported = sorted(
            {
                n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
                for n in graph.node
                if n.op_type not in SUPPORTED_OPS or n.domain not in ("", "ai.onnx")
            }
        )
        if unsupported:
            raise UnsupportedModel(
                f"cannot train this graph: unsupported operator{'s' if len(unsupported) > 1 else ''} "
                f"{', '.join(unsupported)}; the built-in trainer supports {', '.join(SUPPORTED_OPS)} "
                "(use a custom trainer image for other models)"
            )
        self.model = model
        self.nodes = list(graph.node)
        self.initial = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self.trainable = [name for name, a in self.initial.items() if a.dtype.kind == "f"]
        inputs = [i for i in graph.input if i.name not in self.initial]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise UnsupportedModel(
                f"the built-in trainer needs one input and one output; this graph has "
                f"{len(inputs)} input(s) and {len(graph.output)} output(s)"
            )
        self.input_name = inputs[0].name
        self.output_name = graph.output[0].name
        dims = inputs[0].type.tensor_type.shape.dim
        self.input_width = dims[1].dim_value if len(dims) == 2 and dims[1].HasField("dim_value") else None
        producers = [n for n in self.nodes if self.output_name in n.output]
        if not producers:
            raise UnsupportedModel(f"no node produces the output {self.output_name!r}")
        final = producers[0]
        self.task = {"Sigmoid": "binary", "Softmax": "multiclass"}.get(final.op_type, "regression")
        # For classifiers the loss gradient is taken at the activation's input (stable, exact).
        self.head = final.input[0] if self.task != "regression" else self.output_name
        for node in self.nodes:
            attrs = _attrs(node)
            if node.op_type == "Softmax" and attrs.get("axis", -1) not in (-1, 1):
                raise UnsupportedModel(f"Softmax over axis {attrs['axis']} is not supported (only the last axis)")

    def params(self) -> dict[str, np.ndarray]:
        return {name: self.initial[name].astype(np.float64) for name in self.trainable}

    def forward(self, params: Mapping[str, np.ndarray], x: np.ndarray) -> dict[str, np.ndarray]:
        values: dict[str, np.ndarray] = {**self.initial, **params, self.input_name: x}
        for node in self.nodes:
            # Every supported operator takes one or two inputs, and Gemm an optional third (C).
            ins = [values[name] for name in node.input[:2]]
            op, attrs = node.op_type, _attrs(node)
            if op == "Gemm":
                a = ins[0].T if attrs.get("transA", 0) else ins[0]
                b = ins[1].T if attrs.get("transB", 0) else ins[1]
                y = attrs.get("alpha", 1.0) * (a @ b)
                if len(node.input) > 2 and node.input[2]:
                    y = y + attrs.get("beta", 1.0) * values[node.input[2]]
            elif op == "MatMul":
                if ins[0].ndim != 2 or ins[1].ndim != 2:
                    raise UnsupportedModel(f"MatMul {node.name or node.output[0]!r} is not 2-D x 2-D")
                y = ins[0] @ ins[1]
            elif op == "Add":
                y = ins[0] + ins[1]
            elif op == "Relu":
                y = np.maximum(ins[0], 0.0)
            elif op == "Sigmoid":
                y = sigmoid(ins[0])
            else:  # Softmax
                y = softmax(ins[0])
            values[node.output[0]] = y
        return values

    def gradients(
        self, params: Mapping[str, np.ndarray], values: Mapping[str, np.ndarray], head_grad: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Backpropagate d(loss)/d(head) to every trainable initializer."""
        grads: dict[str, np.ndarray] = {self.head: head_grad}
        started = False
        for node in reversed(self.nodes):
            out = node.output[0]
            if not started:
                if out != self.head:
                    continue
                started = True
            g = grads.pop(out, None)
            if g is None:
                continue
            for name, grad in _input_gradients(node, values, g):
                if name == self.input_name or (name in self.initial and name not in params):
                    continue
                grads[name] = grads[name] + grad if name in grads else grad
        return {name: grads.get(name, np.zeros_like(p)) for name, p in params.items()}

    def with_weights(self, params: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> onnx.ModelProto:
        """The same graph with `params` as its initializers (in their original dtypes)."""
        child = copy.deepcopy(self.model)
        for init in child.graph.initializer:
            if init.name in params:
                init.CopyFrom(
                    numpy_helper.from_array(params[init.name].astype(self.initial[init.name].dtype), init.name)
                )
        for key, value in metadata.items():
            entry = next((p for p in child.metadata_props if p.key == key), None) or child.metadata_props.add()
            entry.key, entry.value = key, value
        return child


def _input_gradients(
    node: onnx.NodeProto, values: Mapping[str, np.ndarray], g: np.ndarray
) -> list[tuple[str, np.ndarray]]:
    """d(loss)/d(input) for each input of `node`, given `g` = d(loss)/d(its output)."""
    ins, out = list(node.input), node.output[0]
    op, attrs = node.op_type, _attrs(node)
    if op == "Gemm":
        alpha = attrs.get("alpha", 1.0)
        ta, tb = attrs.get("transA", 0), attrs.get("transB", 0)
        a = values[ins[0]].T if ta else values[ins[0]]
        b = values[ins[1]].T if tb else values[ins[1]]
        ga, gb = alpha * g @ b.T, alpha * a.T @ g
        contributions = [(ins[0], ga.T if ta else ga), (ins[1], gb.T if tb else gb)]
        if len(ins) > 2 and ins[2]:
            contributions.append((ins[2], _unbroadcast(attrs.get("beta", 1.0) * g, values[ins[2]].shape)))
        return contributions
    if op == "MatMul":
        return [(ins[0], g @ values[ins[1]].T), (ins[1], values[ins[0]].T @ g)]
    if op == "Add":
        return [(ins[0], _unbroadcast(g, values[ins[0]].shape)), (ins[1], _unbroadcast(g, values[ins[1]].shape))]
    if op == "Relu":
        return [(ins[0], g * (values[ins[0]] > 0))]
    y = values[out]
    if op == "Sigmoid":
        return [(ins[0], g * y * (1.0 - y))]
    # Softmax
    return [(ins[0], y * (g - (g * y).sum(axis=-1, keepdims=True)))]


__all__ = ["SUPPORTED_OPS", "Network", "sigmoid", "softmax"]
