"""The pooled Redis client used off the hot path (charging/store.py)."""

from __future__ import annotations

import asyncio
import importlib.metadata

import pytest

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


async def test_a_new_connection_does_not_look_up_package_metadata(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py left alone reads its own version from the installed packages' metadata for
    every connection it opens (up to 55 ms of a stopped event loop under load); the
    pooled client's connections are opened without it."""
    looked_up: list[str] = []
    real_version = importlib.metadata.version

    def version(name: str) -> str:
        looked_up.append(name)
        return real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    client = store.connect(redis_url, max_connections=4)
    try:
        await asyncio.gather(*(client.blpop([f"nothing:{i}"], timeout=0.05) for i in range(4)))
    finally:
        await client.aclose()
    assert looked_up == []
