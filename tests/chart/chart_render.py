"""Rendering helpers shared by the chart tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "modelfleet"
RELEASE = "modelfleet"
NAMESPACE = "modelfleet"

# The value sets every chart test renders: the defaults and the three
# deployments the issue names, plus namespaced peering, which combines two.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "gateway": {
        "routing": {"mode": "gateway", "gateway": {"namespace": "gateway-system", "name": "public"}},
        "allowedImages": ["registry.example.com/ml/"],
        "allowedUriSchemes": ["https", "pvc"],
        "logLevel": "debug",
        "logFormat": "text",
    },
    "namespaced": {"watchNamespaces": ["ml", "team-b"]},
    "peering": {"replicas": 2},
    "namespaced-peering": {"replicas": 3, "watchNamespaces": ["ml"]},
}


def write_values(directory: Path, values: dict[str, Any]) -> Path:
    path = directory / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120)


def find(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    [deployment] = find(objects, "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}
