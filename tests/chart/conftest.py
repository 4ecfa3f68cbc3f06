"""Fixtures for the Helm chart tests: a helm v3 binary and a renderer.

helm comes from scripts/get-helm.sh (the same script CI and the README use).
If it cannot provide one, the tests fail rather than skip: a chart that was
never rendered must not pass.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from chart_render import CHART, NAMESPACE, RELEASE, REPO_ROOT, run_helm, write_values

Renderer = Callable[..., list[dict[str, Any]]]


@pytest.fixture(scope="session")
def helm() -> str:
    script = REPO_ROOT / "scripts" / "get-helm.sh"
    proc = subprocess.run([str(script)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"scripts/get-helm.sh failed ({proc.returncode}):\n{proc.stderr}")
    path = proc.stdout.strip()
    assert Path(path).is_file(), f"get-helm.sh printed {path!r}, which is not a file"
    return path


@pytest.fixture
def render(helm: str, tmp_path: Path) -> Renderer:
    """Render the chart with the given values (CRDs included) into a list of objects."""

    def _render(values: dict[str, Any], include_crds: bool = True) -> list[dict[str, Any]]:
        args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                "--values", str(write_values(tmp_path, values))]
        if include_crds:
            args.append("--include-crds")
        proc = run_helm(helm, *args)
        assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
        return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]

    return _render
