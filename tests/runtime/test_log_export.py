"""`modelfleet-runtime log export`: the prediction log as JSON lines or Parquet, with the labels it got."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pytest

from modelfleet_runtime.feedback import Label, LabelWriter, Layout
from modelfleet_runtime.log_export import ExportError, cli_main, parse_time
from modelfleet_runtime.prediction_log import PredictionLog
from modelfleet_runtime.segments import new_writer_id

T0 = 1_800_000_000.0


async def logged_volume(root: Path) -> list[str]:
    """Three predictions an hour apart (the second of two rows) and a label for the second."""
    layout = Layout(root)
    clock = [T0]
    plog = PredictionLog(
        layout.predictions,
        pod="fraud-3-x1",
        writer=new_writer_id(),
        model="fraud",
        model_version="3",
        clock=lambda: clock[0],
    )
    plog.start()
    ids = []
    for i, rows in enumerate((1, 2, 1)):
        x = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3) + 10 * i
        ids.append(plog.record({"x": x}, {"p": x[:, :1] / 100}))
        clock[0] += 3600
    plog.close()
    writer = LabelWriter(layout, pod="fraud-3-x2", writer=new_writer_id(), model="fraud", model_version="3")
    assert await writer.append([Label(T0 + 7200, (1, 0), ids[1])]) == [True]
    await writer.close()
    return [i for i in ids if i]


async def test_jsonl_has_a_row_per_predicted_row_with_its_tensors_and_label(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    ids = await logged_volume(tmp_path)
    since = datetime.fromtimestamp(T0 + 1800, tz=UTC).isoformat()
    assert cli_main(["export", "--dir", str(tmp_path), "--since", since, "--format", "jsonl"]) == 0
    rows = [orjson.loads(line) for line in capsysbinary.readouterr().out.splitlines()]
    assert [(r["request_id"], r["row"]) for r in rows] == [(ids[1], 0), (ids[1], 1), (ids[2], 0)]
    assert rows[0]["x"] == [10.0, 11.0, 12.0] and rows[1]["x"] == [13.0, 14.0, 15.0]
    assert rows[0]["p"] == pytest.approx([0.1]) and rows[2]["x"] == [20.0, 21.0, 22.0]
    assert [r["label"] for r in rows] == [1, 0, None]
    assert rows[0]["timestamp"] == "2027-01-15T09:00:00Z"  # T0 + 1 h
    assert {(r["model"], r["model_version"], r["pod"]) for r in rows} == {("fraud", "3", "fraud-3-x1")}


async def test_parquet_opens_with_pyarrow_and_holds_the_same_rows(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    ids = await logged_volume(tmp_path)
    out = tmp_path / "log.parquet"
    until = str(T0 + 3 * 3600)
    assert (
        cli_main(["export", "--dir", str(tmp_path), "--until", until, "--format", "parquet", "--output", str(out)]) == 0
    )
    table = pq.read_table(out).to_pylist()
    assert [(r["request_id"], r["row"]) for r in table] == [(ids[0], 0), (ids[1], 0), (ids[1], 1), (ids[2], 0)]
    assert table[1]["x"] == [10.0, 11.0, 12.0] and table[1]["label"] == "1"
    assert table[0]["label"] is None
    assert table[0]["timestamp"] == datetime.fromtimestamp(T0, tz=UTC)


def test_without_pyarrow_parquet_is_refused_with_what_to_install(tmp_path: Path) -> None:
    (tmp_path / "predictions").mkdir()
    script = (
        "import sys; sys.modules['pyarrow'] = None; sys.modules['pyarrow.parquet'] = None\n"
        "from modelfleet_runtime.cli import main\n"
        f"sys.exit(main(['log', 'export', '--dir', {str(tmp_path)!r}, '--format', 'parquet', '--output', 'x.parquet']))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2
    assert "--format parquet needs pyarrow, which is not installed: pip install pyarrow" in done.stderr
    assert not (tmp_path / "x.parquet").exists()


def test_times_are_iso_8601_epoch_seconds_or_a_duration_back_from_now() -> None:
    now = 1_000_000.0
    assert parse_time("90s", now) == now - 90
    assert parse_time("24h", now) == now - 86400
    assert parse_time("7d", now) == now - 7 * 86400
    assert parse_time("123.5", now) == 123.5
    assert parse_time("2026-01-31T12:00:00Z", now) == datetime(2026, 1, 31, 12, tzinfo=UTC).timestamp()
    with pytest.raises(ExportError, match="cannot read 'yesterday' as a time"):
        parse_time("yesterday", now)


def test_a_folder_without_a_prediction_log_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["export", "--dir", str(tmp_path)]) == 2
    assert "holds no prediction log" in capsys.readouterr().err
