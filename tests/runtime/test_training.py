"""The retraining Job's trainer on real data made here, judged by onnxruntime."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelfleet_runtime.feedback import FeedbackVolume, Label, LabelWriter, Layout
from modelfleet_runtime.prediction_log import PredictionIndex, PredictionLog, request_id
from modelfleet_runtime.retention import Retention, sweep
from modelfleet_runtime.segments import new_writer_id
from modelfleet_runtime.training import job, task
from modelfleet_runtime.training.graph import Network
from tests.support.onnx_models import build_logistic, build_mlp, save_model, with_external_weights
from tests.support.polling import wait_until


def linear_model(path: Path, w: np.ndarray, b: float) -> Path:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", len(w)])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        [
            numpy_helper.from_array(w.reshape(-1, 1).astype(np.float32), "w"),
            numpy_helper.from_array(np.array([b], np.float32), "b"),
        ],
    )
    return save_model(graph, path)


def predict(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0]


def label_writer(volume_dir: Path) -> LabelWriter:
    return LabelWriter(Layout(volume_dir), pod="pod-a", writer=new_writer_id(), model="m", model_version="1")


async def put(volume_dir: Path, x: np.ndarray, labels: list) -> None:
    """Samples sent with their features, as a server stores them (float32, the models' dtype)."""
    writer = label_writer(volume_dir)
    rows = x.astype(np.float32)
    await writer.append([Label(0.0, (label,), None, row) for row, label in zip(rows, labels, strict=True)])
    await writer.close()


def run_trainer(base: Path, samples: Path, output: Path, *extra: str) -> tuple[int, dict]:
    log = output.parent / f"{output.name}-termination-log"
    code = job.cli_main(
        [
            "--base-model",
            str(base),
            "--samples",
            str(samples),
            "--output",
            str(output),
            "--termination-log",
            str(log),
            *extra,
        ]
    )
    return code, json.loads(log.read_text())


# Distribution A: the parent's world. Distribution B: the shifted world the feedback comes from.
W_A, B_A = np.array([1.5, -1.0, 0.5, 0.0]), 0.0
W_B, B_B = np.array([-1.0, 1.5, 0.0, 1.0]), 0.8


def binary_data(rng: np.random.Generator, n: int, w: np.ndarray, b: float) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(0.3, 1.0, (n, len(w)))
    return x, ((x @ w + b + rng.normal(0, 0.3, n)) > 0).astype(int)


async def test_logistic_regression_child_beats_parent_on_the_shifted_distribution(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    parent = build_logistic(tmp_path / "parent.onnx", W_A, B_A)
    x, y = binary_data(rng, 600, W_B, B_B)
    await put(tmp_path / "volume", x, y.tolist())

    code, result = run_trainer(parent, tmp_path / "volume", tmp_path / "out", "--epochs", "30")
    assert code == 0, result
    child = tmp_path / "out" / "model.onnx"

    x_test, y_test = binary_data(rng, 2000, W_B, B_B)
    parent_acc = np.mean((predict(parent, x_test)[:, 0] >= 0.5) == y_test)
    child_acc = np.mean((predict(child, x_test)[:, 0] >= 0.5) == y_test)
    assert child_acc - parent_acc > 0.2, (parent_acc, child_acc)

    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["task"] == "binary_classification" and metrics["metric"] == "accuracy"
    assert metrics["child"]["accuracy"] > metrics["parent"]["accuracy"]
    assert metrics["child"]["loss"] < metrics["parent"]["loss"]
    assert metrics["improved"] is True
    assert metrics["samples"]["holdout"] == 120 and metrics["samples"]["train"] == 480
    sha = hashlib.sha256(child.read_bytes()).hexdigest()
    assert metrics["model"]["sha256"] == sha == result["sha256"]
    assert result["ok"] is True and result["child"] == metrics["child"]["accuracy"]

    # Same graph, new weights; the samples are consumed.
    parent_graph, child_graph = onnx.load(str(parent)).graph, onnx.load(str(child)).graph
    onnx.checker.check_model(onnx.load(str(child)))
    assert [n.SerializeToString() for n in child_graph.node] == [n.SerializeToString() for n in parent_graph.node]
    assert not np.allclose(
        numpy_helper.to_array(child_graph.initializer[0]), numpy_helper.to_array(parent_graph.initializer[0])
    )
    assert FeedbackVolume(tmp_path / "volume").count_unconsumed() == 0


def classes(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    return np.argmax(x @ m, axis=1)


async def test_mlp_classifier_warm_starts_and_adapts_to_a_new_distribution(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    m_a, m_b = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    start = build_mlp(tmp_path / "init.onnx", (6, 12, 3), softmax=True, output_name="probabilities")
    volume = tmp_path / "volume"
    # Run 1 teaches the parent distribution A; run 2 sees only feedback from B.
    x_a = rng.normal(size=(800, 6))
    await put(volume, x_a, classes(x_a, m_a).tolist())
    code, _ = run_trainer(start, volume, tmp_path / "parent", "--epochs", "40")
    assert code == 0
    parent = tmp_path / "parent" / "model.onnx"
    x_b = rng.normal(size=(800, 6))
    await put(volume, x_b, classes(x_b, m_b).tolist())
    code, result = run_trainer(parent, volume, tmp_path / "child", "--epochs", "40")
    assert code == 0, result
    child = tmp_path / "child" / "model.onnx"
    metrics = json.loads((tmp_path / "child" / "metrics.json").read_text())
    assert metrics["task"] == "multiclass_classification"
    assert metrics["samples"]["used"] == 800  # run 1's samples were consumed and are not seen again

    x_test = rng.normal(size=(2000, 6))
    parent_acc = np.mean(predict(parent, x_test).argmax(axis=1) == classes(x_test, m_b))
    child_acc = np.mean(predict(child, x_test).argmax(axis=1) == classes(x_test, m_b))
    assert child_acc - parent_acc > 0.2, (parent_acc, child_acc)
    assert metrics["child"]["accuracy"] > metrics["parent"]["accuracy"]
    probabilities = predict(child, x_test)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


async def test_linear_regression_child_has_lower_mae_and_env_variables_configure_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(2)
    parent = linear_model(tmp_path / "parent.onnx", W_A, B_A)
    x = rng.normal(size=(500, 4))
    await put(tmp_path / "volume", x, (x @ W_B + B_B).tolist())
    monkeypatch.setenv("MODELFLEET_BASE_MODEL", parent.as_uri())
    monkeypatch.setenv("MODELFLEET_SAMPLES_DIR", str(tmp_path / "volume"))
    monkeypatch.setenv("MODELFLEET_OUTPUT_DIR", str(tmp_path / "out"))
    assert job.cli_main(["--termination-log", "", "--epochs", "60", "--learning-rate", "0.05"]) == 0
    child = tmp_path / "out" / "model.onnx"
    x_test = rng.normal(size=(1000, 4))
    truth = x_test @ W_B + B_B
    parent_mae = np.mean(np.abs(predict(parent, x_test)[:, 0] - truth))
    child_mae = np.mean(np.abs(predict(child, x_test)[:, 0] - truth))
    assert parent_mae - child_mae > 1.0, (parent_mae, child_mae)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["metric"] == "mae" and metrics["higher_is_better"] is False
    assert metrics["child"]["mae"] < metrics["parent"]["mae"]


async def test_a_graph_with_an_unsupported_operator_fails_naming_it_and_consumes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["h"]), helper.make_node("Tanh", ["h"], ["y"])],
        "tanh",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        [
            numpy_helper.from_array(np.ones((4, 1), np.float32), "w"),
            numpy_helper.from_array(np.zeros(1, np.float32), "b"),
        ],
    )
    base = save_model(graph, tmp_path / "tanh.onnx")
    x = np.random.default_rng(3).normal(size=(50, 4))
    await put(tmp_path / "volume", x, [0.5] * 50)
    code, result = run_trainer(base, tmp_path / "volume", tmp_path / "out")
    assert code != 0
    assert "Tanh" in capsys.readouterr().err
    assert result["ok"] is False and result["reason"] == "UnsupportedModel" and "Tanh" in result["error"]
    assert not (tmp_path / "out" / "model.onnx").exists()
    assert FeedbackVolume(tmp_path / "volume").count_unconsumed() == 50


async def test_a_trainer_killed_before_its_commit_consumes_nothing_and_the_retry_trains_on_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(4)
    parent = build_logistic(tmp_path / "parent.onnx", W_A, B_A)
    x, y = binary_data(rng, 200, W_B, B_B)
    await put(tmp_path / "volume", x, y.tolist())

    def killed(*_: object, **__: object) -> None:
        raise RuntimeError("killed between writing the outputs and committing")

    with monkeypatch.context() as patch:
        patch.setattr(FeedbackVolume, "commit", killed)
        code, result = run_trainer(parent, tmp_path / "volume", tmp_path / "out", "--epochs", "2")
    assert code != 0 and result["ok"] is False
    volume = FeedbackVolume(tmp_path / "volume")
    assert volume.count_unconsumed() == 200

    code, result = run_trainer(parent, tmp_path / "volume", tmp_path / "out", "--epochs", "2")
    assert code == 0
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["samples"]["used"] == 200
    assert volume.count_unconsumed() == 0
    # Nothing left: a third run fails without writing anything.
    code, result = run_trainer(parent, tmp_path / "volume", tmp_path / "again")
    assert code != 0 and result["reason"] == "NotEnoughSamples"
    assert not (tmp_path / "again" / "model.onnx").exists()


async def test_a_retried_job_that_already_committed_reports_its_result_instead_of_training_again(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(5)
    parent = build_logistic(tmp_path / "parent.onnx", W_A, B_A)
    x, y = binary_data(rng, 100, W_B, B_B)
    await put(tmp_path / "volume", x, y.tolist())
    code, first = run_trainer(parent, tmp_path / "volume", tmp_path / "out", "--epochs", "2", "--run-id", "job-7")
    assert code == 0
    # New feedback arrives; the Job's pod is retried after it committed (say it was evicted before exiting).
    x2, y2 = binary_data(rng, 30, W_B, B_B)
    await put(tmp_path / "volume", x2, y2.tolist())
    code, again = run_trainer(parent, tmp_path / "volume", tmp_path / "out", "--epochs", "2", "--run-id", "job-7")
    assert code == 0 and again["sha256"] == first["sha256"]
    assert FeedbackVolume(tmp_path / "volume").count_unconsumed() == 30


async def test_samples_that_do_not_fit_the_model_are_skipped_counted_and_consumed(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    parent = build_logistic(tmp_path / "parent.onnx", W_A, B_A)
    x, y = binary_data(rng, 40, W_B, B_B)
    await put(tmp_path / "volume", x, y.tolist())
    await put(tmp_path / "volume", np.zeros((3, 5)), [1, 0, 1])  # from an older model with 5 features
    await put(tmp_path / "volume", np.zeros((2, 4)), [3, 7])  # not a probability
    code, _ = run_trainer(parent, tmp_path / "volume", tmp_path / "out", "--epochs", "1")
    assert code == 0
    samples = json.loads((tmp_path / "out" / "metrics.json").read_text())["samples"]
    assert (samples["used"], samples["skipped"], samples["unconsumed"]) == (40, 5, 45)
    assert samples["skipped_reasons"] == {"expected 4 features, got 5": 3, "classification label outside [0, 1]": 2}
    assert FeedbackVolume(tmp_path / "volume").count_unconsumed() == 0


def test_backpropagation_matches_finite_differences_for_every_supported_operator(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    inits = {
        "w1": rng.normal(size=(5, 4)),
        "b1": rng.normal(size=(5,)),
        "w2": rng.normal(size=(5, 3)),
        "b2": rng.normal(size=(1, 3)),
    }
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1, alpha=0.7, beta=1.3),
            helper.make_node("Sigmoid", ["h"], ["hs"]),
            helper.make_node("Relu", ["hs"], ["hr"]),
            helper.make_node("MatMul", ["hr", "w2"], ["z"]),
            helper.make_node("Add", ["z", "b2"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["y"]),
        ],
        "all_ops",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    net = Network(onnx.load(str(save_model(graph, tmp_path / "all.onnx"))))
    assert net.task == "multiclass"
    x, y = rng.normal(size=(8, 4)), np.eye(3)[rng.integers(0, 3, 8)]
    params = net.params()

    def loss(p: dict) -> float:
        return task.loss_and_head_grad(net.task, net.forward(p, x)[net.head], y)[0]

    values = net.forward(params, x)
    head_grad = task.loss_and_head_grad(net.task, values[net.head], y)[1]
    grads = net.gradients(params, values, head_grad)
    for name, value in params.items():
        numeric = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            bumped = {k: v.copy() for k, v in params.items()}
            bumped[name][index] += 1e-6
            lowered = {k: v.copy() for k, v in params.items()}
            lowered[name][index] -= 1e-6
            numeric[index] = (loss(bumped) - loss(lowered)) / 2e-6
        assert np.allclose(grads[name], numeric, atol=1e-6), name


async def test_a_base_model_s_external_data_is_read_from_its_own_folder_and_never_from_outside(
    tmp_path: Path,
) -> None:
    x, y = binary_data(np.random.default_rng(5), 200, W_B, B_B)
    await put(tmp_path / "volume", x, y.tolist())
    beside = tmp_path / "beside"
    beside.mkdir()
    # The working directory (the repository) holds no weights.bin: only the model's folder does.
    inside = with_external_weights(build_logistic(beside / "parent.onnx", W_A, B_A), "weights.bin")
    code, result = run_trainer(inside, tmp_path / "volume", tmp_path / "out")
    assert code == 0 and result["ok"] is True, result

    escaping = tmp_path / "escaping"
    escaping.mkdir()
    outside = with_external_weights(build_logistic(escaping / "parent.onnx", W_A, B_A), "../outside.bin")
    code, result = run_trainer(outside, tmp_path / "volume", tmp_path / "out-2")
    assert code != 0 and result["ok"] is False
    assert "'../outside.bin', outside the model's folder" in result["error"]


async def test_labels_by_request_id_join_the_logged_inputs_and_each_class_is_counted(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    parent = build_logistic(tmp_path / "parent.onnx", W_A, B_A)
    layout = Layout(tmp_path / "volume")
    x, y = binary_data(rng, 120, W_B, B_B)
    clock = [1_700_000_000.0]
    # Two servers logged predictions: `gone` stopped (its log is sealed), `live` still runs.
    gone, live = (
        PredictionLog(
            layout.predictions,
            pod=pod,
            writer=new_writer_id(),
            model="m",
            model_version="2",
            clock=lambda: clock[0],
            segment_bytes=1,  # a segment per group, so the oldest can expire alone
            flush_interval=0.0,
        )
        for pod in ("a", "b")
    )
    for plog in (gone, live):
        plog.start()
    old = gone.record({"x": x[:1].astype(np.float32)}, {"p": np.zeros((1, 1), np.float32)})
    wait_until(lambda: gone.records == 1, timeout=30)
    clock[0] += 3600
    ids = [
        (gone if i % 2 else live).record({"x": x[i : i + 1].astype(np.float32)}, {"p": np.zeros((1, 1), np.float32)})
        for i in range(1, 120)
    ]
    gone.close()
    wait_until(lambda: live.records == 59, timeout=30)
    # The first prediction is past the retention: retention deletes its segment.
    assert sweep(layout, PredictionIndex(layout.predictions), Retention(1800.0, 60.0), clock[0]) >= 1
    writer = label_writer(layout.root)
    labels = [Label(clock[0], (int(y[i]),), rid) for i, rid in enumerate([old, *ids])]
    labels += [
        Label(clock[0], (1,), request_id(gone.writer, 500)),  # never logged by a writer that is gone: unmatched
        Label(clock[0], (1,), request_id(live.writer, 500)),  # not yet logged by a live writer: pending
    ]
    assert all(ok for [ok] in [await writer.append([label]) for label in labels])
    assert await writer.append([Label(clock[0], (0,), ids[0])]) == [False]  # a second label for one id
    await writer.close()

    code, result = run_trainer(parent, layout.root, tmp_path / "out", "--epochs", "30")
    assert code == 0, result
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    counts = metrics["samples"]["labels"]
    assert (counts["matched"], counts["expired"], counts["unmatched"], counts["pending"]) == (119, 1, 1, 1)
    assert counts["duplicates"] == 1 and counts["with_features"] == 0
    assert metrics["samples"]["used"] == 119
    assert result["labels"] == {"matched": 119, "unmatched": 1, "expired": 1, "pending": 1}
    assert metrics["child"]["accuracy"] > metrics["parent"]["accuracy"]
    # Only the pending label is left for the next run: everything else was consumed.
    left = list(FeedbackVolume(layout.root).iter_unconsumed())
    assert [r.label.request_id for r in left] == [request_id(live.writer, 500)]
    live.close()
