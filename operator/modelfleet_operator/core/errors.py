"""The error of a ModelVersion the operator will not serve, shared by the modules that check specs."""

from __future__ import annotations


class SpecRejected(ValueError):
    """A ModelVersion the operator will not serve; `reason` is a CamelCase condition reason."""

    reason = "InvalidSpec"


__all__ = ["SpecRejected"]
