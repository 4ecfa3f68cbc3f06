"""Traffic arithmetic, as pure functions: integer shares from weights, replicas from shares.

`apportion` turns desired weights into integer shares that sum to 100;
`scale_at` gives the replicas (or autoscaler bounds) a version runs at a share
in service mode, `ceil(replicas x share / 100)` (DESIGN.md section 2), and
`needed` how many Available replicas that share needs. `transitions` moves a
model from one split to another with them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

HEADER_VERSION = "x-model-version"
SERVICE_PORT = 80
# The Open Inference Protocol gRPC port of the Services, the same number as the runtime's --grpc-port.
GRPC_SERVICE_PORT = 8081


@dataclass(frozen=True)
class Scale:
    """Replicas for one version: a fixed count, or HorizontalPodAutoscaler bounds.

    With `autoscaling` set the Deployment leaves `replicas` to the HPA; `replicas`
    is then only the count a newly created Deployment starts with.
    """

    replicas: int
    autoscaling: tuple[int, int] | None = None

    @property
    def floor(self) -> int:
        """The fewest replicas this scale keeps (the HPA's minReplicas when autoscaled)."""
        return self.autoscaling[0] if self.autoscaling else self.replicas

    @property
    def peak(self) -> int:
        """The most replicas this scale allows (the HPA's maxReplicas when autoscaled)."""
        return self.autoscaling[1] if self.autoscaling else self.replicas

    desired = floor

    def exceeds(self, other: Scale) -> bool:
        """Whether going from this scale to `other` would take capacity away."""
        return self.floor > other.floor or self.peak > other.peak

    def union(self, other: Scale) -> Scale:
        """At least the capacity of both: the larger floor and the larger peak."""
        low, high = max(self.floor, other.floor), max(self.peak, other.peak)
        if self.autoscaling is None and other.autoscaling is None:
            return Scale(replicas=low)
        return Scale(replicas=low, autoscaling=(max(low, 1), max(high, low, 1)))


def scale_from_spec(replicas: int, autoscaling: tuple[int, int] | None) -> Scale:
    """The version's replicas at full share (gateway mode, or a lone version)."""
    if autoscaling:
        return Scale(replicas=autoscaling[0], autoscaling=autoscaling)
    return Scale(replicas=replicas)


def _scaled(count: int, share: int) -> int:
    return math.ceil(count * share / 100)


def scale_at(full: Scale, share: int) -> Scale:
    """The replicas (or HPA bounds) of a version serving `share`% in service mode: 0 at 0,
    ceil(replicas x share / 100) otherwise, the HPA bounds scaled the same way (at least 1)."""
    if share <= 0:
        return Scale(replicas=0)
    if full.autoscaling:
        low = max(1, _scaled(full.autoscaling[0], share))
        high = max(low, _scaled(full.autoscaling[1], share))
        return Scale(replicas=low, autoscaling=(low, high))
    return Scale(replicas=_scaled(full.replicas, share))


def needed(full: Scale, share: int) -> int:
    """Available replicas a version with `full` replicas at 100% needs to carry `share`%."""
    return scale_at(full, share).floor


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


__all__ = [
    "GRPC_SERVICE_PORT",
    "HEADER_VERSION",
    "SERVICE_PORT",
    "Scale",
    "apportion",
    "needed",
    "scale_at",
    "scale_from_spec",
]
