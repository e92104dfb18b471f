"""Billing in shards (``postpaid/keys.py``): each billing account's keys and its entries
in the indexes the jobs walk share its shard's hash tag, the shards spread over a
cluster's primaries, one bill run issues the accounts of every shard once, and the keys of
before the shards (the one ``{bill}`` tag) are moved into them once
(``postpaid/shards.py``). On a single server and a real Redis Cluster
(``CLUSTER_MODULES``)."""

from __future__ import annotations

import json

import redis.asyncio as aioredis
from redis.crc import key_slot

from charging.clock import ManualClock
from charging.server import App
from postpaid import config as billing_config
from postpaid import keys as bill_keys
from postpaid import shards
from postpaid.accounts import BillingAccounts, invoice_account
from postpaid.bill_run import BillRun
from postpaid.collection import watched
from postpaid.invoice_book import InvoiceBook
from tests.conftest import SEALER, Stubs, async_redis_client
from tests.test_bill_run import JAN_10, postpaid_line


def primary_of(key: str) -> int:
    """The primary of a key's slot with redis-cli's even slot ranges over 3 primaries."""
    return min(key_slot(key.encode()) * 3 // 16384, 2)


# Billing accounts whose shards fall on each of the 3 primaries (two each).
ACCOUNTS = ("B1", "B2", "B3", "B4", "B5", "B6")


def test_every_shard_has_its_own_tag_and_the_shards_cover_every_primary() -> None:
    slots = {key_slot(bill_keys.shard_tag(n).encode()) for n in range(bill_keys.SHARDS)}
    assert len(slots) == bill_keys.SHARDS
    per_primary = [0, 0, 0]
    for n in range(bill_keys.SHARDS):
        per_primary[primary_of(bill_keys.shard_tag(n))] += 1
    assert min(per_primary) >= 3, per_primary
    # An account's keys and its entries in every index share one slot: each script is one slot.
    ba = "C42"
    account_keys = (
        bill_keys.billing_account(ba),
        bill_keys.billing_open(ba),
        bill_keys.invoice_state(ba, "INV-1"),
        bill_keys.payment(ba, "CARD", "r"),
        bill_keys.dispute(ba, "d"),
        bill_keys.due_index(ba),
        bill_keys.dunning_index(ba),
        bill_keys.delivery_queue(ba),
        bill_keys.recheck(ba),
        bill_keys.outbox(ba),
        bill_keys.audit(ba),
    )
    assert len({key_slot(k.encode()) for k in account_keys}) == 1
    assert {primary_of(bill_keys.billing_account(ba)) for ba in ACCOUNTS} == {0, 1, 2}


async def test_the_accounts_of_one_bill_run_land_on_every_primary_and_each_is_issued_once(
    stubs: Stubs, app: App, clock: ManualClock, redis_url: str
) -> None:
    assert app.redis is not None and app.catalogs is not None and app.database is not None
    clock.advance(ms=JAN_10 * 1000 - clock.now_ms())
    config = billing_config.default()
    accounts = BillingAccounts(app.redis, config, SEALER)
    book = InvoiceBook(app.database, config.issuer.id, config.issuer.number_prefix, SEALER)
    run = BillRun(app.redis, accounts, config, app.catalogs, clock, book)
    for n, ba in enumerate(ACCOUNTS):
        await postpaid_line(stubs, accounts, f"4917000007{n:02d}", ba, JAN_10)
    client = await async_redis_client(redis_url)
    try:
        if isinstance(client, aioredis.RedisCluster):
            nodes = {client.get_node_from_key(bill_keys.billing_account(ba)).name for ba in ACCOUNTS}
            assert len(nodes) == 3  # every primary holds some of the run's accounts
        clock.advance(seconds=31 * 86_400)  # 2026-02-10 12:00: the period ended at midnight
        report = await run.run(concurrency=2)
        assert (report.accounts, report.issued, report.failed) == (6, 6, 0)
        assert (await run.run()).issued == 0  # each account's due moved on in its shard
        numbers = {ba: await book.numbers_of(ba) for ba in ACCOUNTS}
        assert all(len(n) == 1 for n in numbers.values())
        assert sorted(n for (n,) in numbers.values()) == [f"INV-{k:08d}" for k in range(1, 7)]
        for ba, (number,) in numbers.items():
            assert await invoice_account(client, number) == ba
            assert await client.hget(bill_keys.invoice_state(ba, number), "ba") == ba
            assert number in await client.lrange(bill_keys.delivery_queue(ba), 0, -1)
    finally:
        await client.aclose()


async def test_the_keys_under_the_one_bill_tag_are_moved_into_the_shards_once(app: App, redis_url: str) -> None:
    assert app.billing is not None
    client = await async_redis_client(redis_url)
    old = "{bill}:"
    record = json.dumps({"kind": "PAYMENT", "ba": "L1", "amount": 500})
    try:
        # An installation of before the shards: every key under {bill}.
        await client.hset(old + "ba:L1", mapping={"customer": "1", "credit": "0", "next_period": "2026-02"})
        await client.rpush(old + "ba:L1:open", "INV-00000001")
        await client.hset(old + "is:INV-00000001", mapping={"ba": "L1", "open": "3000", "due": "1700000000"})
        await client.rpush(old + "ba:L1:pay", old + "pay:CARD:r1")
        await client.set(old + "pay:CARD:r1", "digest|" + record)
        await client.set(old + "adj:a1", json.dumps({"id": "a1", "ba": "L1", "amount": 100}))
        await client.hset(old + "disp:d1", mapping={"status": "OPEN", "doc": json.dumps({"ba": "L1"})})
        await client.set(old + "line:7", "L1")
        await client.rpush(old + "hist:7", "1700000000,active,mobile-postpaid")
        await client.zadd(old + "due", {"L1": 1_770_000_000, "L2": 1_770_000_000})
        await client.zadd(old + "dunning", {"L1": 1_700_000_000})
        await client.sadd(old + "recheck", "L1")
        await client.rpush(old + "deliver", "INV-00000001")
        await client.rpush(old + "out", "dunning_reminder L1 x 0 1")
        await client.rpush(old + "runs", "{}")  # what only the legacy moves read stays
        # An interrupted move: L2's hash was copied (and changed since), not deleted yet.
        await client.hset(old + "ba:L2", mapping={"credit": "0"})
        await client.hset(bill_keys.billing_account("L2"), mapping={"credit": "700"})

        # As a server of the shards starts on it (the marker of its own, empty, start gone).
        await client.delete(shards.MOVED)
        await app.billing.move_redis_invoices()
        assert await shards.move_once(client) == 0  # once: the marker
        assert await shards.move(client) == 0  # and nothing is left to move
        assert await client.hget(bill_keys.billing_account("L1"), "customer") == "1"
        assert await client.hget(bill_keys.billing_account("L2"), "credit") == "700"  # the newer kept
        assert await client.lrange(bill_keys.billing_open("L1"), 0, -1) == ["INV-00000001"]
        assert await invoice_account(client, "INV-00000001") == "L1"
        moved_record = bill_keys.payment("L1", "CARD", "r1")
        assert await client.lrange(bill_keys.billing_payments("L1"), 0, -1) == [moved_record]
        assert await client.get(moved_record) == "digest|" + record
        assert json.loads(await client.get(bill_keys.adjustment("L1", "a1")) or "{}")["amount"] == 100
        assert await client.hget(bill_keys.dispute("L1", "d1"), "status") == "OPEN"
        assert await client.get(bill_keys.line_billing("7")) == "L1"
        assert await client.llen(bill_keys.line_history("7")) == 1
        assert await client.zscore(bill_keys.due_index("L2"), "L2") == 1_770_000_000
        assert await client.lrange(bill_keys.delivery_queue("L1"), 0, -1) == ["INV-00000001"]
        assert await watched(client, 1_700_000_001, recheck=True) == {"L1"}
        assert await client.llen(bill_keys.OUTBOXES[0]) == 1
        assert await client.llen(old + "runs") == 1
        left = [str(k) async for k in client.scan_iter(match=old + "*")]
        # Only what the legacy moves read is left, and the moves' markers.
        assert sorted(k for k in left if not k.startswith(old + "moved:")) == [old + "runs"]
        assert old + "moved:shards" in left
    finally:
        await client.aclose()
