"""What a label may be, decided from the model's output: the rule POST /feedback applies before storing one.

A label is the true value of the model's first output for one row. With `k` the
number of values in one row of that output (the product of its dimensions after
the batch dimension):

- k = 1: a number. It must be finite in the output's dtype (1e308 is not a
  float32), an integer within the dtype's range for an integer output (0 or 1
  for bool), and within [0, 1] when the graph ends in Sigmoid (a 0/1 target or
  a probability).
- k > 1: a class index, an integer in [0, k); or a list of exactly k numbers,
  each valid as above (within [0, 1] when the graph ends in Sigmoid or Softmax).
- k unknown (a free dimension): a number, or a list of numbers, each finite in
  the output's dtype.

This is the rule the built-in trainer learns from (training/task.py), so a label
that is accepted is one it can use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidInput, InvalidValue, PayloadTooLarge
from .model import OnnxModel

MAX_LABEL_WIDTH = 4096
_UNIT_ACTIVATIONS = ("Sigmoid", "Softmax")


def final_operator(model_path: Path, output: str) -> str | None:
    """The op_type of the node that produces `output`, or None when the graph cannot be read."""
    try:
        import onnx

        graph = onnx.load(str(model_path), load_external_data=False).graph
    except Exception:  # an unreadable graph only loses the range check, never the dtype check
        return None
    producer = next((n for n in graph.node if output in n.output), None)
    return producer.op_type if producer is not None else None


@dataclass(frozen=True)
class LabelRule:
    output: str
    dtype: np.dtype
    width: int | None
    activation: str | None = None

    @classmethod
    def of(cls, model: OnnxModel, model_path: Path | None) -> LabelRule:
        spec = model.outputs[0]
        dims = spec.shape[1:]
        width = math.prod(d for d in dims if d is not None) if all(d is not None for d in dims) else None
        activation = final_operator(model_path, spec.name) if model_path is not None else None
        return cls(spec.name, spec.dtype, width, activation)

    @property
    def unit_interval(self) -> bool:
        return self.activation in _UNIT_ACTIVATIONS

    def describe(self) -> str:
        per_row = f"{self.width} value{'s' if self.width != 1 else ''}" if self.width else "a free number of values"
        after = f" after {self.activation}" if self.unit_interval else ""
        return f"the model's output {self.output!r} ({self.dtype.name}) has {per_row} per row{after}"

    def check(self, value: Any, where: str) -> float | int | list[float]:
        """`value` as a label of one row, or InvalidValue / InvalidInput saying why it is not one."""
        if isinstance(value, list):
            return self._vector(value, where)
        number = self._number(value, where)
        if self.width is None or self.width == 1:
            self._in_range(number, where, unit=self.unit_interval)
            return number
        if float(number).is_integer() and 0 <= number < self.width:
            return int(number)
        raise InvalidValue(
            f"{where} {value!r} is not a class index: {self.describe()}, so a label is an integer in "
            f"[0, {self.width}) or a list of {self.width} numbers"
        )

    def _vector(self, value: list[Any], where: str) -> list[float]:
        if not value:
            raise InvalidInput(f"{where} is an empty list")
        if len(value) > MAX_LABEL_WIDTH:
            raise PayloadTooLarge(f"{where} has {len(value)} values; the limit is {MAX_LABEL_WIDTH}")
        if self.width == 1 or (self.width is not None and len(value) != self.width):
            expected = "a number" if self.width == 1 else f"a class index or a list of {self.width} numbers"
            raise InvalidInput(f"{where} has {len(value)} values, but {self.describe()}: send {expected}")
        checked = []
        for i, item in enumerate(value):
            if isinstance(item, list):
                raise InvalidInput(f"{where}[{i}] is a list; a label is a number or a flat list of numbers")
            number = self._number(item, f"{where}[{i}]")
            self._in_range(number, f"{where}[{i}]", unit=self.unit_interval)
            checked.append(number)
        return checked

    def _number(self, value: Any, where: str) -> float | int:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidValue(f"{where} must be a number or a list of numbers, got {value!r}")
        if not math.isfinite(value):
            raise InvalidValue(f"{where} is not a finite number: {value!r}")
        return value

    def _in_range(self, number: float | int, where: str, *, unit: bool) -> None:
        kind = self.dtype.kind
        if kind == "f" and abs(number) > float(np.finfo(self.dtype).max):
            raise InvalidValue(f"{where} {number!r} is not a finite {self.dtype.name} number ({self.describe()})")
        if kind in "iu":
            info = np.iinfo(self.dtype)
            if not float(number).is_integer() or not info.min <= number <= info.max:
                raise InvalidValue(f"{where} {number!r} is not an {self.dtype.name} value ({self.describe()})")
        if kind == "b" and number not in (0, 1):
            raise InvalidValue(f"{where} {number!r} is not 0 or 1 ({self.describe()})")
        if unit and not 0 <= number <= 1:
            raise InvalidValue(f"{where} {number!r} is outside [0, 1]: {self.describe()}")


__all__ = ["MAX_LABEL_WIDTH", "LabelRule", "final_operator"]
