"""The pooled Redis client used off the hot path (charging/store.py)."""

from __future__ import annotations

import asyncio

from charging import store


async def test_a_burst_beyond_the_pool_waits_for_a_connection(redis_url: str) -> None:
    """Twenty calls that each hold a connection for 50 ms, on a pool of two: they queue
    for a connection instead of failing with "Too many connections" (which the edge
    would report as Redis being unavailable)."""
    client = store.connect(redis_url, max_connections=2)
    try:
        replies = await asyncio.gather(*(client.blpop([f"nothing:{i}"], timeout=0.05) for i in range(20)))
    finally:
        await client.aclose()
    assert replies == [None] * 20
