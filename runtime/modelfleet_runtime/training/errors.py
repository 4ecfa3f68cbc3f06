"""The trainer's errors: each carries the CamelCase reason the operator writes into the status."""

from __future__ import annotations


class TrainingError(Exception):
    """Training cannot produce a model; `reason` is a CamelCase word for the operator's status."""

    reason = "TrainingFailed"


class UnsupportedModel(TrainingError):
    """The graph uses an operator or a shape the built-in trainer does not handle."""

    reason = "UnsupportedModel"


class NotEnoughSamples(TrainingError):
    """Too few usable samples to train and evaluate (nothing is consumed)."""

    reason = "NotEnoughSamples"
