"""Payments and credit notes in PostgreSQL first, then applied in Redis once
(``postpaid/receivables.py``, revision 0005), on a real Redis and PostgreSQL: the rows,
their allocations, outcomes and audit entries; the gapless credit note series; a movement
Redis refuses after its commit; a process killed with SIGKILL between the commit and
Redis, and between Redis and the outcome row; the analysts' views on known data."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from charging.clock import ManualClock
from charging.database import Pool, open_pool
from charging.errors import Conflict, InvalidRequest, LimitExceeded
from charging.security.identity import Identity, set_caller
from postpaid import config as billing_config
from postpaid import keys as bill_keys
from postpaid.invoice_book import InvoiceBook
from postpaid.payments import MAX_MINOR, Payments
from postpaid.receivables import CreditNote
from tests.conftest import SEALER, async_redis_client
from tests.test_allocation_scripts import seeded

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def payments(redis_url: str, database_url: str) -> AsyncIterator[Payments]:
    client = await async_redis_client(redis_url)
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


async def open_amounts(client: aioredis.Redis, ba: str) -> tuple[dict[str, int], int]:
    listed = await client.lrange(bill_keys.billing_open(ba), 0, -1)
    opened = {str(n): int(await client.hget(bill_keys.invoice_state(ba, n), "open") or 0) for n in listed}
    return opened, int(await client.hget(bill_keys.billing_account(ba), "credit") or 0)


async def test_a_payment_commits_its_row_allocations_and_audit_entry_once(payments: Payments) -> None:
    pool, client = payments.ledger.pool, payments.client
    ba, standing = await seeded(client, [3000, 2000], 0)
    first, second = (n for n, _ in standing.open)
    record = await payments.pay(ba, 4000, "CARD", "r-1")
    again = await payments.pay(ba, 4000, "CARD", "r-1")
    assert record["allocations"] == again["allocations"] == {first: 3000, second: 1000}
    assert again["replayed"] and not record["replayed"]
    assert await open_amounts(client, ba) == ({second: 1000}, 0)
    (paid,) = await rows(pool, "SELECT payment_id, channel, reference, amount_minor, currency FROM payments")
    assert paid[1:] == ("CARD", "r-1", 4000, "EUR")
    app = f"PAYMENT:{paid[0]}"
    assert await rows(pool, "SELECT outcome FROM billing_applied") == [("APPLIED",)]
    assert sorted(await rows(pool, "SELECT application_id, invoice_id, amount_minor FROM allocations")) == [
        (app, first, 3000),
        (app, second, 1000),
    ]
    assert await rows(pool, "SELECT actor, action, subject, details->>'amount_minor' FROM audit") == [
        ("internal", "payment", ba, "4000")
    ]
    # The same reference with another amount, or for another account: refused, no row.
    with pytest.raises(Conflict):
        await payments.pay(ba, 5000, "CARD", "r-1")
    other, _ = await seeded(client, [100], 0)
    with pytest.raises(Conflict):
        await payments.pay(other, 4000, "CARD", "r-1")
    # Refused by Redis before the commit (the credit would pass the most): no row either.
    await payments.pay(ba, MAX_MINOR, "CARD", "big")
    with pytest.raises(LimitExceeded):
        await payments.pay(ba, 2000, "CARD", "too-much")
    assert len(await rows(pool, "SELECT 1 FROM payments")) == 2
    assert await payments.ledger.pending() == []
    # The server's role may not update a payment at all (privilege, migration 0006); the
    # owner is stopped by the trigger (tests/test_retention.py, test_invoices_in_database.py).
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="payments"):
        await rows(pool, "UPDATE payments SET amount_minor = 1")


async def test_credit_notes_continue_their_own_gapless_series(payments: Payments) -> None:
    pool, client = payments.ledger.pool, payments.client
    # An installation whose credit notes Redis numbered: the series continues after 7.
    await client.set(bill_keys.credit_note_seq(payments.config.issuer.id), 7)
    ba, standing = await seeded(client, [3000], 0)
    ((invoice, _),) = standing.open
    note = await payments.credit_note(invoice, 500, "goodwill", "k1", actor="agent-7")
    assert note["number"] == "CN-00000008" and note["allocations"] == {invoice: 500}
    with pytest.raises(InvalidRequest, match="amount_minor"):
        await payments.credit_note(invoice, 2600, "too much", "k2")  # refused before: no number taken
    assert (await payments.credit_note(invoice, 100, "fix", "k3"))["number"] == "CN-00000009"
    assert (await payments.credit_note(invoice, 500, "goodwill", "k1"))["number"] == "CN-00000008"
    with pytest.raises(Conflict):
        await payments.credit_note(invoice, 501, "goodwill", "k1")
    assert await rows(pool, "SELECT number, amount_minor, invoice_id FROM credit_notes ORDER BY number") == [
        (8, 500, invoice),
        (9, 100, invoice),
    ]
    assert await rows(pool, "SELECT action, details->>'number', details->>'agent' FROM audit ORDER BY 2") == [
        ("credit_note", "CN-00000008", "agent-7"),
        ("credit_note", "CN-00000009", None),
    ]
    assert await open_amounts(client, ba) == ({invoice: 2400}, 0)


async def test_a_movement_redis_refuses_after_its_commit_is_void(payments: Payments) -> None:
    pool, client = payments.ledger.pool, payments.client
    ba, standing = await seeded(client, [3000], 0)
    ((invoice, _),) = standing.open
    # Committed by a process that died before Redis heard of it; meanwhile another
    # credit note took what the invoice could still be credited.
    draft = CreditNote("", ba, invoice, 2000, 0, "late", "late-1", 0)
    entry = payments._entry("credit_note", ba, 2000, "late", "late-1")
    await payments.ledger.record_credit_note(draft, entry)
    await payments.credit_note(invoice, 1500, "first", "k1")
    assert await payments.apply_pending() == 1
    assert await rows(pool, "SELECT outcome, detail FROM billing_applied ORDER BY applied_at") == [
        ("APPLIED", ""),
        ("REFUSED", "TOOMUCH"),
    ]
    # Void for good: a retry is refused as well, even once the invoice could take it.
    with pytest.raises(InvalidRequest):
        await payments.credit_note(invoice, 2000, "late", "late-1")
    assert await open_amounts(client, ba) == ({invoice: 1500}, 0)
    assert await payments.apply_pending() == 0


async def crashing(redis_url: str, database_url: str, kind: str, ba: str, invoice: str, point: str) -> int:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.payment_process", redis_url, database_url, kind, ba, invoice, point,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    if proc.returncode not in (0, -signal.SIGKILL):
        pytest.fail(f"the payment process failed: {err.decode()[-2000:]}")
    return proc.returncode


# What each kind leaves of an account with one invoice of 3000 open and 500 credit:
# the invoice's open amount and the credit.
LEFT = {"payment": (2000, 500), "credit_note": (2600, 500), "refund": (3000, 300)}


@pytest.mark.parametrize("kind", ["payment", "credit_note", "refund"])
@pytest.mark.parametrize("point", ["after_commit", "after_redis"])
async def test_a_process_killed_between_the_commit_and_redis_applies_once(
    payments: Payments, redis_url: str, database_url: str, kind: str, point: str
) -> None:
    pool, client = payments.ledger.pool, payments.client
    ba, standing = await seeded(client, [3000], 500)
    ((invoice, _),) = standing.open
    assert await crashing(redis_url, database_url, kind, ba, invoice, point) == -signal.SIGKILL
    (pending,) = await payments.ledger.pending()
    assert pending.kind == kind.upper()
    left, credit = LEFT[kind]
    before = ({invoice: 3000}, 500) if point == "after_commit" else ({invoice: left}, credit)
    assert await open_amounts(client, ba) == before
    # The job applies it once; again, nothing changes.
    assert await payments.apply_pending() == 1
    assert REGISTRY.get_sample_value("billing_applications_pending") == 0
    assert await payments.apply_pending() == 0
    assert await open_amounts(client, ba) == ({invoice: left}, credit)
    paid = [(invoice, 3000 - left)] if kind != "refund" else []
    assert await rows(pool, "SELECT invoice_id, amount_minor FROM allocations") == paid
    assert await rows(pool, "SELECT outcome FROM billing_applied") == [("APPLIED",)]
    # The client's retry answers what happened and changes nothing either.
    if kind == "payment":
        retried = await payments.pay(ba, 1000, "BANK_TRANSFER", "crash-1")
    elif kind == "refund":
        retried = await payments.refund(ba, 200, "crash-r", "asked")
    else:
        retried = await payments.credit_note(invoice, 400, "goodwill", "crash-cn")
        assert retried["number"] == "CN-00000001"
    assert retried["replayed"] and retried.get("allocations", {}) == dict(paid)
    assert await open_amounts(client, ba) == ({invoice: left}, credit)
    assert len(await rows(pool, "SELECT 1 FROM audit")) == 1


INVOICE = (
    "INSERT INTO invoices (issuer, series, number, invoice_id, billing_account, period_start, period_end, "
    "issued_at, due_date, currency, total_minor, tax_minor, document) "
    "VALUES ('ISS', 'INV', %s, %s, %s, current_date - 60, current_date - 30, now(), current_date + %s, 'EUR', "
    "%s, 0, '{}')"
)
PAYMENT = (
    "INSERT INTO payments (payment_id, billing_account, channel, reference, idempotency_key, amount_minor, "
    "currency, received_at, recorded_by) VALUES (%s, %s, %s, %s, %s, %s, 'EUR', %s, 'test')"
)


async def test_receivables_ageing_and_payments_per_channel(database_url: str) -> None:
    pool = await open_pool(database_url, 2)
    try:
        async with pool.connection() as conn:
            # A: due 100, 70, 40 and 10 days ago and in 5 days; B: one invoice, paid.
            invoices = [("A", -100, 1000), ("A", -70, 2000), ("A", -40, 3000), ("A", -10, 4000), ("A", 5, 5000)]
            for n, (ba, due_in, total) in enumerate([*invoices, ("B", -50, 700)]):
                await conn.execute(INVOICE, (n + 1, f"INV-{n + 1}", ba, due_in, total))
            moves = [
                ("p1", "A", "CARD", 1000, "2026-01-05", "APPLIED"),
                ("p2", "A", "BANK_TRANSFER", 500, "2026-01-20", "APPLIED"),
                ("p3", "A", "CARD", 99_999, "2026-01-21", "REFUSED"),  # void
                ("p4", "A", "CARD", 88_888, "2026-01-22", None),  # not applied yet
                ("p5", "B", "CARD", 700, "2026-02-01", "APPLIED"),
            ]
            for pid, ba, channel, amount, day, outcome in moves:
                await conn.execute(PAYMENT, (pid, ba, channel, pid, f"{channel}:{pid}", amount, f"{day}T12:00:00Z"))
                if outcome:
                    await conn.execute(
                        "INSERT INTO billing_applied (application_id, outcome) VALUES (%s, %s)",
                        (f"PAYMENT:{pid}", outcome),
                    )
            await conn.execute(
                "INSERT INTO credit_notes (issuer, series, number, credit_note_id, billing_account, invoice_id, "
                "amount_minor, currency, reason, idempotency_key, issued_at, recorded_by) "
                "VALUES ('ISS', 'CN', 1, 'CN-1', 'A', 'INV-2', 800, 'EUR', 'x', 'k', now(), 't')"
            )
            await conn.execute(
                "INSERT INTO billing_applied (application_id, outcome) VALUES ('CREDIT_NOTE:CN-1', 'APPLIED')"
            )
            await conn.execute(
                "INSERT INTO refunds (refund_id, billing_account, reference, amount_minor, reason, refunded_at, actor) "
                "VALUES ('r1', 'A', 'r1', 300, 'asked', now(), 't')"
            )
            await conn.execute("INSERT INTO billing_applied (application_id, outcome) VALUES ('REFUND:r1', 'APPLIED')")
        # A is covered by 1000 + 500 + 800 - 300 = 2000, oldest due first.
        assert await rows(pool, "SELECT * FROM receivables_ageing") == [("A", "EUR", 5000, 4000, 3000, 1000, 0, 13_000)]
        assert await rows(pool, "SELECT * FROM payments_per_channel ORDER BY month, channel") == [
            (_month(1), "BANK_TRANSFER", "EUR", 1, 500),
            (_month(1), "CARD", "EUR", 1, 1000),
            (_month(2), "CARD", "EUR", 1, 700),
        ]
    finally:
        await pool.close()


def _month(m: int) -> date:
    return date(2026, m, 1)


async def test_the_audit_entry_names_the_authenticated_caller(payments: Payments) -> None:
    ba, standing = await seeded(payments.client, [3000], 0)
    ((invoice, _),) = standing.open

    async def as_billing() -> None:  # a task of its own, as guard.py serves each call
        set_caller(Identity("spiffe://charging.local/billing", frozenset({"billing"})))
        await payments.pay(ba, 100, "APP", "app-1")
        await payments.credit_note(invoice, 50, "goodwill", "cn-1", actor="agent-7")

    await asyncio.create_task(as_billing())
    assert await rows(payments.ledger.pool, "SELECT actor, action, details->>'agent' FROM audit ORDER BY 2 DESC") == [
        ("spiffe://charging.local/billing", "payment", None),
        ("spiffe://charging.local/billing", "credit_note", "agent-7"),
    ]


async def test_a_refund_of_credit_is_a_row_first_and_one_larger_than_the_credit_none(payments: Payments) -> None:
    pool, client = payments.ledger.pool, payments.client
    ba, _ = await seeded(client, [], 500)
    with pytest.raises(LimitExceeded):
        await payments.refund(ba, 501, "r-1", "asked", actor="agent-7")
    assert await rows(pool, "SELECT 1 FROM refunds") == []
    record = await payments.refund(ba, 200, "r-1", "asked", actor="agent-7")
    assert not record["replayed"] and (await payments.refund(ba, 200, "r-1", "asked"))["replayed"]
    with pytest.raises(Conflict):
        await payments.refund(ba, 300, "r-1", "asked")
    assert await open_amounts(client, ba) == ({}, 300)
    assert await rows(pool, "SELECT reference, amount_minor, actor FROM refunds") == [("r-1", 200, "agent-7")]
    assert await rows(pool, "SELECT action, subject, details->>'agent' FROM audit") == [("refund", ba, "agent-7")]


async def test_an_adjustment_is_a_row_first_and_queued_once_after_a_crash(
    payments: Payments, redis_url: str, database_url: str
) -> None:
    pool, client = payments.ledger.pool, payments.client
    ba, _ = await seeded(client, [], 0)
    assert await crashing(redis_url, database_url, "adjustment", ba, "", "after_commit") == -signal.SIGKILL
    assert await client.lrange(bill_keys.billing_pending(ba), 0, -1) == []  # Redis has not heard of it
    assert await payments.apply_pending() == 1
    assert await payments.apply_pending() == 0
    again = await payments.adjust("crash-adj", ba, 250, "late fee by hand", "agent-7")
    assert again["amount"] == 250
    (pending,) = await client.lrange(bill_keys.billing_pending(ba), 0, -1)
    assert '"amount": 250' in pending
    with pytest.raises(Conflict):
        await payments.adjust("crash-adj", ba, 300, "late fee by hand", "agent-7")
    assert await rows(pool, "SELECT billing_account, amount_minor, actor FROM adjustments") == [(ba, 250, "agent-7")]
    assert await rows(pool, "SELECT action, details->>'agent' FROM audit") == [("adjustment", "agent-7")]
    assert await rows(pool, "SELECT outcome FROM billing_applied") == [("APPLIED",)]


async def test_a_dispute_is_a_row_first_and_its_acceptance_with_its_credit_note_applies_once_after_a_crash(
    payments: Payments, redis_url: str, database_url: str
) -> None:
    pool, client = payments.ledger.pool, payments.client
    ba, standing = await seeded(client, [3000], 0)
    ((invoice, _),) = standing.open
    # Opened, killed before Redis heard of it: the row, its audit entry, no hold yet.
    assert await crashing(redis_url, database_url, "dispute", ba, invoice, "after_commit") == -signal.SIGKILL
    assert await rows(pool, "SELECT event, amount_minor FROM dispute_events") == [("OPENED", 500)]
    assert await client.hget(bill_keys.invoice_state(ba, invoice), "disputed") == "0"
    assert await payments.apply_pending() == 1
    assert await client.hget(bill_keys.invoice_state(ba, invoice), "disputed") == "500"
    # Accepted, killed before Redis: the decision and its credit note were one transaction.
    assert await crashing(redis_url, database_url, "accept", ba, invoice, "after_commit") == -signal.SIGKILL
    assert (await payments.dispute("crash-d"))["status"] == "ACCEPTED"
    assert len(await payments.ledger.pending()) == 1  # the credit note
    assert await payments.apply_pending() == 2  # the credit note and the acceptance
    assert await payments.apply_pending() == 0
    state = await client.hmget(bill_keys.invoice_state(ba, invoice), ["open", "disputed"])
    assert state == ["2500", "0"]
    # The caller's retry answers the same and changes nothing.
    again = await payments.resolve_dispute("crash-d", True, "agreed", "agent-3")
    assert (again["status"], again["credit_note"]) == ("ACCEPTED", "CN-00000001")
    assert await client.hmget(bill_keys.invoice_state(ba, invoice), ["open", "disputed"]) == ["2500", "0"]
    with pytest.raises(Conflict):
        await payments.resolve_dispute("crash-d", False, "no", "agent-3")
    actions = await rows(pool, "SELECT action FROM audit ORDER BY action")
    assert actions == [("credit_note",), ("dispute_accepted",), ("dispute_opened",)]
