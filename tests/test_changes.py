"""The change feed (charging/changes.py) on a real Redis: a catalog loaded through one
book is current in every subscribed book when the load returns; a book whose feed is not
subscribed reads the current version before each request; the supervisor's restart
backoff as a table."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from importlib import resources

import pytest
import redis.asyncio as aioredis

from charging import store
from charging.catalogs import CatalogBook
from charging.changes import ChangeFeed
from charging.supervisor import RESTART_MAX_S, restart_delay_s


def catalog(version: str) -> dict[str, object]:
    doc: dict[str, object] = json.loads(resources.files("charging").joinpath("catalog.json").read_text())
    doc["version"] = version
    return doc


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = store.connect(redis_url)
    yield c
    await c.aclose()


async def book_with_feed(client: aioredis.Redis) -> tuple[CatalogBook, asyncio.Task[None]]:
    book = CatalogBook(client)
    await book.start("", prefer_file=False)
    feed = ChangeFeed(client, ack_timeout_s=30)
    feed.on("catalog", book.refresh)
    book.feed = feed
    task = asyncio.ensure_future(feed.run())
    await feed.wait_live()
    return book, task


async def test_a_load_returns_once_every_subscribed_process_has_the_catalog(client: aioredis.Redis) -> None:
    books = [await book_with_feed(client) for _ in range(3)]
    first, *others = [book for book, _ in books]
    for n in range(1, 4):
        await first.load(catalog(f"2099-01-01.{n}"))
        assert [(await b.fresh()).version for b in others] == [f"2099-01-01.{n}"] * 2
        assert all(b.current.version == f"2099-01-01.{n}" for b in others)
    for _, task in books:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_process_not_subscribed_reads_the_current_version_before_each_request(
    client: aioredis.Redis,
) -> None:
    loader, task = await book_with_feed(client)
    stale = CatalogBook(client)
    await stale.start("", prefer_file=False)
    stale.feed = ChangeFeed(client, ack_timeout_s=1)  # never subscribed: not live
    await loader.load(catalog("2099-02-01.1"))
    assert stale.current.version != "2099-02-01.1"  # its cache alone is behind ...
    assert (await stale.fresh()).version == "2099-02-01.1"  # ... and is not trusted
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize(
    ("failures", "delay_s"), [(0, 0.5), (1, 0.5), (2, 1.0), (3, 2.0), (7, 30.0), (60, RESTART_MAX_S)]
)
def test_a_worker_that_keeps_dying_is_restarted_ever_more_slowly(failures: int, delay_s: float) -> None:
    assert restart_delay_s(failures) == delay_s
