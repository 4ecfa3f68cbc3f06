"""Labels joined with the prediction log by request_id: the samples a run trains on, and what it consumes.

Every unconsumed label record falls in one class (counted in samples, one per
row, in metrics.json and the termination message):

- with_features: sent with its features; used.
- matched: its claim names it and the prediction log holds the prediction; used,
  with the prediction's inputs (after entity features were joined, in the model's dtype).
- expired: the prediction was deleted by retention before this run; consumed.
- unmatched: no log holds the prediction and its writer no longer runs (lost to a
  crash, or never made); consumed.
- pending: the prediction's writer still runs and has not written it yet; not
  consumed, read again by the next run.
- duplicates / unacknowledged: a record the id's claim does not name (a refused
  second label, or a write whose claim never happened: never acknowledged); consumed.
- mismatched: matched, but the label count differs from the prediction's rows; consumed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..feedback import FeedbackVolume, LabelRecord, Manifest, Record, Sample
from ..prediction_log import Found, PredictionIndex, fetch, parse_request_id
from ..segments import list_segments

KINDS = ("with_features", "matched", "expired", "unmatched", "pending", "duplicates", "unacknowledged", "mismatched")


@dataclass
class Joined:
    records: list[Record]
    positions: dict[str, int]
    pending: dict[str, list[int]]
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))


def _classify(volume: FeedbackVolume, index: PredictionIndex, label: LabelRecord, open_segments: set[str]) -> str:
    assert label.label.request_id is not None
    parsed = parse_request_id(label.label.request_id)
    if parsed is None:
        return "unmatched"
    found = index.lookup(*parsed).status
    if found is Found.EXPIRED:
        return "expired"  # whatever its claim: retention removes the claims of expired ids
    claimed = volume.claimed_by(label)
    if claimed is False:
        return "duplicates"
    if claimed is None:
        return "pending" if label.segment in open_segments else "unacknowledged"
    return {Found.FOUND: "matched", Found.PENDING: "pending", Found.UNKNOWN: "unmatched"}[found]


def join(volume: FeedbackVolume, manifest: Manifest) -> Joined:
    """The training samples of every unconsumed label, by the classes above."""
    index = PredictionIndex(volume.layout.predictions)
    index.refresh()
    open_segments = {sid for sid, (name, _) in list_segments(volume.layout.labels).items() if not name.sealed}
    labels = list(volume.iter_unconsumed(manifest))
    joined = Joined([], FeedbackVolume.positions(labels), {})
    matched: list[tuple[LabelRecord, tuple[str, int]]] = []
    for label in labels:
        if label.label.request_id is None:
            assert label.label.features is not None
            sample = Sample(label.label.features.tolist(), label.label.labels[0], label.label.ts, label.model_version)
            joined.records.append(Record(label.segment, label.offset, label.end, sample))
            joined.counts["with_features"] += 1
            continue
        kind = _classify(volume, index, label, open_segments)
        if kind == "matched":
            parsed = parse_request_id(label.label.request_id)
            assert parsed is not None
            matched.append((label, parsed))
            continue
        joined.counts[kind] += label.label.rows
        if kind == "pending":
            joined.pending.setdefault(label.segment, []).append(label.offset)
    predictions = fetch(volume.layout.predictions, [key for _, key in matched])
    for label, key in matched:
        prediction = predictions.get(key)
        if prediction is None:  # its block is unreadable
            joined.counts["unmatched"] += label.label.rows
            continue
        inputs = next(iter(prediction.inputs.values()))
        if len(inputs) != label.label.rows:
            joined.counts["mismatched"] += label.label.rows
            continue
        for row, value in zip(inputs, label.label.labels, strict=True):
            sample = Sample(row.reshape(-1).tolist(), value, prediction.ts, prediction.model_version)
            joined.records.append(Record(label.segment, label.offset, label.end, sample))
        joined.counts["matched"] += label.label.rows
    return joined


__all__ = ["KINDS", "Joined", "join"]
