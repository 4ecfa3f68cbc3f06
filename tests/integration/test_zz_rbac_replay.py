"""Least privilege, proven: every request the operator made in this session's integration
scenarios is granted by the chart's RBAC, and every grant was used by some request.

Runs after the other integration modules (its name sorts last) and replays what the
emulated API server recorded. The operators in those scenarios watch the namespace `ml`
and run in both routing modes, so the chart is rendered with `watchNamespaces: [ml]` and
gateway routing: the rules of both modes, scoped as a namespaced install scopes them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chart.chart_render import helm_path, render_chart
from tests.chart.rbac import check_requests, grants
from tests.integration.harness.cluster import HPAS, PDBS, Cluster
from tests.integration.harness.emulator import ApiRequest
from tests.integration.harness.kubelet import DeploymentController
from tests.integration.model_versions import ModelFile, model_version, wait_for_phase
from tests.support.polling import wait_for

VALUES = {
    "watchNamespaces": ["ml"],
    "routing": {"mode": "gateway", "gateway": {"namespace": "ml", "name": "public"}},
}


async def test_autoscaler_and_disruption_budget_come_and_go_with_the_spec(
    cluster: Cluster,
    kubelet: DeploymentController,
    operator,
    demo_model: ModelFile,
) -> None:
    autoscaled = {"replicas": 2, "autoscaling": {"minReplicas": 2, "maxReplicas": 4, "targetCPUUtilization": 60}}
    # No HPA controller runs here, so the version stays below minReplicas: only the children matter.
    mv = await cluster.apply(model_version("fraud-v1", "fraud", "1", demo_model.uri, **autoscaled))
    await wait_for(lambda: cluster.owned_by(HPAS, mv) and cluster.owned_by(PDBS, mv), timeout=60)
    [hpa] = cluster.owned_by(HPAS, mv)
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)

    # A merge patch with null removes autoscaling; one replica needs no disruption budget.
    await cluster.patch_spec("fraud-v1", {"autoscaling": None, "replicas": 1})
    await wait_for(lambda: not cluster.owned_by(HPAS, mv) and not cluster.owned_by(PDBS, mv), timeout=60)
    await wait_for_phase(cluster, "fraud-v1", "Ready")


def test_the_chart_grants_exactly_what_the_operator_used(api_requests: set[ApiRequest], tmp_path: Path) -> None:
    if not api_requests:
        pytest.fail(
            "no API requests were recorded: run this module after the integration scenarios "
            "(the whole suite, or all of tests/integration)"
        )
    rendered = render_chart(helm_path(), VALUES, tmp_path)
    assert grants(rendered), "the chart rendered no RBAC rules"
    missing, unused = check_requests(api_requests, rendered)
    assert not missing, f"the operator made requests the chart does not grant: {sorted(missing)}"
    assert not unused, f"the chart grants what the operator never used: {sorted(unused)}"
