"""Disputes, promises to pay and dunning steps an installation kept in Redis before
revision 0008 (``postpaid/collections_legacy.py``), and payments, credit notes and refunds
only Redis kept before 0005 (``postpaid/receivables_legacy.py``), are moved into
PostgreSQL once, on a real Redis and PostgreSQL: the rows, their applications marked
applied, allocations, the audit entries of the old stream; moving again changes nothing;
the billing code (``ListMoneyRecords``, disputes) reads them from there."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from charging.clock import ManualClock
from charging.database import Pool, open_pool
from postpaid import collections_legacy, receivables_legacy
from postpaid import config as billing_config
from postpaid import keys as bill_keys
from postpaid.invoice_book import InvoiceBook
from postpaid.payments import Payments
from postpaid.receivables import CreditNote, Payment
from tests.conftest import SEALER
from tests.test_allocation_scripts import seeded

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
    await client.hset(bill_keys.legacy_account("C7"), mapping={"customer": "7", "promised_until": "2026-01-20"})
    opened = {"id": "d-1", "invoice": "INV-00000003", "ba": "C7", "amount": 150, "reason": "call", "opened": NOW_S}
    await client.hset(
        bill_keys.legacy_dispute("d-1"), mapping={"status": "OPEN", "doc": json.dumps({**opened, "line": ""})}
    )
    accepted = {**opened, "id": "d-2", "amount": 90, "line": "491700000001", "resolution": "agreed"}
    accepted["credit_note"] = "CN-00000004"
    await client.hset(bill_keys.legacy_dispute("d-2"), mapping={"status": "ACCEPTED", "doc": json.dumps(accepted)})
    await client.zadd(bill_keys.customer_disputes("7"), {"d-1": NOW_S, "d-2": NOW_S})
    members = ["INV-00000003|reminder", "INV-00000003|second_reminder", "state|BARRED_OUTGOING|0", "restore|1"]
    await client.sadd(bill_keys.legacy_account("C7") + ":dun", *members)
    for action in ("dispute_opened", "dispute_accepted", "adjustment", "collection_handover"):
        fields = {"action": action, "actor": "agent-1", "ba": "C7", "amount": 90, "reason": "r", "at": NOW_S}
        await client.xadd(bill_keys.LEGACY_AUDIT, fields)  # type: ignore[arg-type]


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
    assert await client.hget(bill_keys.legacy_account("C7"), "promised_until") is None
    assert not await client.exists(bill_keys.customer_disputes("7"))
    assert await client.exists(bill_keys.legacy_dispute("d-1"), bill_keys.legacy_account("C7") + ":dun") == 2
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


async def test_old_payments_credit_notes_and_refunds_move_once_and_are_listed_from_postgresql(
    payments: Payments,
) -> None:
    client, pool = payments.client, payments.ledger.pool
    ba, standing = await seeded(client, [3000, 2000], 0)
    (first, _), (second, _) = standing.open
    # What an installation before revision 0005 did: Redis alone (pay.lua, no rows).
    old = Payment("x", ba, "CARD", "old-1", 3500, NOW_S - 100)
    await payments._decide(bill_keys.payment(ba, "CARD", "old-1"), ba, payments._payment_args(old))
    note = CreditNote("CN-00000007", ba, second, 400, 0, "goodwill", "old-cn", NOW_S - 99)
    await payments._decide(bill_keys.payment(ba, "CN", "old-cn"), ba, payments._note_args(note))
    # pay.lua listed each record on the account then (the list the move reads); it no longer does.
    await client.rpush(bill_keys.billing_payments(ba), bill_keys.payment(ba, "CARD", "old-1"))
    await client.rpush(bill_keys.billing_payments(ba), bill_keys.payment(ba, "CN", "old-cn"))
    await client.set(bill_keys.credit_note_seq(payments.config.issuer.id), 7)
    # And one since: committed in PostgreSQL first.
    await payments.pay(ba, 100, "APP", "new-1")
    assert [r["reference"] for r in await payments.records(ba)] == ["new-1"]
    issuer = payments.config.issuer
    args = (client, pool, issuer.id, issuer.credit_note_prefix, "EUR", NOW_S)
    assert await receivables_legacy.move_once(*args) == 2
    assert await receivables_legacy.move_once(*args) is None
    assert await receivables_legacy.move(*args) == 0  # resumable: nothing twice
    listed = await payments.records(ba)
    assert [(r["kind"], r["amount"], r.get("reference", r.get("number"))) for r in listed] == [
        ("PAYMENT", 3500, "old-1"),
        ("CREDIT_NOTE", 400, "CN-00000007"),
        ("PAYMENT", 100, "new-1"),
    ]
    assert listed[0]["allocations"] == {first: 3000, second: 500}
    assert await rows(pool, "SELECT count(*) FROM billing_applications") == [(3,)]
    assert await payments.apply_pending() == 0
    # The series continues after Redis's counter; a retried old payment answers as it did.
    made = await payments.credit_note(second, 100, "more goodwill", "cn-2")
    assert made["number"] == "CN-00000008"
    assert (await payments.pay(ba, 3500, "CARD", "old-1"))["replayed"]
    channels = await rows(pool, "SELECT channel, payments, amount_minor FROM payments_per_channel ORDER BY 1")
    assert channels == [("APP", 1, 100), ("CARD", 1, 3500)]
