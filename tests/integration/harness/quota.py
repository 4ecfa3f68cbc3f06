"""ResourceQuota admission of Pods, as the API server's quota admission plugin decides it.

A Pod created in a namespace is checked against every ResourceQuota there
(`spec.hard`): `pods`, `count/pods`, `requests.cpu` / `cpu`, `requests.memory` /
`memory`, `limits.cpu`, `limits.memory` (requests default to limits, as the Pod
defaults do before admission). Usage is the sum over the namespace's Pods that
are not terminal (phase Succeeded or Failed). A Pod that would exceed a hard
limit is refused with 403 Forbidden and the API server's message
(`exceeded quota: NAME, requested: ..., used: ..., limited: ...`); a Pod without
a request or limit for a resource the quota limits is refused too
(`failed quota: NAME: must specify ...`). The quota's `status.hard` and
`status.used` are what the quota controller would write.
"""

from __future__ import annotations

import decimal
from collections.abc import Iterable, Mapping
from typing import Any

from . import quantities
from .writes import WriteError

_POD_COUNTS = ("pods", "count/pods")
_COMPUTE = {
    "cpu": ("requests", "cpu"),
    "requests.cpu": ("requests", "cpu"),
    "memory": ("requests", "memory"),
    "requests.memory": ("requests", "memory"),
    "limits.cpu": ("limits", "cpu"),
    "limits.memory": ("limits", "memory"),
}


def _amount(value: Any) -> decimal.Decimal:
    return quantities.parse(value)[0]


def pod_usage(pod: Mapping[str, Any]) -> dict[str, decimal.Decimal] | None:
    """What one Pod counts against a quota; None for a Pod that specifies nothing for some compute resource."""
    usage = {name: decimal.Decimal(1) for name in _POD_COUNTS}
    totals: dict[str, decimal.Decimal] = {}
    missing = set()
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        limits = resources.get("limits") or {}
        requests = {**limits, **(resources.get("requests") or {})}
        for quota_name, (kind, resource) in _COMPUTE.items():
            source = requests if kind == "requests" else limits
            if resource in source:
                totals[quota_name] = totals.get(quota_name, decimal.Decimal(0)) + _amount(source[resource])
            else:
                missing.add(quota_name)
    usage.update(totals)
    for name in missing:
        usage.pop(name, None)
    return usage


def _counts(pod: Mapping[str, Any]) -> bool:
    return ((pod.get("status") or {}).get("phase")) not in ("Succeeded", "Failed")


def used(pods: Iterable[Mapping[str, Any]], hard: Mapping[str, Any]) -> dict[str, decimal.Decimal]:
    total = {name: decimal.Decimal(0) for name in hard}
    for pod in pods:
        if not _counts(pod):
            continue
        usage = pod_usage(pod) or {}
        for name in total:
            total[name] += usage.get(name, decimal.Decimal(0))
    return total


def admit_pod(pod: Mapping[str, Any], quotas: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]]) -> None:
    """Raise WriteError 403 when `pod` may not be created under `quotas`, given the namespace's `pods`."""
    existing = list(pods)
    usage = pod_usage(pod) or {}
    name = (pod.get("metadata") or {}).get("name", "")
    for quota in quotas:
        hard = (quota.get("spec") or {}).get("hard") or {}
        tracked = [k for k in hard if k in _POD_COUNTS or k in _COMPUTE]
        missing = sorted(k for k in tracked if k in _COMPUTE and k not in usage)
        quota_name = quota["metadata"]["name"]
        if missing:
            raise WriteError(
                403,
                "Forbidden",
                f'pods "{name}" is forbidden: failed quota: {quota_name}: must specify {",".join(missing)}',
            )
        current = used(existing, {k: hard[k] for k in tracked})
        over = [k for k in sorted(tracked) if current[k] + usage.get(k, 0) > _amount(hard[k])]
        if over:
            requested = ",".join(f"{k}={_text(usage.get(k, 0))}" for k in over)
            in_use = ",".join(f"{k}={_text(current[k])}" for k in over)
            limited = ",".join(f"{k}={hard[k]}" for k in over)
            raise WriteError(
                403,
                "Forbidden",
                f'pods "{name}" is forbidden: exceeded quota: {quota_name}, '
                f"requested: {requested}, used: {in_use}, limited: {limited}",
            )


def status(quota: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    hard = (quota.get("spec") or {}).get("hard") or {}
    tracked = {k: v for k, v in hard.items() if k in _POD_COUNTS or k in _COMPUTE}
    current = used(pods, tracked)
    return {"hard": dict(hard), "used": {k: _text(v) for k, v in current.items()}}


def _text(amount: decimal.Decimal | int) -> str:
    return quantities.canonical(str(decimal.Decimal(amount).normalize()) if amount else "0")


__all__ = ["admit_pod", "pod_usage", "status", "used"]
