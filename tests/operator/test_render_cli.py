"""`modelfleet-operator render|crd|run`: the real CLI prints what the pure functions build."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

import modelfleet_operator
from modelfleet_operator import cli
from modelfleet_operator.config import OperatorConfig, load_config
from modelfleet_operator.core import drift
from modelfleet_operator.core.manifests import build_children
from modelfleet_operator.core.render import render_manifests
from modelfleet_operator.core.traffic import Scale
from modelfleet_operator.spec import crd_yaml


def _run(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_OPERATOR_")}
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "modelfleet_operator.cli", *args],
        capture_output=True,
        text=True,
        env=clean,
        input=stdin,
        timeout=60,
    )


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# The settings an example needs (full.yaml has a trainer of its own), as `render --set` pairs.
EXAMPLE_SETTINGS = {
    "full.yaml": {
        "allowed-images": "ghcr.io/modelfleet/runtime,registry.example.com/ml/",
        "allowed-trainer-images": "registry.example.com/ml/fraud-trainer",
    }
}


@pytest.mark.parametrize("example", ["minimal.yaml", "full.yaml", "canary.yaml"])
def test_render_prints_exactly_what_the_pure_functions_build(repo: Path, example: str) -> None:
    path = repo / "examples" / example
    settings = EXAMPLE_SETTINGS.get(example, {})
    result = _run("render", str(path), *(arg for k, v in settings.items() for arg in ("--set", f"{k}={v}")))
    assert result.returncode == 0, result.stderr
    printed = list(yaml.safe_load_all(result.stdout))
    config = load_config(settings)
    assert printed == render_manifests(_docs(path), config)
    # and that is the shared Service and NetworkPolicy followed by each version's own children, stamped
    # for the drift check
    versions = sorted(_docs(path), key=lambda v: v["metadata"]["name"])
    model = versions[0]["spec"]["model"]
    assert [(o["kind"], o["metadata"]["name"]) for o in printed[:2]] == [("Service", model), ("NetworkPolicy", model)]
    owners = [o["metadata"]["name"] for o in printed[2:]]
    assert owners == sorted(owners) and set(owners) == {v["metadata"]["name"] for v in versions}
    for mv in versions:
        mine = [o for o in printed[2:] if o["metadata"]["name"] == mv["metadata"]["name"]]
        replicas = next(o for o in mine if o["kind"] == "Deployment")["spec"].get("replicas")
        scale = Scale(replicas) if replicas is not None else None
        expected = build_children(mv, config, scale) if scale else build_children(mv, config)
        assert [{k: v for k, v in o.items() if k != "metadata"} for o in mine] == [
            {k: v for k, v in c.items() if k != "metadata"} for c in expected
        ]
    for obj in printed:
        assert obj["metadata"]["annotations"][drift.APPLIED_ANNOTATION] == drift.applied_hash(obj)


def test_render_in_gateway_mode_includes_the_httproute(repo: Path) -> None:
    path = repo / "examples" / "canary.yaml"
    result = _run("render", str(path), "--set", "routing=gateway", "--set", "gateway=infra/public")
    assert result.returncode == 0, result.stderr
    printed = list(yaml.safe_load_all(result.stdout))
    config = OperatorConfig(routing="gateway", gateway="infra/public")
    assert printed == render_manifests(_docs(path), config)
    route = next(o for o in printed if o["kind"] == "HTTPRoute")
    assert [b["weight"] for b in route["spec"]["rules"][-1]["backendRefs"]] == [90, 10]
    assert route["spec"]["hostnames"] == ["fraud-default.example.com"]  # model-namespace.domain
    # gateway mode keeps every version at full replicas
    assert {o["metadata"]["name"]: o["spec"]["replicas"] for o in printed if o["kind"] == "Deployment"} == {
        "fraud-v1": 4,
        "fraud-v2": 4,
    }


def test_render_reads_the_operator_environment_and_set_wins(repo: Path) -> None:
    path = str(repo / "examples" / "minimal.yaml")
    env = {"MODELFLEET_OPERATOR_RUNTIME_IMAGE": "ghcr.io/modelfleet/runtime:9.9"}

    def images(out: str) -> str:
        deployment = next(o for o in yaml.safe_load_all(out) if o["kind"] == "Deployment")
        return deployment["spec"]["template"]["spec"]["containers"][0]["image"]

    assert images(_run("render", path, env=env).stdout) == "ghcr.io/modelfleet/runtime:9.9"
    overridden = _run("render", path, "--set", "runtime-image=ghcr.io/modelfleet/runtime:1.0", env=env)
    assert images(overridden.stdout) == "ghcr.io/modelfleet/runtime:1.0"


def test_render_reads_stdin_and_skips_other_kinds(repo: Path) -> None:
    text = (
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: ml}\n---\n"
        + (repo / "examples" / "minimal.yaml").read_text()
    )
    result = _run("render", "-", stdin=text)
    assert result.returncode == 0, result.stderr
    assert "skipping document 1 (Namespace)" in result.stderr
    kinds = ["Service", "NetworkPolicy", "Deployment", "Service"]
    assert [o["kind"] for o in yaml.safe_load_all(result.stdout)] == kinds


def test_render_fails_with_an_actionable_message(tmp_path: Path, repo: Path) -> None:
    bad = (repo / "examples" / "minimal.yaml").read_text().replace("spec:\n", "spec:\n  runtimeImage: evil/miner:1\n")
    path = tmp_path / "bad.yaml"
    path.write_text(bad)
    result = _run("render", str(path))
    assert result.returncode == 2
    assert "fraud-v1" in result.stderr and "not an allowed image" in result.stderr
    assert result.stdout == ""
    wrong = _run("render", str(repo / "examples" / "minimal.yaml"), "--set", "routing=mesh")
    assert wrong.returncode == 2 and "routing must be one of service, gateway" in wrong.stderr
    missing = _run("render", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_crd_command_prints_the_crd_file(repo: Path) -> None:
    result = _run("crd")
    assert result.returncode == 0
    assert result.stdout == crd_yaml() == (repo / "crds" / "modelversion.yaml").read_text()


def test_run_builds_the_config_from_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[OperatorConfig] = []
    fake = types.ModuleType("modelfleet_operator.runner")
    fake.run = seen.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "modelfleet_operator.runner", fake)
    monkeypatch.setattr(modelfleet_operator, "runner", fake, raising=False)
    monkeypatch.setenv("MODELFLEET_OPERATOR_ROUTING", "gateway")
    monkeypatch.setenv("MODELFLEET_OPERATOR_GATEWAY", "infra/public")
    monkeypatch.setenv("MODELFLEET_OPERATOR_LOG_LEVEL", "debug")
    code = cli.main(["run", "--namespace", "ml", "-n", "staging", "--standalone", "--log-level", "warning"])
    assert code == 0
    (config,) = seen
    assert config.namespaces == ("ml", "staging")
    assert config.standalone is True and config.all_namespaces is False
    assert (config.routing, config.gateway) == ("gateway", "infra/public")
    assert config.log_level == "warning"  # the flag wins over the variable


def test_run_refuses_namespaces_together_with_all_namespaces(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--namespace", "ml", "--all-namespaces"]) == 2
    assert "not both" in capsys.readouterr().err
