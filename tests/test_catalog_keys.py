"""The catalog's keys under one hash tag, ``{catalog}`` (one slot on a Redis Cluster),
and a single server's keys of before the tag renamed at start."""

from __future__ import annotations

import redis
import redis.asyncio as aioredis

from charging import keys, store
from charging.catalogs import CatalogBook
from charging.cluster_link import slot_of
from tests.test_changes import catalog


def test_the_catalog_keys_share_one_slot() -> None:
    names = [keys.CATALOG_CURRENT, keys.CATALOG_PLANS, keys.PLAN_MOVES, keys.plan_members("p"), keys.plan_moving("q")]
    assert len({slot_of(name) for name in names}) == 1


async def test_keys_of_before_the_tag_are_renamed_at_start(redis_url: str, r: redis.Redis) -> None:
    client: aioredis.Redis = store.connect(redis_url)
    first = CatalogBook(client)
    await first.start("", prefer_file=False)
    await first.load(catalog("2099-01-01.1"))
    # What a server of before the tag left: the same data under the untagged names.
    for key in r.scan_iter("{catalog}:*"):
        r.rename(key, str(key).replace("{catalog}", "catalog", 1))
    r.hset("plan:moves", "old", "new")

    again = CatalogBook(client)
    await again.start("", prefer_file=False)
    assert again.current.version == "2099-01-01.1"
    assert r.get(keys.CATALOG_CURRENT) == "2099-01-01.1"
    assert r.hget(keys.PLAN_MOVES, "old") == "new"
    assert not r.exists("catalog:current", "plan:moves")
    assert r.exists(keys.CATALOG_PLANS)  # the plan index, built again
    await client.aclose()
