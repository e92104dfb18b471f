"""The cluster-aware pipelined link on a real Redis Cluster: routing by slot, MOVED after
a slot changed hands, ASK during a migration, and what a cluster URL says."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis
from redis import exceptions as redis_errors

from charging.cluster_link import ClusterLink, ClusterUrl, first_key, slot_of
from charging.store import unavailable
from tests.redis_cluster import LocalCluster, Node


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", None),
        ("redis+cluster://10.0.0.1:7000/", ClusterUrl((("10.0.0.1", 7000),))),
        (
            "rediss+cluster://charging:s%40cret@a:7000,b:7001/?wait=1&wait_ms=200",
            ClusterUrl((("a", 7000), ("b", 7001)), "charging", "s@cret", True, 1, 200),
        ),
    ],
)
def test_a_cluster_url_names_seeds_credentials_and_the_wait(url: str, expected: ClusterUrl | None) -> None:
    assert ClusterUrl.parse(url) == expected


@pytest.mark.parametrize("url", ["redis+cluster://nohost/", "redis+cluster://a:1/?wait=one", "redis+cluster://a:1,b/"])
def test_a_bad_cluster_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="CHARGING_REDIS_URL"):
        ClusterUrl.parse(url)


def test_a_script_is_routed_by_its_first_key() -> None:
    assert first_key(("EVALSHA", "abc", 2, "{a:1}", "{a:1}:b", "x")) == "{a:1}"
    assert first_key(("EVALSHA", "abc", 0, "x")) is None
    assert first_key(("HGETALL", "{a:1}:b")) == "{a:1}:b"
    assert slot_of("{a:1}") == slot_of("{a:1}:s:x")


@pytest.fixture
async def link(redis_cluster: LocalCluster) -> AsyncIterator[ClusterLink]:
    redis_cluster.wait_ok()
    redis_cluster.flush()
    parsed = ClusterUrl.parse(redis_cluster.url)
    assert parsed is not None
    link = ClusterLink(parsed)
    yield link
    await link.aclose()


def _other_primary(cluster: LocalCluster, node: Node) -> Node:
    return next(p for p in cluster.primaries() if p.port != node.port)


def _node_id(node: Node) -> str:
    return str(node.client().execute_command("CLUSTER", "MYID"))


async def test_a_slot_moved_to_another_primary_is_followed(link: ClusterLink, redis_cluster: LocalCluster) -> None:
    key = "{a:moved}"
    assert await link.execute("SET", key, "before") == "OK"
    source = redis_cluster.primary_of(key)
    target = _other_primary(redis_cluster, source)
    slot = slot_of(key)
    src, dst = source.client(), target.client()
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", _node_id(source))
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", _node_id(target))
    src.execute_command("MIGRATE", "127.0.0.1", target.port, key, 0, 5000)
    # ASK: the key has left, the slot has not; ASKING and the command go to the target.
    assert await link.execute("GET", key) == "before"
    for node in (dst, src, *(n.client() for n in redis_cluster.primaries())):
        node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", _node_id(target))
    # MOVED: the link's map still names the source; it reads the map again and follows.
    assert await link.execute("SET", key, "after") == "OK"
    assert await link.execute("GET", key) == "after"
    assert redis_cluster.primary_of(key).port == target.port
    assert dst.get(key) == "after"
    # Every node agrees again before the next test.
    redis_cluster.wait_ok()


async def test_keys_of_two_slots_in_one_script_are_refused(link: ClusterLink) -> None:
    """What a script touching keys of two accounts gets: CROSSSLOT, a bug, never UNAVAILABLE."""
    with pytest.raises(redis_errors.ClusterCrossSlotError) as err:
        await link.execute("EVAL", "return redis.call('GET', KEYS[2])", 2, "{a:1}", "{a:2}")
    assert unavailable(err.value) == ""


def test_clusterdown_is_unavailable() -> None:
    assert unavailable(redis_errors.ClusterDownError("CLUSTERDOWN The cluster is down")) == "reconfiguring"
    assert unavailable(redis.ConnectionError("redis connection lost")) == "not reachable"
