"""Entity hashes in a Redis-protocol server, laid out the way the runtime's feature store reads them.

`prefix + id` hashes with one field per feature (tests/support/redis_server.py starts the server):

    with RedisServer() as server:
        fill_entities(server.url, "user:", [f"f{i}" for i in range(8)], 10_000)
"""

from __future__ import annotations


def fill_entities(url: str, prefix: str, fields: list[str] | tuple[str, ...], count: int) -> list[str]:
    """HSET `prefix + id` for ids "0".."count-1", one deterministic number per field; returns the ids."""
    import redis

    client = redis.Redis.from_url(url)
    ids = [str(n) for n in range(count)]
    try:
        for start in range(0, count, 1000):
            with client.pipeline(transaction=False) as pipe:
                for entity_id in ids[start : start + 1000]:
                    n = int(entity_id)
                    pipe.hset(
                        prefix + entity_id,
                        mapping={f: f"{((n * 7919 + i * 104729) % 2000) / 1000 - 1:.3f}" for i, f in enumerate(fields)},
                    )
                pipe.execute()
    finally:
        client.close()
    return ids
