"""The chart carries the CRDs of crds/ byte for byte (crds/ is the source of truth)."""

from __future__ import annotations

from tests.support.paths import CHART, REPO


def test_chart_crds_are_the_top_level_crds_byte_for_byte() -> None:
    sources = sorted((REPO / "crds").glob("*.yaml"))
    assert [s.name for s in sources if s.name == "modelversion.yaml"] == ["modelversion.yaml"], (
        "crds/modelversion.yaml is missing"
    )
    drifted = [
        s.name
        for s in sources
        if not (CHART / "crds" / s.name).is_file() or (CHART / "crds" / s.name).read_bytes() != s.read_bytes()
    ]
    assert drifted == [], f"run scripts/sync-chart-crds.sh to copy {drifted} into the chart"


def test_chart_crds_are_only_the_top_level_ones_and_kopfs_peering() -> None:
    """No chart-only CRD can drift unnoticed: each one comes from crds/ or is kopf's peering."""
    top_level = {s.name for s in (REPO / "crds").glob("*.yaml")}
    chart = {c.name for c in (CHART / "crds").glob("*.yaml")}
    assert chart - top_level == {"kopf-peering.yaml"}
