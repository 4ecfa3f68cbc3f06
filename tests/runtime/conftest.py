"""Fixtures shared by the runtime tests."""

# tests/runtime has no __init__.py, so pytest puts it on sys.path and this imports by module name.
from redis_server import private_redis_server, redis_server, redis_url  # noqa: F401
