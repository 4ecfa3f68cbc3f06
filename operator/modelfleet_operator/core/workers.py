"""How many runtime processes a pod runs, and how many onnxruntime threads each, from its CPUs.

The runtime's `--workers N` runs N processes sharing the pod's ports (issue 13);
the operator sets it from the version's CPU request, the share of the node the
scheduler guarantees the container:

- workers: `spec.runtime.workers` when given, else the CPU request in whole CPUs,
  rounded down, at least 1 (500m -> 1, 1500m -> 1, 2 -> 2, 2500m -> 2), at most
  the runtime's 128. A fraction rounds down for the reason the runtime's own
  `--workers 0` gives: a worker that cannot have a whole CPU is throttled,
  which costs more tail latency than one worker fewer costs throughput.
- intra-op threads per worker: the CPU request divided by the workers, rounded
  down, at least 1, so that workers x threads stay within the request (an
  override above the CPUs gives 1 thread each and exceeds it, as asked).
- the CPU request is `resources.requests.cpu`; without one, `resources.limits.cpu`
  (the API server copies limits to missing requests); without either, 1 worker
  and onnxruntime's own thread default (the runtime's defaults).

Quantities are read exactly (decimal): "2", 2, "1.5", "1500m", "2000m", "0.5".
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelfleet_operator.core import drift

# The runtime's bound on --workers (modelfleet_runtime.settings.MAX_WORKERS).
MAX_WORKERS = 128


class BadQuantity(ValueError):
    """A resource quantity that does not parse (the CRD's pattern rejects these before)."""


def quantity(value: Any) -> decimal.Decimal:
    """A Kubernetes resource quantity as an exact decimal number ("1500m" -> 1.5, "1Ki" -> 1024).

    The same reading as drift's (which compares the quantities the API server canonicalises).
    """
    parsed = drift.quantity(value)
    if parsed is None:
        raise BadQuantity(f"{value!r} is not a resource quantity")
    return parsed


def cpu_request(resources: Mapping[str, Any]) -> decimal.Decimal | None:
    """The container's CPU request in CPUs: requests.cpu, else limits.cpu, else None."""
    for part in ("requests", "limits"):
        cpu = (resources.get(part) or {}).get("cpu")
        if cpu is not None:
            return quantity(cpu)
    return None


@dataclass(frozen=True)
class WorkerPlan:
    """`workers` processes of `intra_op_threads` onnxruntime threads each (None: the runtime's default)."""

    workers: int
    intra_op_threads: int | None


def plan_workers(resources: Mapping[str, Any], override: int | None = None) -> WorkerPlan:
    """The workers and threads of a runtime container with these resources (see the module docstring)."""
    cpus = cpu_request(resources)
    if override is not None:
        workers = override
    elif cpus is None:
        workers = 1
    else:
        workers = min(MAX_WORKERS, max(1, math.floor(cpus)))
    threads = None if cpus is None else max(1, math.floor(cpus / workers))
    return WorkerPlan(workers=workers, intra_op_threads=threads)


__all__ = ["MAX_WORKERS", "BadQuantity", "WorkerPlan", "cpu_request", "plan_workers", "quantity"]
