"""Questions the operator asks runtime pods over HTTP, each on the pod's own address (DESIGN.md section 7).

- `readiness`: GET /v2/health/ready of a pod that is not ready: the runtime's
  state (loading, failed) and reason, which the status quotes;
- `version_counts`: GET /metrics of every ready pod of a version, summed (a
  Service would answer from one random pod); None when one does not answer,
  since a partial sum would look like a counter reset;
- `feedback_samples`: GET /v1/feedback/stats of one ready pod (every replica
  counts the same shared volume).

Nothing here talks to the API server: the pods' addresses come from the cache.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from modelfleet_operator.core import manifests
from modelfleet_operator.core.rollout import Counts, MetricsError, parse_metrics, sum_counts
from modelfleet_operator.core.snapshot import pod_ready, pod_url

METRICS_PATH = "/metrics"
STATS_PATH = "/v1/feedback/stats"
TIMEOUT_SECONDS = 2.0


def _timeout() -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)


async def readiness(http: aiohttp.ClientSession, pod: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The runtime's own account of itself: (state, reason) from its ready endpoint, or (None, None)."""
    url = pod_url(pod)
    if url is None:
        return None, None
    try:
        async with http.get(url + manifests.READY_PATH, timeout=_timeout()) as response:
            body = await response.json(content_type=None)
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return None, None
    if not isinstance(body, dict):
        return None, None
    state, reason = body.get("state"), body.get("reason")
    return (str(state) if state else None), (str(reason) if reason else None)


async def readiness_of(
    http: aiohttp.ClientSession, pods: Sequence[Mapping[str, Any]]
) -> dict[str, tuple[str | None, str | None]]:
    """The runtime's answer of every pod that is not ready, by pod name."""
    waiting = [p for p in pods if not pod_ready(p) and pod_url(p)]
    answers = await asyncio.gather(*(readiness(http, p) for p in waiting))
    return {str(p["metadata"]["name"]): a for p, a in zip(waiting, answers, strict=True)}


async def _pod_counts(http: aiohttp.ClientSession, url: str) -> Counts | None:
    try:
        async with http.get(url + METRICS_PATH, timeout=_timeout()) as response:
            if response.status != 200:
                return None
            return parse_metrics(await response.text())
    except (TimeoutError, aiohttp.ClientError, MetricsError):
        return None


async def version_counts(http: aiohttp.ClientSession, pods: Sequence[Mapping[str, Any]]) -> Counts | None:
    """A version's counts summed over its ready pods; None when there is none or one does not answer."""
    urls = [url for p in pods if pod_ready(p) and (url := pod_url(p))]
    if not urls:
        return None
    per_pod = await asyncio.gather(*(_pod_counts(http, url) for url in urls))
    if any(c is None for c in per_pod):
        return None
    return sum_counts(c for c in per_pod if c is not None)


async def feedback_samples(http: aiohttp.ClientSession, pods: Sequence[Mapping[str, Any]]) -> int | None:
    """Unconsumed samples on the feedback volume, from the first ready pod that answers; None if none does."""
    for pod in sorted(pods, key=lambda p: str(p["metadata"]["name"])):
        url = pod_url(pod)
        if url is None or not pod_ready(pod):
            continue
        try:
            async with http.get(url + STATS_PATH, timeout=_timeout()) as response:
                if response.status != 200:
                    continue
                body = await response.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError):
            continue
        if isinstance(body, dict) and body.get("enabled") and isinstance(body.get("unconsumed"), int):
            return max(int(body["unconsumed"]), 0)
    return None


__all__ = ["feedback_samples", "readiness", "readiness_of", "version_counts"]
