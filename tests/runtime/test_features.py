"""Entity feature lookups against a real server started on 127.0.0.1 (see redis_server.py)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis

from modelfleet_runtime.errors import InvalidInput, InvalidValue, NotFound, Unavailable
from modelfleet_runtime.features import FeatureStore
from modelfleet_runtime.settings import Settings, SettingsError
from tests.support.polling import wait_for
from tests.support.redis_server import RedisServer

FIELDS = ("age", "score", "clicks")
PREFIX = "user:"


class Clock:
    """A hand-moved monotonic clock for the cache's TTL."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def counting_connection() -> tuple[type[aioredis.Connection], list[bytes]]:
    """A connection class that records every write carrying an HMGET (one write = one round trip)."""
    writes: list[bytes] = []

    class CountingConnection(aioredis.Connection):
        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            payload = (
                command
                if isinstance(command, (bytes, str))
                else b"".join(part if isinstance(part, bytes) else bytes(part) for part in command)
            )
            payload = payload.encode() if isinstance(payload, str) else payload
            if b"HMGET" in payload:
                writes.append(payload)
            await super().send_packed_command(command, check_health)

    return CountingConnection, writes


def sync_client(url: str, password: str | None = None) -> redis.Redis:
    return redis.Redis.from_url(url, password=password, socket_timeout=5)


def seed(client: redis.Redis, entity_id: str, **fields: Any) -> None:
    client.hset(PREFIX + entity_id, mapping={k: str(v) for k, v in fields.items()})


def hmget_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_hmget", {}).get("calls", 0))


def sample(store: FeatureStore, name: str) -> float:
    return store.registry.get_sample_value(name) or 0.0


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def make_store(clock: Clock) -> AsyncIterator[Callable[..., FeatureStore]]:
    stores: list[FeatureStore] = []

    def make(url: str, **options: Any) -> FeatureStore:
        options.setdefault("prefix", PREFIX)
        options.setdefault("cache_ttl", 300.0)
        options.setdefault("clock", clock)
        store = FeatureStore(url, options.pop("fields", FIELDS), **options)
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


async def test_vector_holds_the_hash_values_in_configured_order_as_float32(redis_url, make_store):
    client = sync_client(redis_url)
    # Stored in another order and with an extra field the model does not use.
    client.hset(PREFIX + "u1", mapping={"clicks": "1e3", "unused": "7", "score": "0.25", "age": "31"})
    store = make_store(redis_url)

    vector = await store.get("u1")

    assert vector.dtype == np.float32
    np.testing.assert_array_equal(vector, np.array([31, 0.25, 1000], dtype=np.float32))
    assert store.width == 3


async def test_get_many_answers_in_request_order_including_repeats(redis_url, make_store):
    client = sync_client(redis_url)
    for n in range(3):
        seed(client, f"u{n}", age=n, score=n / 10, clicks=n * 100)
    store = make_store(redis_url)

    vectors = await store.get_many(["u2", "u0", "u2", "u1"])

    expected = {f"u{n}": np.array([n, n / 10, n * 100], dtype=np.float32) for n in range(3)}
    for entity_id, vector in zip(["u2", "u0", "u2", "u1"], vectors, strict=True):
        np.testing.assert_array_equal(vector, expected[entity_id])


async def test_cache_hit_never_touches_the_store(redis_url, make_store):
    client = sync_client(redis_url)
    seed(client, "u1", age=1, score=2, clicks=3)
    connection_class, writes = counting_connection()
    store = make_store(redis_url, connection_class=connection_class)
    first = await store.get("u1")
    seed(client, "u1", age=9, score=9, clicks=9)

    again = await store.get_many(["u1", "u1"])

    assert len(writes) == 1
    for vector in again:
        np.testing.assert_array_equal(vector, first)
    assert sample(store, "modelfleet_feature_cache_hits_total") == 2
    assert sample(store, "modelfleet_feature_cache_misses_total") == 1
    assert sample(store, "modelfleet_feature_lookups_total") == 3
    assert sample(store, "modelfleet_feature_lookup_seconds_count") == 2
    assert sample(store, "modelfleet_feature_cache_entries") == 1  # set as it changes, so workers' files hold it


async def test_ttl_expiry_refreshes_from_the_store(redis_url, make_store, clock):
    client = sync_client(redis_url)
    seed(client, "u1", age=1, score=2, clicks=3)
    store = make_store(redis_url, cache_ttl=60)
    await store.get("u1")
    seed(client, "u1", age=4, score=5, clicks=6)

    clock.advance(59)
    still_cached = await store.get("u1")
    clock.advance(2)
    refreshed = await store.get("u1")

    np.testing.assert_array_equal(still_cached, [1, 2, 3])
    np.testing.assert_array_equal(refreshed, [4, 5, 6])


async def test_concurrent_misses_leave_in_one_round_trip(redis_server, redis_url, make_store):
    client = sync_client(redis_url)
    ids = [f"u{n}" for n in range(50)]
    for n, entity_id in enumerate(ids):
        seed(client, entity_id, age=n, score=0.5, clicks=n * 2)
    connection_class, writes = counting_connection()
    store = make_store(redis_url, connection_class=connection_class)
    client.config_resetstat()

    # Fifty callers (as fifty requests would), every id asked twice, all in the same tick.
    vectors = await asyncio.gather(*(store.get(entity_id) for entity_id in ids + ids))

    assert len(writes) == 1, "all misses of one tick go out in one pipelined write"
    assert hmget_calls(client) == 50, "the server saw each distinct entity once"
    assert sample(store, "modelfleet_feature_store_round_trips_total") == 1
    for n, vector in enumerate(vectors[:50]):
        np.testing.assert_array_equal(vector, [n, 0.5, n * 2])
        np.testing.assert_array_equal(vectors[50 + n], vector)


async def test_a_batch_lookup_is_one_round_trip(redis_url, make_store):
    client = sync_client(redis_url)
    ids = [f"u{n}" for n in range(32)]
    for n, entity_id in enumerate(ids):
        seed(client, entity_id, age=n, score=1, clicks=1)
    connection_class, writes = counting_connection()
    store = make_store(redis_url, connection_class=connection_class)
    client.config_resetstat()

    vectors = await store.get_many(ids)

    assert len(writes) == 1
    assert hmget_calls(client) == 32
    assert [float(v[0]) for v in vectors] == list(range(32))


async def test_a_miss_already_in_flight_is_shared_not_fetched_again(private_redis_server, make_store):
    url = private_redis_server.url
    client = sync_client(url)
    seed(client, "u1", age=1, score=2, clicks=3)
    store = make_store(url, socket_timeout=10)
    client.config_resetstat()

    # A frozen server holds the first fetch in flight for as long as the test needs.
    os.kill(private_redis_server.pid, signal.SIGSTOP)
    try:
        first = asyncio.ensure_future(store.get("u1"))
        await wait_for(lambda: sample(store, "modelfleet_feature_store_round_trips_total") == 1)
        second = asyncio.ensure_future(store.get("u1"))
        await wait_for(lambda: sample(store, "modelfleet_feature_cache_misses_total") == 2)
    finally:
        os.kill(private_redis_server.pid, signal.SIGCONT)

    np.testing.assert_array_equal(await first, await second)
    assert hmget_calls(client) == 1
    assert sample(store, "modelfleet_feature_store_round_trips_total") == 1


async def test_unknown_entity_is_not_found_naming_the_id(redis_url, make_store):
    client = sync_client(redis_url)
    client.hset(PREFIX + "other-fields", mapping={"something": "1"})
    store = make_store(redis_url)

    with pytest.raises(NotFound, match="'nobody'") as absent:
        await store.get("nobody")
    with pytest.raises(NotFound, match="'other-fields'"):
        await store.get("other-fields")

    assert absent.value.status == 404


async def test_one_unknown_entity_fails_a_batch_lookup(redis_url, make_store):
    client = sync_client(redis_url)
    seed(client, "u1", age=1, score=2, clicks=3)
    store = make_store(redis_url)

    with pytest.raises(NotFound, match="'ghost'"):
        await store.get_many(["u1", "ghost"])


async def test_missing_field_is_invalid_value_naming_field_and_entity(redis_url, make_store):
    client = sync_client(redis_url)
    client.hset(PREFIX + "u1", mapping={"age": "3", "clicks": "4"})
    store = make_store(redis_url)

    with pytest.raises(InvalidValue) as caught:
        await store.get("u1")

    assert caught.value.status == 422
    assert "'score'" in caught.value.message and "'u1'" in caught.value.message


@pytest.mark.parametrize("raw", ["abc", "", "nan", "inf", "1e39", "0x10"])
async def test_non_numeric_field_is_invalid_value_naming_it(redis_url, make_store, raw):
    client = sync_client(redis_url)
    seed(client, "u1", age=1, score=raw, clicks=3)
    store = make_store(redis_url)

    with pytest.raises(InvalidValue) as caught:
        await store.get("u1")

    assert "'score'" in caught.value.message and "'u1'" in caught.value.message


async def test_a_key_that_is_not_a_hash_is_invalid_value(redis_url, make_store):
    client = sync_client(redis_url)
    client.set(PREFIX + "u1", "a string")
    store = make_store(redis_url)

    with pytest.raises(InvalidValue, match=r"'u1'.*not a hash"):
        await store.get("u1")


async def test_without_a_miss_ttl_an_unknown_entity_is_asked_for_again(redis_url, make_store):
    client = sync_client(redis_url)
    store = make_store(redis_url, miss_ttl=0)
    with pytest.raises(NotFound):
        await store.get("late")
    seed(client, "late", age=1, score=2, clicks=3)

    np.testing.assert_array_equal(await store.get("late"), [1, 2, 3])


@pytest.mark.parametrize("entity_id", ["", "x" * 513, 42])
async def test_malformed_entity_id_is_invalid_input(redis_url, make_store, entity_id):
    store = make_store(redis_url)
    with pytest.raises(InvalidInput, match="entity_id"):
        await store.get(entity_id)


async def test_store_outage_serves_cached_entities_and_recovers(private_redis_server: RedisServer, make_store):
    url = private_redis_server.url
    seed(sync_client(url), "cached", age=1, score=2, clicks=3)
    seed(sync_client(url), "uncached", age=4, score=5, clicks=6)
    store = make_store(url)
    await store.get("cached")

    private_redis_server.stop()
    served = await store.get("cached")
    with pytest.raises(Unavailable) as outage:
        await store.get("uncached")
    with pytest.raises(Unavailable):
        await store.get_many(["cached", "uncached"])

    np.testing.assert_array_equal(served, [1, 2, 3])
    assert outage.value.status == 503 and "'uncached'" in outage.value.message
    assert sample(store, "modelfleet_feature_store_errors_total") == 2

    # Same port, empty memory (persistence is off): the entity is written again.
    private_redis_server.start()
    seed(sync_client(url), "uncached", age=4, score=5, clicks=6)
    np.testing.assert_array_equal(await store.get("uncached"), [4, 5, 6])


async def test_a_store_that_stops_answering_is_unavailable(private_redis_server: RedisServer, make_store):
    url = private_redis_server.url
    seed(sync_client(url), "u1", age=1, score=2, clicks=3)
    store = make_store(url, socket_timeout=0.2)
    await store.get("u1")  # a pooled connection exists; the frozen server keeps it open

    os.kill(private_redis_server.pid, signal.SIGSTOP)
    try:
        with pytest.raises(Unavailable, match="'u2'"):
            await store.get("u2")
        np.testing.assert_array_equal(await store.get("u1"), [1, 2, 3])
    finally:
        os.kill(private_redis_server.pid, signal.SIGCONT)
    seed(sync_client(url), "u2", age=7, score=8, clicks=9)
    np.testing.assert_array_equal(await store.get("u2"), [7, 8, 9])


async def test_password_from_settings_authenticates(make_store, clock):
    server = RedisServer(password="s3cret-from-a-Secret")
    server.start()
    try:
        seed(sync_client(server.url, password="s3cret-from-a-Secret"), "u1", age=1, score=2, clicks=3)
        settings = Settings(
            demo=True,
            feature_store=server.url,
            feature_store_password="s3cret-from-a-Secret",
            feature_prefix=PREFIX,
            feature_fields=FIELDS,
        )
        store = FeatureStore.from_settings(settings, clock=clock)
        without = make_store(server.url)
        try:
            np.testing.assert_array_equal(await store.get("u1"), [1, 2, 3])
            with pytest.raises(Unavailable) as refused:
                await without.get("u1")
            assert "s3cret" not in refused.value.message
        finally:
            await store.close()
    finally:
        server.close()


def test_settings_without_fields_are_rejected():
    with pytest.raises(SettingsError, match="feature-fields"):
        FeatureStore.from_settings(Settings(demo=True, feature_store="redis://127.0.0.1:1/0"))


async def test_close_fails_lookups_in_flight(private_redis_server: RedisServer, make_store):
    store = make_store(private_redis_server.url, socket_timeout=10)
    os.kill(private_redis_server.pid, signal.SIGSTOP)
    try:
        pending = asyncio.ensure_future(store.get("u1"))
        await wait_for(lambda: sample(store, "modelfleet_feature_store_round_trips_total") == 1)
        await store.close()
        with pytest.raises(Unavailable, match="'u1'"):
            await pending
    finally:
        os.kill(private_redis_server.pid, signal.SIGCONT)


async def test_an_unknown_entity_is_remembered_for_the_miss_ttl_only(redis_url, make_store, clock):
    client = sync_client(redis_url)
    store = make_store(redis_url, miss_ttl=5.0)
    calls = hmget_calls(client)

    for _ in range(50):
        with pytest.raises(NotFound, match="unknown entity 'ghost'"):
            await store.get("ghost")
    assert hmget_calls(client) == calls + 1
    assert sample(store, "modelfleet_feature_known_missing_total") == 49

    seed(client, "ghost", age=1, score=2, clicks=3)
    with pytest.raises(NotFound):
        await store.get("ghost")  # still within the miss TTL
    clock.advance(5.01)
    np.testing.assert_array_equal(await store.get("ghost"), np.array([1, 2, 3], dtype=np.float32))
    assert hmget_calls(client) == calls + 2


async def test_password_from_a_file_authenticates_and_never_from_two_places(tmp_path, clock):
    server = RedisServer(password="s3cret-from-a-Secret")
    server.start()
    password = tmp_path / "password"
    password.write_text("s3cret-from-a-Secret\n")
    try:
        seed(sync_client(server.url, password="s3cret-from-a-Secret"), "u1", age=1, score=2, clicks=3)
        options = {"demo": True, "feature_store": server.url, "feature_prefix": PREFIX, "feature_fields": FIELDS}
        store = FeatureStore.from_settings(Settings(**options, feature_store_password_file=str(password)), clock=clock)
        try:
            np.testing.assert_array_equal(await store.get("u1"), [1, 2, 3])
        finally:
            await store.close()
        with pytest.raises(SettingsError, match="not both"):
            Settings(**options, feature_store_password="x", feature_store_password_file=str(password))
        password.write_text("\n")
        with pytest.raises(SettingsError, match="is empty"):
            FeatureStore.from_settings(Settings(**options, feature_store_password_file=str(password)))
    finally:
        server.close()
