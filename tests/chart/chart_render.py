"""Rendering helpers shared by the chart tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support.paths import CHART, REPO

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


def helm_path() -> str:
    """A helm v3 binary from scripts/get-helm.sh; raises RuntimeError if it cannot give one."""
    script = REPO / "scripts" / "get-helm.sh"
    proc = subprocess.run([str(script)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"scripts/get-helm.sh failed ({proc.returncode}):\n{proc.stderr}")
    path = proc.stdout.strip()
    if not Path(path).is_file():
        raise RuntimeError(f"scripts/get-helm.sh printed {path!r}, which is not a file")
    return path


def render_chart(helm: str, values: dict[str, Any], directory: Path, include_crds: bool = True) -> list[dict[str, Any]]:
    """`helm template` the chart with these values into a list of objects (AssertionError on failure)."""
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--values", str(write_values(directory, values))]
    if include_crds:
        args.append("--include-crds")
    proc = run_helm(helm, *args)
    assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def find(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    [deployment] = find(objects, "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}
