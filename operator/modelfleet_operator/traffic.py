"""How a model's traffic is split across its versions, as pure functions.

Input: the versions of one model (desired weight, Ready or not, replica
settings, the share each serves now). Output: the effective integer shares
(summing to 100), the replicas of each version in service mode, and the
HTTPRoute of gateway mode. The kopf handlers read the versions, call these and
write the results; nothing here talks to the API.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelfleet_operator.config import OperatorConfig

HEADER_VERSION = "x-model-version"
SERVICE_PORT = 80
# Gateway API allows 16 rules per HTTPRoute: one per pinned version plus the weighted default.
MAX_PINNED_VERSIONS = 15
MAX_BACKENDS = 16


@dataclass(frozen=True)
class VersionState:
    """What the traffic decision needs to know about one version of a model."""

    name: str  # metadata.name: the Deployment and Service of the version
    version: str  # spec.version: the value of the x-model-version header
    weight: int  # spec.traffic, the desired share 0-100
    ready: bool  # loaded, warmed up and not rolled back
    replicas: int = 1  # spec.replicas
    autoscaling: tuple[int, int] | None = None  # spec.autoscaling (minReplicas, maxReplicas)
    serving: int = 0  # status.servingTraffic: the share it serves now


@dataclass(frozen=True)
class TrafficSplit:
    """Effective shares by version name. `held` means nothing Ready wants traffic, so the
    previous shares were kept (never route to nothing while something still works)."""

    shares: Mapping[str, int]
    held: bool = False

    def share(self, name: str) -> int:
        return self.shares.get(name, 0)


@dataclass(frozen=True)
class Scale:
    """Replicas for one version: a fixed count, or HorizontalPodAutoscaler bounds.

    With `autoscaling` set the Deployment leaves `replicas` to the HPA; `replicas`
    is then only the count a newly created Deployment starts with.
    """

    replicas: int
    autoscaling: tuple[int, int] | None = None

    @property
    def desired(self) -> int:
        return self.autoscaling[0] if self.autoscaling else self.replicas


def scale_from_spec(replicas: int, autoscaling: tuple[int, int] | None) -> Scale:
    """The version's replicas at full share (gateway mode, or a lone version)."""
    if autoscaling:
        return Scale(replicas=autoscaling[0], autoscaling=autoscaling)
    return Scale(replicas=replicas)


def apportion(weights: Mapping[str, int], total: int = 100) -> dict[str, int]:
    """Largest-remainder apportionment of `total` by `weights` (all non-negative, sum > 0).

    Deterministic and independent of the order of `weights`: ties in the
    remainder go to the larger weight, then to the name that sorts first.
    Every positive weight gets at least 1 when there are enough units, so a Ready
    version that asks for traffic always serves some. Each such unit comes from the
    share furthest above its exact quota (then the larger share, then the name sorting
    last), so no share moves more than about a point from its quota even when
    several small versions need one.
    """
    weight_sum = sum(weights.values())
    if weight_sum <= 0:
        raise ValueError("apportion needs a positive total weight")
    shares = {name: w * total // weight_sum for name, w in weights.items()}
    left = total - sum(shares.values())
    by_remainder = sorted(weights, key=lambda n: (-(weights[n] * total % weight_sum), -weights[n], n))
    for name in by_remainder[:left]:
        shares[name] += 1
    starved = sorted(n for n, w in weights.items() if w > 0 and shares[n] == 0)
    if len([w for w in weights.values() if w > 0]) <= total:
        for name in starved:
            # Surplus over the exact quota, times weight_sum to stay in integers; a share of 1 keeps it.
            donor = max(
                (n for n in shares if shares[n] > 1),
                key=lambda n: (shares[n] * weight_sum - weights[n] * total, shares[n], n),
            )
            shares[donor] -= 1
            shares[name] += 1
    return shares


def effective_shares(versions: Iterable[VersionState]) -> TrafficSplit:
    """Normalise the desired weights of the Ready versions to integer shares summing to 100.

    A version that is not Ready gets 0. When no Ready version asks for traffic
    (none is Ready, or every Ready one has weight 0) the current shares are kept:
    `held` is True and the shares are the versions' `serving` values.
    """
    versions = list(versions)
    wanting = {v.name: v.weight for v in versions if v.ready and v.weight > 0}
    if not wanting:
        return TrafficSplit(shares={v.name: v.serving for v in versions}, held=True)
    shares = apportion(wanting)
    return TrafficSplit(shares={v.name: shares.get(v.name, 0) for v in versions})


def _scaled(count: int, share: int) -> int:
    return math.ceil(count * share / 100)


def service_mode_scales(versions: Iterable[VersionState], split: TrafficSplit) -> dict[str, Scale]:
    """Replicas of each version in service mode, where the ready-pod ratio is the traffic split.

    - share s > 0: ceil(replicas * s / 100), HPA bounds scaled the same way;
    - share 0, weight 0: 0 replicas (the Deployment stays, so a rollback scales it up);
    - share 0, weight > 0 (warming up, or waiting to take over): full replicas when
      no other version serves, else 1 replica, so the serving versions keep all
      the traffic until it is Ready.
    """
    versions = list(versions)
    serving = {v.name for v in versions if split.share(v.name) > 0}
    out: dict[str, Scale] = {}
    for v in versions:
        share = split.share(v.name)
        if share > 0:
            if v.autoscaling:
                low = max(1, _scaled(v.autoscaling[0], share))
                high = max(low, _scaled(v.autoscaling[1], share))
                out[v.name] = Scale(replicas=low, autoscaling=(low, high))
            else:
                out[v.name] = Scale(replicas=_scaled(v.replicas, share))
        elif v.weight == 0:
            out[v.name] = Scale(replicas=0)
        elif serving - {v.name}:
            out[v.name] = Scale(replicas=1)
        else:
            out[v.name] = scale_from_spec(v.replicas, v.autoscaling)
    return out


def gateway_mode_scales(versions: Iterable[VersionState]) -> dict[str, Scale]:
    """In gateway mode every version keeps its full replicas: the route splits exactly,
    and a version at weight 0 stays warm so that a rollback is instant."""
    return {v.name: scale_from_spec(v.replicas, v.autoscaling) for v in versions}


def plan_scales(versions: Sequence[VersionState], split: TrafficSplit, config: OperatorConfig) -> dict[str, Scale]:
    """The replicas of each version for the configured routing mode."""
    if config.routing == "gateway":
        return gateway_mode_scales(versions)
    return service_mode_scales(versions, split)


def build_httproute(
    *,
    model: str,
    namespace: str,
    versions: Sequence[VersionState],
    split: TrafficSplit,
    config: OperatorConfig,
    labels: Mapping[str, str] | None = None,
    owner_references: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The Gateway API HTTPRoute named after the model.

    One rule per version matches the header `x-model-version: VERSION` and pins
    it (more header matches take precedence over the default rule); the last rule
    sends everything else to the versions with a positive share, weighted by it.
    With more than 15 versions only the 15 with the largest shares are pinnable, and
    at most 16 versions share the default rule (the Gateway API's limits).
    """
    gateway_namespace, gateway_name = config.gateway_ref
    parent: dict[str, Any] = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway_name}
    if gateway_namespace and gateway_namespace != namespace:
        parent["namespace"] = gateway_namespace

    def backend(v: VersionState, weight: int) -> dict[str, Any]:
        return {"group": "", "kind": "Service", "name": v.name, "port": SERVICE_PORT, "weight": weight}

    ordered = sorted(versions, key=lambda v: (-split.share(v.name), v.name))
    pinned = sorted(ordered[:MAX_PINNED_VERSIONS], key=lambda v: v.name)
    rules: list[dict[str, Any]] = [
        {
            "matches": [
                {
                    "path": {"type": "PathPrefix", "value": "/"},
                    "headers": [{"type": "Exact", "name": HEADER_VERSION, "value": v.version}],
                }
            ],
            "backendRefs": [backend(v, 1)],
        }
        for v in pinned
    ]
    # Gateways normalise weights over the listed backends; past 16 the smallest shares are dropped.
    serving = [v for v in ordered if split.share(v.name) > 0][:MAX_BACKENDS]
    weighted = [backend(v, split.share(v.name)) for v in sorted(serving, key=lambda v: v.name)]
    rules.append(
        {
            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
            "backendRefs": weighted,
        }
    )
    metadata: dict[str, Any] = {"name": model, "namespace": namespace, "labels": dict(labels or {})}
    if owner_references:
        metadata["ownerReferences"] = [dict(o) for o in owner_references]
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": metadata,
        "spec": {"parentRefs": [parent], "rules": rules},
    }


__all__ = [
    "HEADER_VERSION",
    "SERVICE_PORT",
    "Scale",
    "TrafficSplit",
    "VersionState",
    "apportion",
    "build_httproute",
    "effective_shares",
    "gateway_mode_scales",
    "plan_scales",
    "scale_from_spec",
    "service_mode_scales",
]
