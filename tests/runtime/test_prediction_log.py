"""The prediction log on its own: background writes, ids the index can place, torn records, rotation, retention."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import orjson
import pytest

from modelfleet_runtime import claims
from modelfleet_runtime.feedback import Layout
from modelfleet_runtime.prediction_log import (
    Found,
    PredictionIndex,
    PredictionLog,
    decode_block,
    encode_block,
    fetch,
    iter_predictions,
    parse_request_id,
)
from modelfleet_runtime.retention import Retention, sweep
from modelfleet_runtime.segments import OPEN_SUFFIX, SEALED_SUFFIX
from tests.support.polling import wait_until

WRITER = "0123456789abcdef"


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_log(directory: Path, **overrides: object) -> PredictionLog:
    values: dict[str, object] = {"pod": "pod-a", "writer": WRITER, "model": "fraud", "model_version": "3"}
    values.update(overrides)
    return PredictionLog(directory, **values)  # type: ignore[arg-type]


def feeds(i: int, rows: int = 1) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    x = np.full((rows, 4), i, dtype=np.float32)
    return {"x": x}, {"y": x[:, :1] * 2}


def segments(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith(SEALED_SUFFIX))


def test_a_block_keeps_every_prediction_in_its_dtypes_and_takes_little_room() -> None:
    entries = []
    for seq in range(1, 4):
        x = np.arange(seq * 2 * 3, dtype=np.int64).reshape(seq * 2, 3)
        entries.append((seq, 100.0 + seq, {"x": x}, {"p": x.astype(np.float16), "c": x[:, :1] > 2}, 0))
    block = decode_block(encode_block(entries))
    assert (block.first_seq, block.last_seq) == (1, 3)
    for seq, ts, inputs, outputs, _ in entries:
        got_ts, got_in, got_out = block.request(seq)
        assert got_ts == ts
        assert got_in["x"].dtype == np.int64 and np.array_equal(got_in["x"], inputs["x"])
        assert got_out["p"].dtype == np.float16 and np.array_equal(got_out["p"], outputs["p"])
        assert got_out["c"].dtype == np.bool_ and np.array_equal(got_out["c"], outputs["c"])
    # 64 predictions of 32 float32 features: binary, not float64 text.
    x = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    one_each = [(i + 1, 0.0, {"x": x[i : i + 1]}, {"y": x[i : i + 1, :1]}, 0) for i in range(64)]
    encoded = len(encode_block(one_each))
    assert encoded < 64 * (33 * 4 + 16) + 64
    assert encoded < len(orjson.dumps(x.astype(np.float64).tolist())) / 3


async def test_recorded_predictions_are_written_in_the_background_and_found_by_their_id(tmp_path: Path) -> None:
    plog = make_log(tmp_path, flush_interval=0.001)
    plog.start()
    ids = [plog.record(*feeds(i, rows=1 + i % 3)) for i in range(50)]
    assert all(ids) and len(set(ids)) == 50
    assert [parse_request_id(i) for i in ids] == [(WRITER, n) for n in range(1, 51)]  # type: ignore[arg-type]
    plog.close()
    assert not any(p.name.endswith(OPEN_SUFFIX) for p in tmp_path.iterdir())
    logged = list(iter_predictions(tmp_path))
    assert [p.request_id for p in logged] == ids
    for i, p in enumerate(logged):
        assert p.model_version == "3" and p.pod == "pod-a" and p.model == "fraud"
        assert np.array_equal(p.inputs["x"], feeds(i, rows=1 + i % 3)[0]["x"])
        assert np.array_equal(p.outputs["y"], feeds(i, rows=1 + i % 3)[1]["y"])
    index = PredictionIndex(tmp_path)
    index.refresh()
    assert index.lookup(WRITER, 1).status is Found.FOUND
    assert index.lookup(WRITER, 50).status is Found.FOUND
    assert index.lookup(WRITER, 51).status is Found.UNKNOWN  # the writer is gone: it will never come
    assert index.lookup("fedcba9876543210", 1).status is Found.UNKNOWN
    assert set(fetch(tmp_path, [(WRITER, 7), (WRITER, 8), (WRITER, 99)])) == {(WRITER, 7), (WRITER, 8)}


@pytest.fixture
def stuck_disk(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """(entered, release): fdatasync blocks until `release` is set; `entered` says one is blocked."""
    entered, release = threading.Event(), threading.Event()
    real_sync = getattr(os, "fdatasync", os.fsync)

    def stuck_sync(fd: int) -> None:
        entered.set()
        release.wait(30)
        real_sync(fd)

    monkeypatch.setattr(os, "fdatasync", stuck_sync, raising=False)
    return entered, release


async def test_an_id_handed_out_but_not_yet_written_is_pending_while_its_writer_runs(
    tmp_path: Path, stuck_disk: tuple[threading.Event, threading.Event]
) -> None:
    entered, release = stuck_disk
    plog = make_log(tmp_path, flush_interval=0.001)
    plog.start()
    first = plog.record(*feeds(0))
    assert entered.wait(30)
    second = plog.record(*feeds(1))  # queued while the first group is being synced
    own = PredictionIndex(tmp_path, own_writer=WRITER, own_issued=lambda: plog.issued_seq)
    other = PredictionIndex(tmp_path)
    for index in (own, other):
        index.refresh()
        assert index.lookup(*parse_request_id(second)).status is Found.PENDING  # type: ignore[misc]
    own.refresh()
    assert own.lookup(WRITER, 3).status is Found.UNKNOWN  # never handed out
    release.set()
    plog.close()
    other.refresh()
    assert [other.lookup(*parse_request_id(i)).status for i in (first, second)] == [Found.FOUND] * 2  # type: ignore[misc]


async def test_past_its_byte_bound_or_the_quota_a_prediction_is_answered_without_an_id(
    tmp_path: Path, stuck_disk: tuple[threading.Event, threading.Event]
) -> None:
    entered, release = stuck_disk
    plog = make_log(tmp_path, buffer_bytes=1024 * 1024, flush_interval=0.001)
    plog.start()
    big = {"x": np.zeros((256, 256), np.float32)}, {"y": np.zeros((256, 1), np.float32)}  # 257 KiB each
    assert plog.record(*big) is not None
    assert entered.wait(30)  # the disk is stuck; what follows waits in memory
    answers = [plog.record(*big) for _ in range(10)]
    # 257 KiB each against a 1 MiB bound: three more wait in memory, the rest get no id.
    assert [a is not None for a in answers] == [True] * 3 + [False] * 7
    assert plog.queued_bytes <= 1024 * 1024 + 257 * 1024
    assert plog.dropped_buffer == sum(a is None for a in answers)
    release.set()
    plog.close()
    assert len(list(iter_predictions(tmp_path))) == 1 + sum(a is not None for a in answers)

    full = make_log(tmp_path / "full", room=lambda: False)
    full.start()
    assert full.record(*feeds(0)) is None and full.dropped_full == 1
    full.close()


async def test_a_sample_rate_logs_that_share_of_the_predictions(tmp_path: Path) -> None:
    for rate, low, high in ((0.0, 0, 0), (0.25, 700, 1300), (1.0, 4000, 4000)):
        plog = make_log(tmp_path / str(rate), sample_rate=rate)
        plog.start()
        logged = sum(plog.record(*feeds(0)) is not None for _ in range(4000))
        plog.close()
        assert low <= logged <= high, (rate, logged)


async def test_a_torn_block_is_never_read_and_the_blocks_before_it_are(tmp_path: Path) -> None:
    plog = make_log(tmp_path, flush_interval=0.0)
    plog.start()
    for i in range(5):
        plog.record(*feeds(i))
    plog.close()
    [segment] = segments(tmp_path)
    with open(segment, "ab") as f:
        f.write(b"MFP1\x40\x00\x00\x00garbage")  # a group cut short by a crash
    ids = [p.request_id for p in iter_predictions(tmp_path)]
    assert ids == [f"{WRITER}-{n:x}" for n in range(1, 6)]
    index = PredictionIndex(tmp_path)
    index.refresh()
    assert index.lookup(WRITER, 5).status is Found.FOUND
    assert index.lookup(WRITER, 6).status is Found.UNKNOWN


async def test_segments_rotate_by_size_and_by_age(tmp_path: Path) -> None:
    clock = Clock()
    plog = make_log(tmp_path, segment_bytes=600, flush_interval=0.0, clock=clock, max_segment_age=60.0)
    plog.start()
    for i in range(12):
        plog.record(*feeds(i))
        wait_until(lambda i=i: plog.records == i + 1, timeout=30)  # one group each
    plog.close()
    assert len(segments(tmp_path)) > 1
    assert [int(p.request_id.split("-")[1], 16) for p in iter_predictions(tmp_path)] == list(range(1, 13))

    aged = tmp_path / "aged"
    plog = make_log(aged, flush_interval=0.0, clock=clock, max_segment_age=60.0, idle_check=0.01)
    plog.start()
    plog.record(*feeds(0))
    index = PredictionIndex(aged)

    def open_segments() -> int:
        return sum(p.name.endswith(OPEN_SUFFIX) for p in aged.iterdir()) if aged.exists() else 0

    wait_until(lambda: open_segments() == 1, timeout=30)
    clock.now += 61  # an idle writer seals a segment older than max_segment_age, so retention can delete it
    wait_until(lambda: open_segments() == 0, timeout=30)
    plog.record(*feeds(1))
    plog.close()
    index.refresh()
    assert index.lookup(WRITER, 2).status is Found.FOUND
    assert len(segments(aged)) == 2


async def test_retention_deletes_old_segments_with_their_claims_and_remembers_what_expired(tmp_path: Path) -> None:
    clock = Clock()
    layout = Layout(tmp_path)
    plog = make_log(layout.predictions, flush_interval=0.0, clock=clock, segment_bytes=1)  # one segment per group
    plog.start()
    first = plog.record(*feeds(0))
    wait_until(lambda: len(list(iter_predictions(layout.predictions))) == 1, timeout=30)
    clock.now += 3600
    second = plog.record(*feeds(1))
    plog.close()
    for request_id in (first, second):
        assert claims.claim(layout.claims, *parse_request_id(request_id), "labels@0")  # type: ignore[misc]
    index = PredictionIndex(layout.predictions)
    retention = Retention(predictions=1800.0, consumed_labels=60.0)
    assert sweep(layout, index, retention, clock.now) >= 2  # the first segment and the first id's claim
    assert [p.request_id for p in iter_predictions(layout.predictions)] == [second]
    assert index.lookup(*parse_request_id(first)).status is Found.EXPIRED  # type: ignore[misc]
    assert not claims.claimed(layout.claims, *parse_request_id(first))  # type: ignore[misc]
    assert claims.claimed(layout.claims, *parse_request_id(second))  # type: ignore[misc]
    clock.now += 3600
    sweep(layout, index, retention, clock.now)
    assert list(iter_predictions(layout.predictions)) == []
    assert index.lookup(*parse_request_id(second)).status is Found.EXPIRED  # type: ignore[misc]
