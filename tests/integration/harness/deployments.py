"""A Deployment's status as the Deployment controller writes it, for the harness's controllers.

One pure function for the test kubelet (`kubelet.DeploymentController`, real
processes) and the process-less `workloads.SimulatedWorkloads`:

- counts: observedGeneration, replicas, updatedReplicas, readyReplicas,
  availableReplicas, unavailableReplicas;
- `Available` (MinimumReplicasAvailable / MinimumReplicasUnavailable, with the
  controller's messages);
- `Progressing`: NewReplicaSetAvailable once every pod is of the current template
  and ready; ReplicaSetUpdated while it progresses; False with
  ProgressDeadlineExceeded once `spec.progressDeadlineSeconds` (default 600) passed
  since the last progress (a new template, or one more ready pod);
- `ReplicaFailure` True with reason FailedCreate and the API server's message
  while a pod cannot be created (a quota, Pod Security admission).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Progress:
    """The last progress seen: which template with how many ready pods, since when (on the caller's clock)."""

    template_hash: str
    ready: int
    since: float


def deployment_status(
    dep: Mapping[str, Any],
    *,
    template_hash: str,
    total: int,
    updated: int,
    ready: int,
    now: float,
    progress: Progress | None,
    create_failure: str | None = None,
) -> tuple[dict[str, Any], Progress, bool]:
    """(status, the progress to remember, whether the rollout is complete)."""
    spec = dep.get("spec") or {}
    desired = int(spec.get("replicas", 1))
    name = dep["metadata"]["name"]
    replica_set = f"{name}-{template_hash[:10]}"
    available = ready >= desired
    complete = available and updated == desired == total
    if progress is None or (progress.template_hash, progress.ready) != (template_hash, ready):
        progress = Progress(template_hash, ready, now)
    deadline = float(spec.get("progressDeadlineSeconds", 600))
    if complete:
        progressing = ("True", "NewReplicaSetAvailable", f'ReplicaSet "{replica_set}" has successfully progressed.')
    elif now - progress.since > deadline:
        progressing = ("False", "ProgressDeadlineExceeded", f'ReplicaSet "{replica_set}" has timed out progressing.')
    else:
        progressing = ("True", "ReplicaSetUpdated", f'ReplicaSet "{replica_set}" is progressing.')
    conditions: list[dict[str, Any]] = [
        {
            "type": "Available",
            "status": "True" if available else "False",
            "reason": "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
            "message": "Deployment has minimum availability."
            if available
            else "Deployment does not have minimum availability.",
        },
        {"type": "Progressing", "status": progressing[0], "reason": progressing[1], "message": progressing[2]},
    ]
    if create_failure is not None:
        conditions.append(
            {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": create_failure}
        )
    status = {
        "observedGeneration": dep["metadata"].get("generation", 1),
        "replicas": total,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "unavailableReplicas": max(desired - ready, 0),
        "conditions": conditions,
    }
    return status, progress, complete


__all__ = ["Progress", "deployment_status"]
