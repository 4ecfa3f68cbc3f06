"""Where the repository's parts are, for tests that read its files (CRDs, the chart, examples)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
CHART = REPO / "charts" / "modelfleet"
EXAMPLES = REPO / "examples"
SCHEMAS = REPO / "tests" / "schemas"
# The pinned Gateway API CRDs (tests/schemas/README.md).
GATEWAY_API_SCHEMAS = SCHEMAS / "gateway-api-v1.6.1"
INTEGRATION = REPO / "tests" / "integration"
