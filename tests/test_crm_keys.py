"""The CRM's and the provisioning worker's keys share the hash tag ``{crm}`` (one slot of a
Redis Cluster, provisioning/keys.py), and the untagged keys of an upgraded single server
are renamed once at start (provisioning/untagged.py)."""

from __future__ import annotations

import inspect
from typing import Any

import redis.asyncio as aioredis
from redis.crc import key_slot

from charging import store
from provisioning import keys
from provisioning.untagged import ADOPTED, adopt_untagged, tagged


def every_key() -> list[str]:
    found = [v for n, v in vars(keys).items() if n.isupper() and isinstance(v, str) and n != "TAG"]
    for _name, fn in inspect.getmembers(keys, inspect.isfunction):
        params = inspect.signature(fn).parameters
        found.append(fn(*["x" if p.annotation in (str, "str") else 1 for p in params.values()]))
    return found


def test_every_crm_and_provisioning_key_is_in_the_crm_slot() -> None:
    names = every_key()
    assert len(names) > 35
    assert {key_slot(name.encode()) for name in names} == {key_slot(b"{crm}")}


def test_an_untagged_name_maps_to_the_tagged_one() -> None:
    assert tagged("crm:customer:7") == keys.customer("7")
    assert tagged("crm:orders:submitted") == keys.SUBMITTED
    assert tagged("prov:due") == keys.DUE
    assert tagged("prov:line:4917") == keys.network_line("4917")
    assert tagged("crm:coverage:current") == keys.COVERAGE + ":current"


async def test_an_upgraded_server_gets_its_keys_renamed_once(redis_url: str) -> None:
    client: Any = store.connect(redis_url)
    try:
        await client.hset("crm:customer:7", mapping={"kind": "INDIVIDUAL"})
        await client.zadd("crm:customers", {"7": 7})
        await client.zadd("prov:due", {"4917": 1})
        await client.set("crm:coverage:current", "2")
        await client.set(keys.SALT, "new")  # written under both names: the tagged one stays
        await client.set("crm:salt", "old")
        assert await adopt_untagged(client) == 4
        assert await client.hget(keys.customer("7"), "kind") == "INDIVIDUAL"
        assert await client.zscore(keys.CUSTOMERS, "7") == 7
        assert await client.zscore(keys.DUE, "4917") == 1
        assert await client.get(keys.COVERAGE + ":current") == "2"
        assert await client.get(keys.SALT) == "new"
        assert await client.exists(ADOPTED)
        await client.set("crm:customer:8", "written by an old process after the move")
        assert await adopt_untagged(client) == 0  # once: the marker saves the scan
    finally:
        await client.aclose()


async def test_nothing_is_renamed_on_a_cluster(redis_cluster: Any) -> None:
    redis_cluster.wait_ok()
    client: aioredis.Redis = store.connect(redis_cluster.url)
    try:
        assert await adopt_untagged(client) == 0
        assert not await client.exists(ADOPTED)
    finally:
        await client.aclose()
