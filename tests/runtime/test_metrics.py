"""/metrics as Prometheus and dashboards read it: valid names, the model's labels, process collectors."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelfleet_runtime.settings import Settings
from tests.support.live_server import live_server

# Prometheus's own rules for names (and promtool's lint: a counter's name ends in _total).
NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


async def served_metrics(mlp_path: Path) -> str:
    settings = Settings(model=str(mlp_path), name="fraud", model_version="7", warmup_iterations=1)
    async with live_server(settings) as live:
        assert (await live.client.post("/predict", json={"features": [1, 2, 3, 4]})).status_code == 200
        assert (await live.client.post("/predict", json={"features": [1]})).status_code == 400
        return (await live.client.get("/metrics")).text


async def test_the_servers_request_batch_and_model_series_name_its_model_and_version(mlp_path: Path) -> None:
    families = list(text_string_to_metric_families(await served_metrics(mlp_path)))
    # The feature-store and feedback series belong to their own modules (features.py, feedback_api.py).
    others = ("modelfleet_feature", "modelfleet_feedback")
    ours = [f for f in families if f.name.startswith("modelfleet_") and not f.name.startswith(others)]
    assert {f.name for f in ours} >= {
        "modelfleet_requests",
        "modelfleet_request_latency_seconds",
        "modelfleet_queue_wait_seconds",
        "modelfleet_batch_size_rows",
        "modelfleet_batch_inference_seconds",
        "modelfleet_queue_depth_rows",
        "modelfleet_model_ready",
    }
    for family in ours:
        for sample in family.samples:
            assert (sample.labels.get("model"), sample.labels.get("version")) == ("fraud", "7"), sample


async def test_names_follow_prometheus_rules_and_the_standard_collectors_are_there(mlp_path: Path) -> None:
    families = list(text_string_to_metric_families(await served_metrics(mlp_path)))
    names = [f.name for f in families]
    assert len(names) == len(set(names)), "a metric family appears twice"
    for family in families:
        assert NAME.match(family.name) and family.documentation, family.name
        if family.type == "counter":
            assert all(s.name in (family.name + "_total", family.name + "_created") for s in family.samples)
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds", "python_info"} <= set(names)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (apt-get install prometheus)")
async def test_promtool_finds_nothing_to_lint(mlp_path: Path) -> None:
    text = await served_metrics(mlp_path)
    command = ["promtool", "check", "metrics"]
    lint = await asyncio.to_thread(subprocess.run, command, input=text, capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr
