"""Fixtures for the Helm chart tests: a helm v3 binary and a renderer.

helm comes from scripts/get-helm.sh (the same script CI and the README use).
If it cannot provide one, the tests fail rather than skip: a chart that was
never rendered must not pass.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.chart.chart_render import helm_path, render_chart

Renderer = Callable[..., list[dict[str, Any]]]


@pytest.fixture(scope="session")
def helm() -> str:
    try:
        return helm_path()
    except RuntimeError as err:
        pytest.fail(str(err))


@pytest.fixture
def render(helm: str, tmp_path: Path) -> Renderer:
    """Render the chart with the given values (CRDs included) into a list of objects."""

    def _render(values: dict[str, Any], include_crds: bool = True) -> list[dict[str, Any]]:
        return render_chart(helm, values, tmp_path, include_crds)

    return _render
