"""The images install exactly what the suite ran against: every package of each image pinned."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.paths import REPO


@pytest.mark.parametrize("image", ["runtime", "operator"])
def test_the_image_installs_its_extra_under_its_constraints(image: str) -> None:
    dockerfile = (REPO / image / "Dockerfile").read_text()
    assert f"COPY {image}/constraints.txt {image}/constraints.txt" in dockerfile
    assert f'pip install -c {image}/constraints.txt ".[{image}]"' in dockerfile


def test_the_constraints_pin_every_package_the_images_need_and_nothing_else() -> None:
    # A dependency added or dropped without rewriting the constraints fails here.
    check = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "pin-images.py"), "--check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    for image in ("runtime", "operator"):
        lines = [line for line in (REPO / image / "constraints.txt").read_text().splitlines() if line[:1] != "#"]
        assert lines and all("==" in line for line in lines), lines
