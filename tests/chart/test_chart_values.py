"""values.schema.json refuses bad values; values.yaml documents every value;
the chart's version follows the package."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.chart_render import run_helm, write_values
from tests.support.paths import CHART, REPO

BAD_VALUES: dict[str, dict[str, Any]] = {
    "unknown top-level key": {"replicaCount": 2},
    "replicas as a string": {"replicas": "two"},
    "zero replicas": {"replicas": 0},
    "unknown routing mode": {"routing": {"mode": "istio"}},
    "gateway mode without a gateway": {"routing": {"mode": "gateway"}},
    "gateway mode without a gateway name": {"routing": {"mode": "gateway", "gateway": {"namespace": "gw"}}},
    "gateway name that is not a DNS name": {"routing": {"mode": "gateway", "gateway": {"name": "Public_GW"}}},
    "watchNamespaces as a string": {"watchNamespaces": "ml"},
    "namespace that is not a DNS label": {"watchNamespaces": ["ML_Team"]},
    "unknown log level": {"logLevel": "verbose"},
    "unknown log format": {"logFormat": "xml"},
    "liveness port as a string": {"livenessPort": "8081"},
    "allowedImages as a string": {"allowedImages": "modelfleet/runtime"},
    "unknown URI scheme": {"allowedUriSchemes": ["s3"]},
    "typo inside image": {"image": {"repo": "x"}},
    "rbac.create as a string": {"rbac": {"create": "yes"}},
    "a hostname template without {model}": {
        "routing": {"mode": "gateway", "gateway": {"name": "gw", "hostnameTemplate": "models.example.com"}}
    },
    "a resync of no time": {"traffic": {"resyncSeconds": 0}},
    "a negative scale-down delay": {"traffic": {"scaleDownDelaySeconds": -1}},
    "unknown traffic setting": {"traffic": {"resync": 300}},
    "metrics port out of range": {"metricsPort": 70000},
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_schema_rejects_bad_values(helm: str, tmp_path: Path, case: str) -> None:
    values = write_values(tmp_path, BAD_VALUES[case])
    proc = run_helm(helm, "template", "modelfleet", str(CHART), "--values", str(values))
    assert proc.returncode != 0, f"{case}: helm template accepted {BAD_VALUES[case]}"
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr


def test_schema_accepts_the_default_values() -> None:
    import jsonschema

    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load((CHART / "values.yaml").read_text()), schema)


def test_schema_types_every_default_value() -> None:
    """Every key in values.yaml is declared in the schema, down to the leaves the schema closes."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(defaults) == set(schema["properties"])


KEY_LINE = re.compile(r"^(\s*)([A-Za-z][A-Za-z0-9]*):(.*)$")


# Values whose children are an example of a free-form Kubernetes structure,
# documented as a whole.
FREE_FORM = {"resources"}


def test_values_yaml_documents_every_value() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    free_form_indent: int | None = None
    for index, line in enumerate(lines):
        match = KEY_LINE.match(line)
        if not match:
            continue
        indent, key, rest = match.groups()
        if free_form_indent is not None and len(indent) > free_form_indent:
            continue
        free_form_indent = len(indent) if key in FREE_FORM else None
        following = lines[index + 1] if index + 1 < len(lines) else ""
        is_parent = rest.strip() == "" and len(following) - len(following.lstrip()) > len(indent)
        previous = lines[index - 1].strip() if index else ""
        # Leaves carry a comment right above them; parents are documented by their leaves.
        if (not is_parent or key in FREE_FORM) and not previous.startswith("#"):
            undocumented.append(key)
    assert undocumented == []


def test_chart_app_version_is_the_package_version() -> None:
    package = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == package
    assert chart["version"] == package
