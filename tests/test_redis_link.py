"""The pipelined Redis link against a real redis-server."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis
from redis import exceptions as redis_errors

from charging.redis_link import RedisLink


async def test_concurrent_commands_get_their_own_replies_in_order(redis_url: str) -> None:
    link = RedisLink(redis_url)
    try:
        results = await asyncio.gather(
            *(link.execute("SET", f"k{i}", i) for i in range(200)),
            *(link.execute("INCRBY", f"k{i}", 1000) for i in range(200)),
            link.execute("HGET", "k1", "x"),  # wrong type: an error for this command only
            return_exceptions=True,
        )
        assert results[:200] == ["OK"] * 200
        assert results[200:400] == [1000 + i for i in range(200)]
        assert isinstance(results[400], redis_errors.ResponseError)
        assert await link.execute("GET", "k199") == "1199"
    finally:
        await link.aclose()


async def test_noscript_surfaces_as_redis_py_noscript_error(redis_url: str) -> None:
    link = RedisLink(redis_url)
    try:
        with pytest.raises(redis_errors.NoScriptError):
            await link.evalsha("0" * 40, 0)
        sha = await link.script_load("return ARGV[1]")
        assert await link.evalsha(sha, 0, "hi") == "hi"
    finally:
        await link.aclose()


async def test_a_stalled_redis_times_out_and_the_link_recovers(redis_url: str) -> None:
    # The link gives up after 1 to 1.5 s (its watchdog looks every half timeout); Redis
    # stays paused well past that, and the reconnection has a whole timeout to answer.
    link = RedisLink(redis_url, timeout_s=1.0)
    other = redis.Redis.from_url(redis_url)
    try:
        assert await link.execute("PING") == "PONG"
        other.execute_command("CLIENT", "PAUSE", "3000", "ALL")
        with pytest.raises(redis_errors.TimeoutError):
            await link.execute("PING")
        await asyncio.to_thread(other.ping)  # answered once the pause is over
        assert await link.execute("PING") == "PONG"  # reconnected; no stale reply crossed over
        assert await link.execute("ECHO", "fresh") == "fresh"
    finally:
        other.close()
        await link.aclose()


async def test_auth_and_database_from_the_url(redis_url: str) -> None:
    admin = redis.Redis.from_url(redis_url)
    user, password = f"u{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all"])
    host = redis_url.split("//")[1].split("/")[0]
    link = RedisLink(f"redis://{user}:{password}@{host}/3")
    try:
        await link.execute("SET", "in-db-3", "yes")
        assert admin.execute_command("SELECT", 3) and admin.get("in-db-3") == b"yes"
        bad = RedisLink(f"redis://{user}:wrong@{host}/0")
        with pytest.raises(redis_errors.ConnectionError):
            await bad.execute("PING")
        await bad.aclose()
    finally:
        await link.aclose()
        admin.acl_deluser(user)
        admin.close()


async def test_unreachable_redis_is_a_connection_error() -> None:
    from tests.conftest import free_port

    link = RedisLink(f"redis://127.0.0.1:{free_port()}/0", timeout_s=1)
    with pytest.raises(redis_errors.ConnectionError):
        await link.execute("PING")
    await link.aclose()
