"""Fixtures shared by every suite (small real ONNX models), and the session-wide RBAC replay."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.onnx_models import build_mlp

# The chart's RBAC is checked against the operator's recorded requests when the session ends.
pytest_plugins = ["tests.support.rbac_replay"]


@pytest.fixture
def mlp_path(tmp_path: Path) -> Path:
    """A one-input regression MLP: 4 features -> 16 -> 1."""
    return build_mlp(tmp_path / "mlp.onnx", (4, 16, 1))


@pytest.fixture
def classifier_path(tmp_path: Path) -> Path:
    """A multi-class model: 6 features -> 12 -> 3 class probabilities (Softmax)."""
    return build_mlp(tmp_path / "classifier.onnx", (6, 12, 3), softmax=True, output_name="probabilities")
