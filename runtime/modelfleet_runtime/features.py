"""Real-time entity features from the online store (Redis hashes) behind a TTL cache.

A request's `entity_id` names the hash `prefix + entity_id`; its configured
fields, in the configured order, become a float32 vector that the prediction
path places before the request's own features (DESIGN.md section 4).

Cache hits never touch Redis. Misses that arrive in the same event-loop tick
are fetched together in one pipelined round trip (one HMGET per key), and a
miss for an id that is already being fetched waits for that fetch instead of
starting another. An entity the store does not have is remembered for a short
while (`miss_ttl`), so repeating unknown ids costs no command. A store outage
fails only the entities that are not cached; nothing here ever invents a zero
vector. Callers bound how many ids one request may name before asking.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import redis.asyncio as aioredis
from cachetools import TTLCache
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .errors import InvalidInput, InvalidValue, NotFound, RuntimeProblem, Unavailable
from .settings import Settings, SettingsError

# Entity ids end up in Redis keys and in error messages; bound them.
MAX_ENTITY_ID_LENGTH = 512
_FLOAT32_MAX = float(np.finfo(np.float32).max)

_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class FeatureMetrics:
    """The feature store's Prometheus series, registered in one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.lookups = Counter("modelfleet_feature_lookups", "Entity feature lookups requested", registry=registry)
        self.cache_hits = Counter(
            "modelfleet_feature_cache_hits", "Entity lookups answered from the cache", registry=registry
        )
        self.cache_misses = Counter(
            "modelfleet_feature_cache_misses", "Entity lookups that needed the feature store", registry=registry
        )
        self.known_missing = Counter(
            "modelfleet_feature_known_missing",
            "Lookups answered 404 because the store recently did not have the entity (feature-miss-ttl)",
            registry=registry,
        )
        self.store_errors = Counter(
            "modelfleet_feature_store_errors",
            "Round trips to the feature store that failed (unreachable, timeout, refused)",
            registry=registry,
        )
        self.round_trips = Counter(
            "modelfleet_feature_store_round_trips", "Pipelined round trips sent to the feature store", registry=registry
        )
        self.latency = Histogram(
            "modelfleet_feature_lookup_seconds",
            "Time to produce the feature vectors of one get/get_many call",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.cache_entries = Gauge(
            "modelfleet_feature_cache_entries",
            "Entities currently held in the feature cache",
            registry=registry,
            multiprocess_mode="livesum",  # each worker of a pod has its own cache
        )


class FeatureStore:
    """Looks up entity feature vectors in Redis hashes through a bounded TTL cache."""

    def __init__(
        self,
        url: str,
        fields: Sequence[str],
        *,
        prefix: str = "",
        password: str | None = None,
        cache_ttl: float = 300.0,
        cache_size: int = 10000,
        miss_ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        registry: CollectorRegistry | None = None,
        socket_timeout: float = 0.5,
        connect_timeout: float = 0.5,
        max_connections: int = 16,
        connection_class: type[aioredis.Connection] | None = None,
    ) -> None:
        fields = tuple(fields)
        if not fields:
            raise ValueError("a feature store needs at least one field (feature-fields)")
        if len(set(fields)) != len(fields):
            raise ValueError(f"feature fields must be distinct, got {', '.join(fields)}")
        if cache_ttl < 0 or cache_size < 1:
            raise ValueError(f"feature cache needs ttl >= 0 and size >= 1, got ttl {cache_ttl}, size {cache_size}")
        if miss_ttl < 0:
            raise ValueError(f"feature-miss-ttl must not be negative, got {miss_ttl}")
        self.fields: tuple[str, ...] = fields
        self.prefix = prefix
        self.registry = registry if registry is not None else CollectorRegistry()
        self._metrics = FeatureMetrics(self.registry)
        self._cache: TTLCache[str, np.ndarray] = TTLCache(maxsize=cache_size, ttl=cache_ttl, timer=clock)
        # Entities the store did not have -> what to answer, until miss_ttl passes.
        self._misses: TTLCache[str, str] = TTLCache(maxsize=cache_size, ttl=miss_ttl, timer=clock)
        self._where = _describe(url)

        pool_kwargs: dict[str, Any] = {
            "max_connections": max_connections,
            # Wait this long for a free pooled connection before calling the store busy.
            "timeout": connect_timeout + socket_timeout,
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": connect_timeout,
            # One immediate retry replaces a connection that died while the store was away;
            # more retries (or backoff) would only hold requests longer during an outage.
            "retry": Retry(NoBackoff(), 1),
            "health_check_interval": 0,
        }
        if password:
            pool_kwargs["password"] = password
        if connection_class is not None:
            pool_kwargs["connection_class"] = connection_class
        self._pool = aioredis.BlockingConnectionPool.from_url(url, **pool_kwargs)
        self._redis = aioredis.Redis(connection_pool=self._pool)

        # id -> future of its vector, for ids queued or in flight; shared by all callers.
        self._pending: dict[str, asyncio.Future[np.ndarray]] = {}
        # ids registered this tick, sent together by the next flush.
        self._batch: list[str] = []
        self._flush_scheduled = False
        self._fetches: set[asyncio.Task[None]] = set()
        self._closed = False

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        registry: CollectorRegistry | None = None,
        **options: Any,
    ) -> FeatureStore:
        """Build the store from `--feature-*` settings; only call it when `feature_store` is set."""
        if not settings.feature_store:
            raise SettingsError("feature-store is empty: entity lookups are off")
        if not settings.feature_fields:
            raise SettingsError("feature-store is set but feature-fields is empty: list the hash fields in model order")
        password = settings.feature_store_password or None
        if settings.feature_store_password_file:
            try:
                password = Path(settings.feature_store_password_file).read_text().strip()
            except OSError as exc:
                raise SettingsError(f"feature-store-password-file: cannot read it: {exc}") from None
            if not password:
                raise SettingsError(f"feature-store-password-file {settings.feature_store_password_file} is empty")
        try:
            return cls(
                settings.feature_store,
                settings.feature_fields,
                prefix=settings.feature_prefix,
                password=password,
                cache_ttl=settings.feature_cache_ttl,
                cache_size=settings.feature_cache_size,
                miss_ttl=settings.feature_miss_ttl,
                clock=clock,
                registry=registry,
                **options,
            )
        except ValueError as exc:
            raise SettingsError(str(exc)) from None

    @property
    def width(self) -> int:
        """How many features each entity contributes (placed before the request's own)."""
        return len(self.fields)

    def key(self, entity_id: str) -> str:
        return self.prefix + entity_id

    async def get(self, entity_id: str) -> np.ndarray:
        """The entity's features as a read-only float32 vector of `width` values."""
        return (await self.get_many([entity_id]))[0]

    async def get_many(self, entity_ids: Sequence[str]) -> list[np.ndarray]:
        """One vector per id, in order; the first failing id (in order) raises.

        NotFound (404) for an unknown entity, InvalidValue (422) for a missing or
        non-numeric field, Unavailable (503) when the store cannot be reached for
        an entity that is not cached. An id the store recently did not have fails
        the call at once, before anything is asked of the store.
        """
        started = time.perf_counter()
        self._metrics.lookups.inc(len(entity_ids))
        try:
            for entity_id in entity_ids:
                _check_entity_id(entity_id)
            for entity_id in entity_ids:
                known_missing = self._misses.get(entity_id)
                if known_missing is not None:
                    self._metrics.known_missing.inc()
                    raise NotFound(known_missing)
            found: dict[str, np.ndarray] = {}
            waiting: dict[str, asyncio.Future[np.ndarray]] = {}
            hits = 0
            for entity_id in entity_ids:
                if entity_id in found:
                    hits += 1
                    continue
                if entity_id in waiting:
                    continue
                vector = self._cache.get(entity_id)
                if vector is not None:
                    found[entity_id] = vector
                    hits += 1
                else:
                    waiting[entity_id] = self._future_for(entity_id)
            self._metrics.cache_hits.inc(hits)
            self._metrics.cache_misses.inc(len(entity_ids) - hits)
            # Set, not read at scrape time: a pod's workers report through files (multiprocess mode).
            self._metrics.cache_entries.set(len(self._cache))
            if waiting:
                # asyncio.wait leaves the shared futures alone if this caller is cancelled.
                await asyncio.wait(waiting.values())
                for entity_id in entity_ids:
                    future = waiting.get(entity_id)
                    if future is not None and entity_id not in found:
                        found[entity_id] = future.result()
            return [found[entity_id] for entity_id in entity_ids]
        finally:
            self._metrics.latency.observe(time.perf_counter() - started)

    async def close(self) -> None:
        """Fail lookups still in flight and close the store's connections."""
        self._closed = True
        for task in list(self._fetches):
            task.cancel()
        if self._fetches:
            await asyncio.wait(list(self._fetches))
        for entity_id in list(self._pending):
            self._settle(entity_id, Unavailable("the feature store is shutting down"))
        self._batch.clear()
        await self._redis.aclose()
        await self._pool.disconnect()

    def _future_for(self, entity_id: str) -> asyncio.Future[np.ndarray]:
        if self._closed:
            raise Unavailable("the feature store is shutting down")
        future = self._pending.get(entity_id)
        if future is None:
            loop = asyncio.get_running_loop()
            future = loop.create_future()
            self._pending[entity_id] = future
            self._batch.append(entity_id)
            if not self._flush_scheduled:
                # call_soon runs after every callback already queued for this tick,
                # so all misses registered in this tick leave in one round trip.
                self._flush_scheduled = True
                loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        entity_ids, self._batch = self._batch, []
        if not entity_ids:
            return
        task = asyncio.get_running_loop().create_task(self._fetch(entity_ids))
        self._fetches.add(task)
        task.add_done_callback(self._fetches.discard)

    async def _fetch(self, entity_ids: list[str]) -> None:
        try:
            try:
                self._metrics.round_trips.inc()
                async with self._redis.pipeline(transaction=False) as pipe:
                    for entity_id in entity_ids:
                        pipe.hmget(self.key(entity_id), self.fields)
                    replies = await pipe.execute(raise_on_error=False)
            except (TimeoutError, RedisError, OSError) as exc:
                self._metrics.store_errors.inc()
                reason = _reason(exc)
                for entity_id in entity_ids:
                    self._settle(
                        entity_id,
                        Unavailable(
                            f"feature store {self._where} is unavailable ({reason}); "
                            f"entity {entity_id!r} is not cached, retry later"
                        ),
                    )
                return
            for entity_id, reply in zip(entity_ids, replies, strict=True):
                try:
                    vector = self._vector(entity_id, reply)
                except RuntimeProblem as problem:
                    if isinstance(problem, NotFound):
                        self._misses[entity_id] = problem.message
                    self._settle(entity_id, problem)
                else:
                    self._cache[entity_id] = vector
                    self._metrics.cache_entries.set(len(self._cache))
                    self._settle(entity_id, vector)
        finally:
            # Cancelled by close(), or a bug: no caller may wait forever. No await separates
            # this from the settling above, so a pending id here is still this batch's.
            for entity_id in entity_ids:
                self._settle(entity_id, Unavailable(f"feature lookup for entity {entity_id!r} was interrupted"))

    def _settle(self, entity_id: str, outcome: np.ndarray | BaseException) -> None:
        future = self._pending.pop(entity_id, None)
        if future is None or future.done():
            return
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
            # Every caller that still waits re-raises it; nobody waiting is not an error.
            future.exception()
        else:
            future.set_result(outcome)

    def _vector(self, entity_id: str, reply: Any) -> np.ndarray:
        key = self.key(entity_id)
        if isinstance(reply, Exception):
            if str(reply).startswith("WRONGTYPE"):
                raise InvalidValue(f"entity {entity_id!r}: feature store key {key!r} is not a hash of feature fields")
            # The store refused the command (ACL, out of memory, ...): not the entity's fault.
            self._metrics.store_errors.inc()
            raise Unavailable(
                f"feature store {self._where} refused the lookup of entity {entity_id!r}: {_reason(reply)}"
            )
        if all(value is None for value in reply):
            raise NotFound(f"unknown entity {entity_id!r}: the feature store has no features under key {key!r}")
        missing = [field for field, value in zip(self.fields, reply, strict=True) if value is None]
        if missing:
            names = ", ".join(repr(field) for field in missing)
            raise InvalidValue(
                f"entity {entity_id!r} has no value for feature field {names} in {key!r}; "
                f"expected fields {', '.join(self.fields)}"
            )
        vector = np.empty(len(self.fields), dtype=np.float32)
        for index, (field, raw) in enumerate(zip(self.fields, reply, strict=True)):
            try:
                number = float(raw)
            except ValueError:
                number = math.nan
            if not math.isfinite(number) or abs(number) > _FLOAT32_MAX:
                raise InvalidValue(
                    f"entity {entity_id!r}: feature field {field!r} is {_shown(raw)}, not a finite float32 number"
                )
            vector[index] = number
        vector.setflags(write=False)
        return vector


def _check_entity_id(entity_id: Any) -> None:
    if not isinstance(entity_id, str) or not entity_id:
        raise InvalidInput(f"entity_id must be a non-empty string, got {entity_id!r}")
    if len(entity_id) > MAX_ENTITY_ID_LENGTH:
        raise InvalidInput(f"entity_id is {len(entity_id)} characters long, the limit is {MAX_ENTITY_ID_LENGTH}")


def _describe(url: str) -> str:
    """host:port/db of the store URL, never its password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    host = parts.hostname or "localhost"
    port = parts.port or 6379
    return f"{host}:{port}{parts.path or ''}"


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."


def _shown(raw: Any) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else str(raw)
    return repr(text if len(text) <= 40 else text[:40] + "...")


__all__ = ["MAX_ENTITY_ID_LENGTH", "FeatureMetrics", "FeatureStore"]
