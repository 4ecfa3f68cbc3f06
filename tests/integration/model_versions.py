"""Building ModelVersions and reading their status, for the integration scenarios.

mv = await cluster.apply(model_version("fraud-v1", "fraud", "1", demo_model.uri))
await wait_for_phase(cluster, "fraud-v1", "Ready")
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from tests.integration.harness.cluster import MV, Cluster
from tests.support.polling import wait_for

# The scenarios' models are files on this machine (file:// sources), which the operator allows only
# when its allowed-uri-schemes lists file (DESIGN.md section 9): every scenario's configuration does.
LOCAL_SOURCES = ("https", "pvc", "configmap", "file")


@dataclasses.dataclass(frozen=True)
class ModelFile:
    path: Path
    sha256: str

    @property
    def uri(self) -> str:
        return self.path.as_uri()


def model_version(name: str, model: str, version: str, uri: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "serving.modelfleet.dev/v1alpha1",
        "kind": "ModelVersion",
        "metadata": {"name": name},
        "spec": {"model": model, "version": version, "source": {"uri": uri}, **spec},
    }


def phase(cluster: Cluster, name: str) -> str | None:
    mv = cluster.get(MV, name)
    return ((mv or {}).get("status") or {}).get("phase")


def condition(cluster: Cluster, name: str, kind: str) -> dict[str, Any] | None:
    mv = cluster.get(MV, name) or {}
    return next((c for c in (mv.get("status") or {}).get("conditions") or [] if c.get("type") == kind), None)


async def wait_for_phase(cluster: Cluster, name: str, wanted: str, timeout: float = 90.0) -> dict[str, Any]:
    await wait_for(
        lambda: phase(cluster, name) == wanted,
        timeout=timeout,
        message=lambda: f"{name} phase {wanted}; status now {(cluster.get(MV, name) or {}).get('status')}",
    )
    mv = cluster.get(MV, name)
    assert mv is not None
    return mv
