"""`modelfleet-runtime log export`: the prediction log as a file a data scientist can open (JSON lines or Parquet).

    modelfleet-runtime log export --dir /var/lib/modelfleet/feedback --since 24h --format parquet --output day.parquet

One row per predicted row: `request_id`, `row` (its index within the request),
`timestamp` (UTC), `model`, `model_version`, `pod`, every input and output
tensor by name (the row's values, flattened row-major), and `label` when a
label for the request_id is on the volume (null otherwise). `--since` and
`--until` take an ISO 8601 time (`2026-01-31T12:00:00Z`), seconds since the
epoch, or a duration back from now (`90s`, `15m`, `24h`, `7d`). Parquet needs
pyarrow (`pip install pyarrow`); JSON lines need nothing.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from . import claims
from .feedback import MAGICS, Layout, decode_label
from .prediction_log import Prediction, iter_predictions, parse_request_id
from .segments import list_segments, scan

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class ExportError(Exception):
    """The export cannot run as asked; the message says what to change."""


def parse_time(text: str, now: float) -> float:
    """Seconds since the epoch from an ISO 8601 time, a number of seconds, or a duration back from `now`."""
    text = text.strip()
    if match := _DURATION.fullmatch(text):
        return now - float(match[1]) * _UNIT[match[2]]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ExportError(
            f"cannot read {text!r} as a time: use ISO 8601 (2026-01-31T12:00:00Z), seconds since the epoch, "
            "or a duration back from now (90s, 15m, 24h, 7d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _labels(layout: Layout) -> dict[str, list[Any]]:
    """request_id -> its labels, for every label record on the volume that holds its id's claim."""
    found: dict[str, list[Any]] = {}
    for folder in (layout.labels, layout.consumed):
        for sid, (name, path) in list_segments(folder).items():
            try:
                result = scan(path, 0, MAGICS, sealed=name.sealed)
            except FileNotFoundError:
                continue
            for fr in result.frames:
                label = decode_label(fr.payload) if fr.magic == MAGICS[1] else None
                if label is None or label.request_id is None or (parsed := parse_request_id(label.request_id)) is None:
                    continue
                if claims.holder(layout.claims, *parsed) == claims.target(sid, fr.offset):
                    found[label.request_id] = list(label.labels)
    return found


def rows(root: Path, since: float, until: float) -> Iterator[dict[str, Any]]:
    """The export's rows (see the module docstring), in log order."""
    layout = Layout(root)
    labels = _labels(layout)
    for prediction in iter_predictions(layout.predictions, since=since, until=until):
        yield from _prediction_rows(prediction, labels.get(prediction.request_id))


def _prediction_rows(prediction: Prediction, labels: list[Any] | None) -> Iterator[dict[str, Any]]:
    count = len(next(iter(prediction.inputs.values())))
    moment = datetime.fromtimestamp(prediction.ts, tz=UTC)
    for i in range(count):
        row: dict[str, Any] = {
            "request_id": prediction.request_id,
            "row": i,
            "timestamp": moment,
            "model": prediction.model,
            "model_version": prediction.model_version,
            "pod": prediction.pod,
        }
        for part in (prediction.inputs, prediction.outputs):
            for name, array in part.items():
                row[name] = np.asarray(array[i]).reshape(-1).tolist()
        row["label"] = labels[i] if labels is not None and i < len(labels) else None
        yield row


def write_jsonl(records: Iterator[dict[str, Any]], out: IO[bytes]) -> int:
    count = 0
    for record in records:
        out.write(orjson.dumps(record, option=orjson.OPT_UTC_Z) + b"\n")
        count += 1
    return count


def write_parquet(records: Iterator[dict[str, Any]], path: Path) -> int:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ExportError(
            "--format parquet needs pyarrow, which is not installed: pip install pyarrow "
            "(or export with --format jsonl, which needs nothing)"
        ) from None
    batch = list(records)
    if batch:
        labels = [r.pop("label") for r in batch]
        table = pa.Table.from_pylist(batch)
        # A label is a number or a list: one JSON text column holds either.
        table = table.append_column(
            "label", pa.array([None if v is None else orjson.dumps(v).decode() for v in labels], pa.string())
        )
    else:
        table = pa.table({"request_id": pa.array([], pa.string())})
    pq.write_table(table, str(path))
    return len(batch)


def export(root: Path, *, since: float, until: float, fmt: str, output: str) -> int:
    if not (root / "predictions").is_dir():
        raise ExportError(f"{root} holds no prediction log (no predictions/ folder): is it the feedback volume?")
    records = rows(root, since, until)
    if fmt == "parquet":
        if output in ("", "-"):
            raise ExportError("--format parquet writes a file: give --output PATH")
        return write_parquet(records, Path(output))
    if output in ("", "-"):
        return write_jsonl(records, sys.stdout.buffer)
    with open(output, "wb") as f:
        return write_jsonl(records, f)


def cli_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="modelfleet-runtime log", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("export", help="write the prediction log as JSON lines or Parquet")
    p.add_argument(
        "--dir",
        default=os.environ.get("MODELFLEET_FEEDBACK_DIR") or os.environ.get("MODELFLEET_PREDICTION_LOG_DIR"),
        help="the feedback volume (or prediction log folder) [env MODELFLEET_FEEDBACK_DIR]",
    )
    p.add_argument("--since", default="", help="first time exported (ISO 8601, epoch seconds, or 24h back)")
    p.add_argument("--until", default="", help="exported up to this time, excluded (default: now)")
    p.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl")
    p.add_argument("--output", default="-", help="file to write ('-': standard output, jsonl only)")
    args = parser.parse_args(list(argv))
    now = time.time()
    try:
        if not args.dir:
            raise ExportError("give --dir (the feedback volume) or set MODELFLEET_FEEDBACK_DIR")
        since = parse_time(args.since, now) if args.since else -math.inf
        until = parse_time(args.until, now) if args.until else math.inf
        count = export(Path(args.dir), since=since, until=until, fmt=args.format, output=args.output)
    except ExportError as exc:
        print(f"modelfleet-runtime log export: {exc}", file=sys.stderr)
        return 2
    print(f"exported {count} row(s)", file=sys.stderr)
    return 0


__all__ = ["ExportError", "cli_main", "export", "parse_time", "rows"]
