"""The relay (``charging/cdr_relay.py``) finds records another process left in an outbox
it knows by name (a billing shard's credit outbox, written by a bill run or a payment in
another process, which does not wake this one) within ``named_every_s``, not at its scan
every ten minutes; on a real Redis and PostgreSQL."""

from __future__ import annotations

import json

import psycopg

from charging.cdr_relay import CdrRelay
from charging.cdr_store import CdrStore
from charging.clock import ManualClock
from charging.database import open_pool
from postpaid import keys as bill_keys
from postpaid.credit_movements import credit_rows
from tests.conftest import async_redis_client


async def test_a_named_outbox_another_process_wrote_is_relayed_within_seconds(
    redis_url: str, database_url: str
) -> None:
    clock = ManualClock()
    client = await async_redis_client(redis_url)
    other = await async_redis_client(redis_url)  # another process's connection: it wakes no one here
    pool = await open_pool(database_url, 2)
    try:
        relay = CdrRelay(client, CdrStore(pool), clock, kept=credit_rows())
        assert await relay.relay_waiting() == 0  # its scan at start: nothing yet
        assert relay.next_pass_in_s() == relay.named_every_s  # the job is woken for the next look
        movement = {"ba": "B7", "movement": "pay:CARD:r1", "kind": "overpaid", "source": "CARD:r1", "invoice": ""}
        await other.rpush(bill_keys.credit_outbox("B7"), json.dumps({**movement, "amount": 250, "at_s": 1_767_225_600}))
        assert await relay.relay_waiting() == 0  # not looked at again yet
        clock.advance(ms=int(relay.named_every_s * 1000))
        assert await relay.relay_waiting() == 1  # found by name, long before the next scan
        assert not await client.exists(bill_keys.credit_outbox("B7"))
        with psycopg.connect(database_url) as conn:
            found = conn.execute("SELECT billing_account, kind, amount_minor FROM credit_movements").fetchall()
        assert found == [("B7", "overpaid", 250)]
    finally:
        await pool.close()
        await other.aclose()
        await client.aclose()
