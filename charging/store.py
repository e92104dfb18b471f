"""The connection to Redis and how its failures surface in the domain."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from charging.errors import StorageUnavailable


def connect(url: str, *, max_connections: int = 64, timeout_s: float = 5.0) -> aioredis.Redis:
    """A pooled client; replies decoded as UTF-8 strings."""
    return aioredis.Redis.from_url(
        url,
        decode_responses=True,
        max_connections=max_connections,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        health_check_interval=30,
    )


@contextmanager
def storage_errors() -> Iterator[None]:
    """Turn "Redis cannot be reached" into ``StorageUnavailable``; script bugs and
    other Redis replies stay internal errors."""
    try:
        yield
    except (redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
        raise StorageUnavailable(f"redis unavailable: {type(exc).__name__}") from exc
