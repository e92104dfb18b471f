"""Billing in shards (``postpaid/keys.py``): each billing account's keys and its entries
in the indexes the jobs walk share its shard's hash tag, the shards spread over a
cluster's primaries, one bill run issues the accounts of every shard once, and the keys of
before the shards (the one ``{bill}`` tag) are moved into them once
(``postpaid/shards.py``). On a single server and a real Redis Cluster
(``CLUSTER_MODULES``)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import ResponseError

from charging import upgrade
from charging.clock import ManualClock
from charging.leases import holder_of
from charging.server import App
from postpaid import config as billing_config
from postpaid import keys as bill_keys
from postpaid import shards
from postpaid.accounts import BillingAccounts, invoice_account
from postpaid.bill_run import BillRun
from postpaid.collection import watched
from postpaid.invoice_book import InvoiceBook
from postpaid.scripts import PAY, SETTLE, PayArgs, SettleArgs
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
        await upgrade.move_all_of(app.settings, client, app.database, app.clock)
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


# -- the move from several processes at once (three hosts starting together on one Redis)

MOVERS = 3
LEGACY_ACCOUNTS = 30


async def legacy_installation(client: aioredis.Redis) -> dict[str, Any]:
    """An installation of before the shards: every kind of billing key under {bill}, the
    indexes, the queues (a duplicate notification among them: kept twice) and the old
    audit stream (stays). Answers what the move must leave."""
    old = "{bill}:"
    outbox: list[str] = []
    for i in range(LEGACY_ACCOUNTS):
        ba, number = f"M{i}", f"INV-{i:08d}"
        await client.hset(old + f"ba:{ba}", mapping={"customer": str(i), "credit": str(i * 10)})
        await client.rpush(old + f"ba:{ba}:pending", *(json.dumps({"fee": ba, "n": n}) for n in range(3)))
        await client.rpush(old + f"ba:{ba}:open", number)
        await client.rpush(old + f"ba:{ba}:pay", old + f"pay:CARD:r{i}", old + f"pay:BANK:r{i}")
        for channel in ("CARD", "BANK"):
            await client.set(old + f"pay:{channel}:r{i}", "d|" + json.dumps({"ba": ba, "amount": i}))
        await client.hset(old + f"ba:{ba}:lines", mapping={f"acct-{i}": json.dumps({"line": i})})
        await client.sadd(old + f"ba:{ba}:dun", f"{number}|reminder", f"fee|{number}|reminder")
        await client.hset(old + f"is:{number}", mapping={"ba": ba, "open": str(100 + i), "due": "1700000000"})
        await client.zadd(old + "due", {ba: 1_770_000_000 + i})
        await client.zadd(old + "dunning", {ba: 1_700_000_000 + i})
        await client.rpush(old + "deliver", number)
        outbox += [f"dunning_reminder {ba} {number} 0 1", f"dunning_final {ba} {number} 0 2"]
        await client.xadd(old + "audit", {"ba": ba, "what": "adjustment"})
    outbox.append(outbox[0])  # a notification queued twice before the move: relayed twice
    await client.rpush(old + "out", *outbox)
    await client.rpush(old + "runs", "{}")
    return {"outbox": outbox, "audit": await client.xrange(old + "audit")}


async def assert_moved_exactly_once(client: aioredis.Redis, before: dict[str, Any]) -> None:
    old = "{bill}:"
    queued: list[str] = []
    for queue in bill_keys.DELIVERY_QUEUES:
        queued += await client.lrange(queue, 0, -1)
    assert sorted(queued) == [f"INV-{i:08d}" for i in range(LEGACY_ACCOUNTS)]  # each once
    assert sorted(await client.lrange(bill_keys.OUTBOXES[0], 0, -1)) == sorted(before["outbox"])
    assert [await client.llen(queue) for queue in bill_keys.OUTBOXES[1:]] == [0] * (bill_keys.SHARDS - 1)
    for i in range(LEGACY_ACCOUNTS):
        ba, number = f"M{i}", f"INV-{i:08d}"
        assert await client.hgetall(bill_keys.billing_account(ba)) == {"customer": str(i), "credit": str(i * 10)}
        pending = await client.lrange(bill_keys.billing_pending(ba), 0, -1)
        assert pending == [json.dumps({"fee": ba, "n": n}) for n in range(3)]
        assert await client.lrange(bill_keys.billing_open(ba), 0, -1) == [number]
        records = [bill_keys.payment(ba, channel, f"r{i}") for channel in ("CARD", "BANK")]
        assert await client.lrange(bill_keys.billing_payments(ba), 0, -1) == records
        for record in records:
            assert await client.get(record) == "d|" + json.dumps({"ba": ba, "amount": i})
        assert await client.hgetall(bill_keys.billing_lines(ba)) == {f"acct-{i}": json.dumps({"line": i})}
        assert await client.scard(bill_keys.billing_dunning_done(ba)) == 2
        state = await client.hgetall(bill_keys.invoice_state(ba, number))
        assert state == {"ba": ba, "open": str(100 + i), "due": "1700000000"}
        assert await client.zscore(bill_keys.due_index(ba), ba) == 1_770_000_000 + i
        assert await client.zscore(bill_keys.dunning_index(ba), ba) == 1_700_000_000 + i
        assert number in await client.lrange(bill_keys.delivery_queue(ba), 0, -1)
    assert await client.xrange(old + "audit") == before["audit"]  # the legacy stream stays, whole
    left = {str(k) async for k in client.scan_iter(match=old + "*")}
    assert left - {shards.MOVED} == {old + "audit", old + "runs"}  # no claim, nothing half moved


async def test_three_movers_at_once_move_every_item_exactly_once(redis_url: str) -> None:
    """Without the lease (a holder paused past it): the steps alone keep every item once."""
    clients = [await async_redis_client(redis_url) for _ in range(MOVERS)]
    try:
        before = await legacy_installation(clients[0])
        await asyncio.gather(*(shards.move(client) for client in clients))
        await assert_moved_exactly_once(clients[0], before)
        assert await shards.move(clients[0]) == 0
    finally:
        for client in clients:
            await client.aclose()


async def test_three_processes_starting_together_move_once_under_the_lease(redis_url: str) -> None:
    clients = [await async_redis_client(redis_url) for _ in range(MOVERS)]
    first = clients[0]
    try:
        before = await legacy_installation(first)
        # A mover that died mid-move: it had taken the last notification (not pushed yet)
        # and the first queued invoice (pushed already) into its claim lists.
        dead = shards.CLAIMS + "dead0001:"
        await first.rpush(dead + "out", str(await first.rpop(shards.OLD_OUTBOX)))
        number = str(await first.lpop(shards.OLD_DELIVERY))
        await first.rpush(dead + "deliver", number)
        await first.rpush(bill_keys.delivery_queue("M0"), number)
        moved = await asyncio.gather(*(shards.move_once(client) for client in clients))
        assert sorted(moved)[:-1] == [0] * (MOVERS - 1) and max(moved) > 0  # one moved, the others waited
        assert await first.exists(shards.MOVED)
        assert await holder_of(first, shards.LEASE_JOB) is None  # given back
        await assert_moved_exactly_once(first, before)
    finally:
        for client in clients:
            await client.aclose()


# -- every key a billing script touches is in KEYS or in the slot of its account's


async def test_pay_and_settle_refuse_a_prefix_outside_the_accounts_slot(redis_url: str) -> None:
    client = await async_redis_client(redis_url)
    ba, number = "B1", "INV-00000009"
    other = bill_keys.shard_tag((bill_keys.shard_of(ba) + 1) % bill_keys.SHARDS)
    record = bill_keys.payment(ba, "CARD", "r1")
    try:
        await client.hset(bill_keys.billing_account(ba), mapping={"credit": "0", "issued": "0"})
        await client.rpush(bill_keys.billing_open(ba), number)
        await client.hset(other + ":is:" + number, mapping={"open": "1000", "due": "1"})
        pay_keys = [
            record,
            bill_keys.billing_account(ba),
            bill_keys.billing_open(ba),
            bill_keys.dunning_index(ba),
            bill_keys.credit_outbox(ba),
            bill_keys.settled(ba),
        ]
        pay = PayArgs(
            "PAY", "d", 400, 1, other + ":is:", '{"allocations": \x01ALLOCATIONS\x01}', 10**9, record_ttl_s=60
        )
        with pytest.raises(ResponseError, match="state_prefix: not in the slot"):
            await PAY(client, pay_keys, pay)
        # A credit note builds no key of its own (its Redis copy is no more): its invoice's
        # state is under the same prefix, refused alike.
        note = dataclasses.replace(pay, kind="CREDIT", invoice=number, note_number="CN-1")
        with pytest.raises(ResponseError, match="state_prefix: not in the slot"):
            await PAY(client, pay_keys, note)
        settle_keys = [
            bill_keys.billing_account(ba),
            bill_keys.billing_pending(ba),
            bill_keys.billing_open(ba),
            bill_keys.dunning_index(ba),
            bill_keys.due_index(ba),
            bill_keys.delivery_queue(ba),
            bill_keys.billing_lines(ba),
            bill_keys.recheck(ba),
            bill_keys.invoice_state(ba, "INV-00000010"),
            bill_keys.credit_outbox(ba),
            bill_keys.settled(ba),
        ]
        settle = SettleArgs("INV-00000010", 0, -500, 1, 1, "2026-01", "2026-02", 2, "", 0, 0, 0, 0, 0, other + ":is:")
        with pytest.raises(ResponseError, match="state_prefix: not in the slot"):
            await SETTLE(client, settle_keys, settle)
        # Nothing changed: no record, the other shard's state and the account as they were.
        assert not await client.exists(record, bill_keys.billing_payments(ba), settle_keys[8])
        assert await client.hget(other + ":is:" + number, "open") == "1000"
        assert await client.hgetall(bill_keys.billing_account(ba)) == {"credit": "0", "issued": "0"}
        # The account's own prefix is taken: the payment goes to its own invoice's state.
        await client.hset(bill_keys.invoice_state(ba, number), mapping={"open": "1000", "due": "1"})
        reply = await PAY(client, pay_keys, dataclasses.replace(pay, state_prefix=bill_keys.state_prefix(ba)))
        assert reply[0] == "DONE"
        assert await client.hget(bill_keys.invoice_state(ba, number), "open") == "600"
    finally:
        await client.aclose()
