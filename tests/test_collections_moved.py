"""Disputes, promises to pay and dunning steps an installation kept in Redis before
revision 0006 are moved into PostgreSQL once (``postpaid/collections_legacy.py``), on a
real Redis and PostgreSQL: the rows, their applications marked applied, the audit
entries of the old stream; moving again changes nothing; the billing code reads them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from charging import keys
from charging.clock import ManualClock
from charging.database import Pool, open_pool
from postpaid import collections_legacy
from postpaid import config as billing_config
from postpaid.invoice_book import InvoiceBook
from postpaid.payments import Payments
from tests.conftest import SEALER

NOW_S = 1_767_225_600


@pytest.fixture
async def payments(redis_url: str, database_url: str) -> AsyncIterator[Payments]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    config = billing_config.default()
    pool = await open_pool(database_url, 2)
    yield Payments(
        client, config, ManualClock(), InvoiceBook(pool, config.issuer.id, config.issuer.number_prefix, SEALER)
    )
    await pool.close()
    await client.aclose()


async def rows(pool: Pool, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    async with pool.connection() as conn:
        return await (await conn.execute(sql, params)).fetchall()


async def seed_old_redis(client: aioredis.Redis) -> None:
    await client.hset(keys.billing_account("C7"), mapping={"customer": "7", "promised_until": "2026-01-20"})
    opened = {"id": "d-1", "invoice": "INV-00000003", "ba": "C7", "amount": 150, "reason": "call", "opened": NOW_S}
    await client.hset(keys.dispute("d-1"), mapping={"status": "OPEN", "doc": json.dumps({**opened, "line": ""})})
    accepted = {**opened, "id": "d-2", "amount": 90, "line": "491700000001", "resolution": "agreed"}
    accepted["credit_note"] = "CN-00000004"
    await client.hset(keys.dispute("d-2"), mapping={"status": "ACCEPTED", "doc": json.dumps(accepted)})
    await client.zadd(keys.customer_disputes("7"), {"d-1": NOW_S, "d-2": NOW_S})
    members = ["INV-00000003|reminder", "INV-00000003|second_reminder", "state|BARRED_OUTGOING|0", "restore|1"]
    await client.sadd(keys.billing_dunning_done("C7"), *members)
    for action in ("dispute_opened", "dispute_accepted", "adjustment", "collection_handover"):
        fields = {"action": action, "actor": "agent-1", "ba": "C7", "amount": 90, "reason": "r", "at": NOW_S}
        await client.xadd(keys.BILL_AUDIT, fields)  # type: ignore[arg-type]


async def test_old_disputes_promises_and_steps_move_once(payments: Payments) -> None:
    client, pool = payments.client, payments.ledger.pool
    await seed_old_redis(client)
    moved = await collections_legacy.move_once(client, pool, NOW_S)
    assert moved is not None and (moved.disputes, moved.promises, moved.steps, moved.audit) == (2, 1, 2, 3)
    assert await collections_legacy.move_once(client, pool, NOW_S) is None
    # Resumable: moving again (a crash before the marker) writes nothing twice.
    await collections_legacy.move(client, pool, NOW_S)
    events = await rows(pool, "SELECT dispute_id, event, customer_id FROM dispute_events ORDER BY 1, 2")
    assert events == [("d-1", "OPENED", "7"), ("d-2", "ACCEPTED", ""), ("d-2", "OPENED", "7")]
    assert await rows(pool, "SELECT outcome FROM billing_applied") == [("APPLIED",)] * 3
    assert await payments.apply_pending() == 0
    steps = await rows(pool, "SELECT invoice_id, step FROM dunning_steps ORDER BY step")
    assert steps == [("INV-00000003", "reminder"), ("INV-00000003", "second_reminder")]
    promises = await rows(pool, "SELECT billing_account, until_date::text FROM promises_to_pay")
    assert promises == [("C7", "2026-01-20")]
    audit = await rows(pool, "SELECT action FROM audit ORDER BY action")
    assert audit == [("collection_handover",), ("dispute_accepted",), ("dispute_opened",)]
    # What Redis no longer needs is gone; what its scripts apply by stays.
    assert await client.hget(keys.billing_account("C7"), "promised_until") is None
    assert not await client.exists(keys.customer_disputes("7"))
    assert await client.exists(keys.dispute("d-1"), keys.billing_dunning_done("C7")) == 2
    # The billing code reads them from PostgreSQL.
    seen = {d["id"]: d for d in await payments.disputes_of("7")}
    assert (seen["d-1"]["status"], seen["d-1"]["amount"]) == ("OPEN", 150)
    d2 = await payments.dispute("d-2")
    assert (d2["status"], d2["credit_note"], d2["resolution"], d2["line"]) == (
        "ACCEPTED",
        "CN-00000004",
        "agreed",
        "491700000001",
    )
