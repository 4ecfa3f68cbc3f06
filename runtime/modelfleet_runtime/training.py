"""The retraining Job: warm-start a model from its ONNX weights, train on the feedback, evaluate, hand over.

`modelfleet-runtime train --base-model URI --samples DIR --output DIR` reads the
unconsumed samples of the feedback volume, holds out a split, trains the
model's initializers with Adam written in numpy (the graph is unchanged, so
the same runtime serves the result), evaluates parent and child on the
held-out split, writes `model.onnx` and `metrics.json` (each through a
temporary file and an atomic rename), and only then marks the samples
consumed. Graphs built from Gemm, MatMul, Add, Relu, Sigmoid and Softmax are
supported; the task comes from the final operator: Sigmoid -> binary
classification, Softmax -> multi-class classification (labels are class
indices), anything else -> regression.

Exit code 0 on success, 1 when training failed (the message names the reason;
nothing is consumed), 2 for a usage error. The result (or the error) is also
written as JSON to the Job's termination message file.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from .feedback import FeedbackVolume, Record, _atomic_write

log = logging.getLogger("modelfleet.training")

SUPPORTED_OPS = ("Gemm", "MatMul", "Add", "Relu", "Sigmoid", "Softmax")
MODEL_FILE = "model.onnx"
METRICS_FILE = "metrics.json"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
_TERMINATION_LIMIT = 4096  # what Kubernetes keeps of a termination message
_EPS = 1e-7


class TrainingError(Exception):
    """Training cannot produce a model; `reason` is a CamelCase word for the operator's status."""

    reason = "TrainingFailed"


class UnsupportedModel(TrainingError):
    reason = "UnsupportedModel"


class NotEnoughSamples(TrainingError):
    reason = "NotEnoughSamples"


# -- the graph as numpy ---------------------------------------------------------------------------


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


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    p: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return p


def _sigmoid(z: np.ndarray) -> np.ndarray:
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
                y = _sigmoid(ins[0])
            else:  # Softmax
                y = _softmax(ins[0])
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


# -- the task: labels, loss, metric ---------------------------------------------------------------


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
        return loss, (_sigmoid(head) - y) / n
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


# -- the Job --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    base_model: str
    samples: Path
    output: Path
    holdout: float = 0.2
    epochs: int = 50
    learning_rate: float = 0.01
    batch_size: int = 32
    seed: int = 0
    min_samples: int = 2
    base_sha256: str = ""
    run_id: str = ""
    termination_log: str = DEFAULT_TERMINATION_LOG
    model_root: str = "/mnt/models"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _resolve_base(options: Options) -> Path:
    from .sources import fetch_model  # no onnxruntime import; keeps `train` usable without the server

    try:
        return fetch_model(
            options.base_model,
            sha256=options.base_sha256,
            model_root=options.model_root,
            cache_dir=os.environ.get("MODELFLEET_CACHE_DIR", "") or tempfile.gettempdir(),
        )
    except Exception as exc:  # ModelLoadError and download errors alike
        raise TrainingError(f"base model: {exc}") from exc


def _split(rows: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(rows)
    held = round(rows * holdout)
    if holdout > 0:
        held = min(max(held, 1), rows - 1)
    return order[held:], order[:held]


def _previous_result(options: Options, volume: FeedbackVolume) -> dict[str, Any] | None:
    """The metrics of this run_id when it already committed (a retried Job must not train twice)."""
    if not options.run_id:
        return None
    last = volume.read_manifest().get("last_run") or {}
    metrics_path, model_path = options.output / METRICS_FILE, options.output / MODEL_FILE
    if last.get("run_id") != options.run_id or not metrics_path.is_file() or not model_path.is_file():
        return None
    metrics = json.loads(metrics_path.read_bytes())
    if metrics.get("run_id") != options.run_id or metrics["model"]["sha256"] != last.get("sha256"):
        return None
    return metrics if _sha256(model_path) == last.get("sha256") else None


def _check_served(child_path: Path, net: Network, params: Mapping[str, np.ndarray], x: np.ndarray) -> None:
    """The written model loads in onnxruntime and computes what the trainer computed."""
    try:
        import onnxruntime as ort
    except ImportError:  # a custom image without onnxruntime: the checker already passed
        return
    session = ort.InferenceSession(str(child_path), providers=["CPUExecutionProvider"])
    feed = x[: min(len(x), 64)].astype(np.float32)
    got = session.run([net.output_name], {net.input_name: feed})[0]
    served = {k: v.astype(net.initial[k].dtype).astype(np.float64) for k, v in params.items()}
    want = net.forward(served, feed.astype(np.float64))[net.output_name]
    if not np.allclose(got, want, rtol=1e-3, atol=1e-4):
        raise TrainingError("the written model computes differently in onnxruntime than in the trainer")


def run(options: Options) -> dict[str, Any]:
    """Train, write model.onnx and metrics.json, then commit consumption; returns the metrics."""
    started = time.time()
    base_path = _resolve_base(options)
    base_bytes = base_path.read_bytes()
    base_sha = hashlib.sha256(base_bytes).hexdigest()
    try:
        base = onnx.load_from_string(base_bytes)
    except Exception as exc:
        raise TrainingError(f"base model {options.base_model} is not an ONNX model: {exc}") from exc
    net = Network(base)
    volume = FeedbackVolume(options.samples)
    if not options.samples.is_dir():
        raise NotEnoughSamples(f"samples folder {options.samples} does not exist")
    volume.seal_abandoned()
    previous = _previous_result(options, volume)
    if previous is not None:
        log.info("run %s already finished and committed; reporting its result", options.run_id)
        return previous

    offsets = volume.consumed_offsets()
    records = list(volume.iter_unconsumed(offsets))
    data = build_dataset(net, records)
    if len(data.x) < max(options.min_samples, 2):
        raise NotEnoughSamples(
            f"{len(data.x)} usable sample(s) ({len(records)} unconsumed, {data.skipped} skipped: "
            f"{data.reasons or 'none'}); at least {max(options.min_samples, 2)} are needed"
        )
    train_idx, hold_idx = _split(len(data.x), options.holdout, options.seed)
    train_set = Dataset(data.x[train_idx], data.y[train_idx])
    hold_set = Dataset(data.x[hold_idx], data.y[hold_idx]) if len(hold_idx) else train_set
    log.info(
        "training a %s model on %d samples (%d held out) for %d epochs",
        net.task,
        len(train_idx),
        len(hold_idx),
        options.epochs,
    )
    params = train(
        net,
        train_set,
        epochs=options.epochs,
        learning_rate=options.learning_rate,
        batch_size=options.batch_size,
        seed=options.seed,
    )
    parent_eval, child_eval = evaluate(net, net.params(), hold_set), evaluate(net, params, hold_set)
    metric = "mae" if net.task == "regression" else "accuracy"
    better = (
        (child_eval[metric] < parent_eval[metric]) if metric == "mae" else (child_eval[metric] > parent_eval[metric])
    )

    child = net.with_weights(
        params, {"modelfleet.parent_sha256": base_sha, "modelfleet.trained_samples": str(len(train_idx))}
    )
    try:
        onnx.checker.check_model(child)
    except onnx.checker.ValidationError as exc:
        raise TrainingError(f"the new model does not pass onnx.checker: {exc}") from exc
    child_bytes = child.SerializeToString()
    child_sha = hashlib.sha256(child_bytes).hexdigest()
    options.output.mkdir(parents=True, exist_ok=True)
    model_path = options.output / MODEL_FILE
    _atomic_write(model_path, child_bytes)
    _check_served(model_path, net, params, data.x)
    metrics: dict[str, Any] = {
        "task": {"binary": "binary_classification", "multiclass": "multiclass_classification"}.get(
            net.task, "regression"
        ),
        "metric": metric,
        "higher_is_better": metric == "accuracy",
        "parent": parent_eval,
        "child": child_eval,
        "improved": bool(better),
        "samples": {
            "unconsumed": len(records),
            "used": len(data.x),
            "train": len(train_idx),
            "holdout": len(hold_idx),
            "skipped": data.skipped,
            "skipped_reasons": data.reasons,
        },
        "model": {"file": MODEL_FILE, "sha256": child_sha, "bytes": len(child_bytes)},
        "base_model": {"uri": options.base_model, "sha256": base_sha},
        "training": {
            "epochs": options.epochs,
            "learning_rate": options.learning_rate,
            "batch_size": options.batch_size,
            "holdout": options.holdout,
            "seed": options.seed,
        },
        "run_id": options.run_id,
        "started": started,
        "finished": time.time(),
    }
    _atomic_write(options.output / METRICS_FILE, json.dumps(metrics, indent=2).encode())
    # Only now: a run that dies before this line has consumed nothing.
    volume.commit(
        FeedbackVolume.positions(records),
        expected=offsets,
        run={
            "run_id": options.run_id,
            "sha256": child_sha,
            "output": str(options.output.resolve()),
            "samples": len(records),
            "finished": metrics["finished"],
        },
    )
    log.info(
        "wrote %s (sha256 %s): %s %s -> %s on %d held-out samples; consumed %d samples",
        model_path,
        child_sha,
        metric,
        parent_eval[metric],
        child_eval[metric],
        len(hold_idx),
        len(records),
    )
    return metrics


def summary(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """What the operator reads from the termination message (bounded to what Kubernetes keeps)."""
    metric = metrics["metric"]
    return {
        "ok": True,
        "sha256": metrics["model"]["sha256"],
        "task": metrics["task"],
        "metric": metric,
        "parent": metrics["parent"][metric],
        "child": metrics["child"][metric],
        "parent_loss": metrics["parent"]["loss"],
        "child_loss": metrics["child"]["loss"],
        "improved": metrics["improved"],
        "samples": metrics["samples"]["used"],
        "holdout": metrics["samples"]["holdout"],
        "run_id": metrics.get("run_id", ""),
    }


def write_termination_message(path: str, message: Mapping[str, Any]) -> None:
    if not path:
        return
    text = json.dumps(message, separators=(",", ":"))
    if len(text.encode()) > _TERMINATION_LIMIT:
        text = json.dumps(
            {k: message[k] for k in ("ok", "reason", "sha256") if k in message}
            | ({"error": str(message.get("error", ""))[:3000]} if "error" in message else {})
        )
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as exc:
        if path != DEFAULT_TERMINATION_LOG:
            log.warning("could not write the termination message to %s: %s", path, exc)


def _parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="modelfleet-runtime train",
        description="Retrain a model on the unconsumed feedback samples (the retraining Job).",
    )
    p.add_argument(
        "--base-model",
        default=env("MODELFLEET_BASE_MODEL"),
        help="URI of the model to warm-start from [env MODELFLEET_BASE_MODEL]",
    )
    p.add_argument(
        "--base-sha256",
        default=env("MODELFLEET_BASE_SHA256", ""),
        help="expected sha256 of the base model [env MODELFLEET_BASE_SHA256]",
    )
    p.add_argument(
        "--samples",
        default=env("MODELFLEET_SAMPLES_DIR"),
        help="the feedback volume folder [env MODELFLEET_SAMPLES_DIR]",
    )
    p.add_argument(
        "--output",
        default=env("MODELFLEET_OUTPUT_DIR"),
        help="where model.onnx and metrics.json are written [env MODELFLEET_OUTPUT_DIR]",
    )
    p.add_argument(
        "--holdout",
        type=float,
        default=float(env("MODELFLEET_HOLDOUT", "0.2")),
        help="share of samples held out for evaluation (default 0.2)",
    )
    p.add_argument("--epochs", type=int, default=int(env("MODELFLEET_EPOCHS", "50")))
    p.add_argument("--learning-rate", type=float, default=float(env("MODELFLEET_LEARNING_RATE", "0.01")))
    p.add_argument(
        "--batch-size",
        type=int,
        default=int(env("MODELFLEET_BATCH_SIZE", "32")),
        help="rows per gradient step; 0 for full batch",
    )
    p.add_argument("--seed", type=int, default=int(env("MODELFLEET_SEED", "0")))
    p.add_argument(
        "--min-samples",
        type=int,
        default=int(env("MODELFLEET_MIN_SAMPLES", "2")),
        help="fail (consuming nothing) with fewer usable samples",
    )
    p.add_argument(
        "--run-id",
        default=env("MODELFLEET_RUN_ID", ""),
        help="identity of this run (the Job name): a retried run that already committed reports "
        "its result instead of training again [env MODELFLEET_RUN_ID]",
    )
    p.add_argument(
        "--model-root",
        default=env("MODELFLEET_MODEL_ROOT", "/mnt/models"),
        help="where pvc:// and configmap:// sources are mounted [env MODELFLEET_MODEL_ROOT]",
    )
    p.add_argument(
        "--termination-log",
        default=env("MODELFLEET_TERMINATION_LOG", DEFAULT_TERMINATION_LOG),
        help="file that receives the JSON result (the Job's termination message); '' for none",
    )
    return p


def cli_main(argv: Sequence[str]) -> int:
    parser = _parser()
    args = parser.parse_args(list(argv))
    missing = [
        flag
        for flag, value in (("--base-model", args.base_model), ("--samples", args.samples), ("--output", args.output))
        if not value
    ]
    if missing:
        parser.print_usage(sys.stderr)
        print(
            f"modelfleet-runtime train: missing {', '.join(missing)} (or their MODELFLEET_* variables)", file=sys.stderr
        )
        return 2
    if not 0.0 <= args.holdout < 1.0 or args.epochs < 0 or args.learning_rate <= 0:
        print(
            "modelfleet-runtime train: --holdout must be in [0, 1), --epochs >= 0, --learning-rate > 0", file=sys.stderr
        )
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = Options(
        base_model=args.base_model,
        samples=Path(args.samples),
        output=Path(args.output),
        holdout=args.holdout,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        seed=args.seed,
        min_samples=args.min_samples,
        base_sha256=args.base_sha256,
        run_id=args.run_id,
        termination_log=args.termination_log,
        model_root=args.model_root,
    )
    try:
        metrics = run(options)
    except TrainingError as exc:
        print(f"modelfleet-runtime train: {exc}", file=sys.stderr)
        write_termination_message(options.termination_log, {"ok": False, "reason": exc.reason, "error": str(exc)})
        return 1
    except Exception as exc:
        log.exception("training failed")
        write_termination_message(
            options.termination_log, {"ok": False, "reason": "TrainingFailed", "error": f"{type(exc).__name__}: {exc}"}
        )
        return 1
    write_termination_message(options.termination_log, summary(metrics))
    print(json.dumps(summary(metrics)))
    return 0


__all__ = ["Network", "NotEnoughSamples", "Options", "TrainingError", "UnsupportedModel", "cli_main", "run"]
