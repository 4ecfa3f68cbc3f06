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
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..durable import atomic_write
from ..errors import ModelLoadError
from ..external_data import load_model
from ..feedback import FeedbackVolume
from ..sources import fetch_model, sha256_of
from .errors import NotEnoughSamples, TrainingError
from .graph import Network
from .join import KINDS, Joined, join
from .task import Dataset, build_dataset, evaluate, train

log = logging.getLogger("modelfleet.training")

MODEL_FILE = "model.onnx"
METRICS_FILE = "metrics.json"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
_TERMINATION_LIMIT = 4096  # what Kubernetes keeps of a termination message
_REPORTED_LABELS = ("matched", "unmatched", "expired", "pending")


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


def _resolve_base(options: Options) -> Path:
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
    last = volume.read_manifest().raw.get("last_run") or {}
    metrics_path, model_path = options.output / METRICS_FILE, options.output / MODEL_FILE
    if last.get("run_id") != options.run_id or not metrics_path.is_file() or not model_path.is_file():
        return None
    metrics = json.loads(metrics_path.read_bytes())
    if metrics.get("run_id") != options.run_id or metrics["model"]["sha256"] != last.get("sha256"):
        return None
    return metrics if sha256_of(model_path) == last.get("sha256") else None


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
    base_sha = sha256_of(base_path)
    try:
        # External data from the base model's folder, never from the working directory.
        base = load_model(base_path)
    except ModelLoadError as exc:
        raise TrainingError(f"base model {options.base_model}: {exc}") from exc
    net = Network(base)
    volume = FeedbackVolume(options.samples)
    if not options.samples.is_dir():
        raise NotEnoughSamples(f"samples folder {options.samples} does not exist")
    volume.seal_abandoned()
    previous = _previous_result(options, volume)
    if previous is not None:
        log.info("run %s already finished and committed; reporting its result", options.run_id)
        return previous

    manifest = volume.read_manifest()
    joined = join(volume, manifest)
    records = joined.records
    data = build_dataset(net, records)
    if len(data.x) < max(options.min_samples, 2):
        raise NotEnoughSamples(
            f"{len(data.x)} usable sample(s) ({len(records)} unconsumed, {data.skipped} skipped: "
            f"{data.reasons or 'none'}; labels by request_id: {_label_counts(joined)}); "
            f"at least {max(options.min_samples, 2)} are needed"
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
    atomic_write(model_path, child_bytes)
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
            "labels": _label_counts(joined),
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
    atomic_write(options.output / METRICS_FILE, json.dumps(metrics, indent=2).encode())
    # Only now: a run that dies before this line has consumed nothing.
    volume.commit(
        joined.positions,
        pending=joined.pending,
        expected=manifest,
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


def _label_counts(joined: Joined) -> dict[str, int]:
    """How the labels of this run joined with the prediction log (training/join.py), in samples."""
    return {k: joined.counts[k] for k in KINDS}


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
        "labels": {k: v for k, v in metrics["samples"].get("labels", {}).items() if k in _REPORTED_LABELS},
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


__all__ = ["Options", "cli_main", "run", "summary", "write_termination_message"]
