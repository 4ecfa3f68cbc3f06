"""What the trainer learns: targets from labels, the loss of the task, Adam, and evaluation.

The task follows from the model's final operator (see graph.Network.task):
Sigmoid -> binary classification (labels 0/1 or probabilities), Softmax ->
multi-class classification (labels are class indices, or one probability per
class), anything else -> regression. Classifier losses take their gradient at
the activation's input, which is exact and numerically stable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..feedback import Record
from .graph import Network, sigmoid


@dataclass
class Dataset:
    x: np.ndarray
    y: np.ndarray  # (rows, outputs): 0/1 or probabilities, one-hot classes, or regression targets
    skipped: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def _output_width(net: Network, width: int) -> int:
    probe = net.forward(net.params(), np.zeros((1, width)))[net.output_name]
    return int(probe.reshape(1, -1).shape[1])


def build_dataset(net: Network, records: Sequence[Record]) -> Dataset:
    """Rows and targets for the task; samples that do not fit the model are skipped and counted."""
    widths = [len(r.sample.features) for r in records]
    width = net.input_width or (max(set(widths), key=widths.count) if widths else 0)
    outputs = _output_width(net, width) if width else 0
    xs: list[Sequence[float]] = []
    ys: list[list[float]] = []
    reasons: dict[str, int] = {}

    def skip(reason: str) -> None:
        reasons[reason] = reasons.get(reason, 0) + 1

    for record in records:
        features, label = record.sample.features, record.sample.label
        if len(features) != width:
            skip(f"expected {width} features, got {len(features)}")
            continue
        target = _target(net.task, label, outputs)
        if isinstance(target, str):
            skip(target)
            continue
        xs.append(features)
        ys.append(target)
    x = np.asarray(xs, dtype=np.float64).reshape(len(xs), width)
    y = np.asarray(ys, dtype=np.float64).reshape(len(ys), outputs)
    return Dataset(x, y, sum(reasons.values()), reasons)


def _target(task: str, label: Any, outputs: int) -> list[float] | str:
    """The label as a target row, or a string saying why it does not fit."""
    values = label if isinstance(label, list) else [label]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in values):
        return "label is not numeric"
    if task == "multiclass" and not isinstance(label, list):
        if float(label) != int(label) or not 0 <= int(label) < outputs:
            return f"label is not a class index in [0, {outputs})"
        onehot = [0.0] * outputs
        onehot[int(label)] = 1.0
        return onehot
    if len(values) != outputs:
        return f"label has {len(values)} value(s); the model has {outputs} output(s)"
    if task != "regression" and not all(0.0 <= v <= 1.0 for v in values):
        return "classification label outside [0, 1]"
    return [float(v) for v in values]


def loss_and_head_grad(task: str, head: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """The mean loss and its gradient at the head (logits for classifiers, outputs for regression)."""
    n = max(len(y), 1)
    head = head.reshape(y.shape)
    if task == "binary":
        loss = float(np.mean(np.sum(np.logaddexp(0.0, head) - y * head, axis=1)))
        return loss, (sigmoid(head) - y) / n
    if task == "multiclass":
        shifted = head - head.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return float(-np.mean(np.sum(y * log_p, axis=1))), (np.exp(log_p) - y) / n
    diff = head - y
    return float(np.mean(diff**2)), 2.0 * diff / diff.size


def evaluate(net: Network, params: Mapping[str, np.ndarray], data: Dataset) -> dict[str, float]:
    """Loss and the task metric (accuracy or MAE) of `params` as served (in the model's dtypes)."""
    served = {k: v.astype(net.initial[k].dtype).astype(np.float64) for k, v in params.items()}
    x = data.x.astype(np.float32).astype(np.float64)
    values = net.forward(served, x)
    loss, _ = loss_and_head_grad(net.task, values[net.head], data.y)
    out = values[net.output_name].reshape(data.y.shape)
    if net.task == "binary":
        return {"loss": loss, "accuracy": float(np.mean((out >= 0.5) == (data.y >= 0.5)))}
    if net.task == "multiclass":
        return {"loss": loss, "accuracy": float(np.mean(out.argmax(axis=1) == data.y.argmax(axis=1)))}
    return {"loss": loss, "mae": float(np.mean(np.abs(out - data.y)))}


def train(
    net: Network, data: Dataset, *, epochs: int, learning_rate: float, batch_size: int, seed: int
) -> dict[str, np.ndarray]:
    """Adam from the parent's weights; returns the child's weights."""
    params = net.params()
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v2 = {k: np.zeros_like(v) for k, v in params.items()}
    beta1, beta2, step = 0.9, 0.999, 0
    rng = np.random.default_rng(seed)
    rows = len(data.x)
    size = rows if batch_size <= 0 else min(batch_size, rows)
    for _ in range(epochs):
        order = rng.permutation(rows)
        for start in range(0, rows, size):
            idx = order[start : start + size]
            values = net.forward(params, data.x[idx])
            _, head_grad = loss_and_head_grad(net.task, values[net.head], data.y[idx])
            grads = net.gradients(params, values, head_grad.reshape(values[net.head].shape))
            step += 1
            for k, g in grads.items():
                m[k] = beta1 * m[k] + (1 - beta1) * g
                v2[k] = beta2 * v2[k] + (1 - beta2) * g * g
                m_hat, v_hat = m[k] / (1 - beta1**step), v2[k] / (1 - beta2**step)
                params[k] = params[k] - learning_rate * m_hat / (np.sqrt(v_hat) + 1e-8)
    return params


__all__ = ["Dataset", "build_dataset", "evaluate", "loss_and_head_grad", "train"]
