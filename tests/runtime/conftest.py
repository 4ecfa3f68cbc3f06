"""Fixtures of the runtime tests: real Redis-protocol servers for the feature store."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One server shared by the session (per xdist worker); tests that stop it use `private_redis_server`."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the shared server, emptied before the test."""
    redis_server.command("FLUSHALL")
    return redis_server.url


@pytest.fixture
def private_redis_server() -> Iterator[RedisServer]:
    """A server of this test's own, free to be stopped and restarted."""
    with RedisServer() as server:
        yield server
