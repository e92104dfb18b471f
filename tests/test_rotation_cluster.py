"""``charging rotate-data-key`` on a Redis Cluster: billing accounts found by SCAN on every
primary are re-sealed, and every node's append-only file (primaries and replicas) is
rewritten so that no old ciphertext stays on any disk."""

from __future__ import annotations

import asyncio
from pathlib import Path

from charging import store
from postpaid import accounts
from postpaid import keys as bill_keys
from provisioning.rotation import Rotation
from provisioning.sealing import Sealer, new_key_entry
from tests.redis_cluster import LocalCluster

K1, K2 = new_key_entry("k1"), new_key_entry("k2")


def aof_bytes(directory: Path) -> bytes:
    """Every file the node wrote its data to: the AOF's parts (the base one an RDB) and
    any snapshot."""
    return b"".join(p.read_bytes() for p in [*directory.glob("*.rdb"), *directory.glob("appendonlydir/*")])


async def test_rotation_reseals_and_rewrites_every_node_of_a_cluster(redis_cluster: LocalCluster) -> None:
    redis_cluster.wait_ok()
    redis_cluster.flush()
    client = store.connect(redis_cluster.url)
    try:
        old = Sealer.from_text(K1, "k1")
        for i in range(30):
            await client.hset(bill_keys.billing_account(f"C{i}"), mapping=accounts.sealed({"name": f"Anna {i}"}, old))
        for node in redis_cluster.nodes:
            # LZF would hide the ciphertext's prefix in a rewritten base file from a byte grep.
            node.client().config_set("rdbcompression", "no")
        # The old ciphertext is in the AOF of the primary of each billing shard the accounts
        # are in and of its replica (each node writes what it applies): 30 accounts fall
        # in shards on every primary.
        for _ in range(200):  # until the replicas have applied them too (bounded)
            old_holders = [n for n in redis_cluster.nodes if b"enc:k1:" in aof_bytes(n.directory)]
            if len(old_holders) == len(redis_cluster.nodes):
                break
            await asyncio.sleep(0.05)
        assert len(old_holders) == len(redis_cluster.nodes)
        ring = Sealer.from_text(f"{K1},{K2}", "ring")
        done = await Rotation(client, ring).run(rewrite_timeout_s=60)
        assert done.billing_accounts == 30
        for i in range(30):
            name = str(await client.hget(bill_keys.billing_account(f"C{i}"), "name"))
            assert name.startswith("enc:k2:") and accounts.opened({"name": name}, ring)["name"] == f"Anna {i}"
        # Every node, primaries and replicas, holds the billing accounts' new ciphertext
        # only: the old one left every AOF.
        holding = [n for n in redis_cluster.nodes if b"enc:k2:" in aof_bytes(n.directory)]
        assert len(holding) == len(redis_cluster.nodes)  # every primary and its replica
        for node in redis_cluster.nodes:
            assert b"enc:k1:" not in aof_bytes(node.directory), node.port
        assert await Rotation(client, ring).run(rewrite_timeout_s=60) == type(done)()  # nothing left
    finally:
        await client.aclose()
