"""Payments and credit notes in the system of record (PostgreSQL), and their way to Redis.

A movement is committed here first, in one transaction with its pending Redis
application (``billing_applications``) and its audit entry; only then does Redis hear of
it. Applying (``Payments.apply``) runs ``pay.lua`` under the movement's record key, which
Redis keeps, so applying twice changes nothing; the outcome is then a row of its own
(``billing_applied``: rows are immutable), with the allocations Redis made. Whatever
crashes between the commit and that row, the pending application is applied by the next
caller with the same key or by the ``billing_applications`` job (``pending``).

Applying holds a transaction-scoped advisory lock on the application id across the Redis
call and the outcome row, so the job and a retried request never decide one application
differently (Redis refusing it for one, accepting it for the other a moment later).

Credit notes take their number from their own gapless series (``invoice_numbers``, the
issuer's credit note prefix) in the transaction that inserts them. An installation whose
credit notes Redis numbered before continues that series: the counter row starts at
Redis's counter when it is first made.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from psycopg import AsyncConnection
from psycopg import errors as pg_errors
from psycopg.rows import TupleRow

from charging import audit_trail
from charging.audit_trail import AuditEntry
from charging.database import Pool
from postpaid.settled import bound

Kind = Literal["PAYMENT", "CREDIT_NOTE", "REFUND", "ADJUSTMENT"]
MOVEMENTS: tuple[Kind, ...] = ("PAYMENT", "CREDIT_NOTE", "REFUND", "ADJUSTMENT")


def _at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


@dataclass(frozen=True)
class Payment:
    payment_id: str
    billing_account: str
    channel: str
    reference: str
    amount: int  # minor units
    received_s: int

    @property
    def key(self) -> str:
        """The idempotency key (per billing account): the channel's reference."""
        return f"{self.channel}:{self.reference}"

    @property
    def application_id(self) -> str:
        return f"PAYMENT:{self.payment_id}"


@dataclass(frozen=True)
class CreditNote:
    number: str  # "CN-00000001"; '' until committed
    billing_account: str
    invoice: str
    amount: int  # minor units
    release: int  # the disputed amount it settles
    reason: str
    key: str  # idempotency key (per billing account)
    issued_s: int

    @property
    def application_id(self) -> str:
        return f"CREDIT_NOTE:{self.number}"


@dataclass(frozen=True)
class Refund:
    """Credit paid back to the customer (an overpayment)."""

    refund_id: str
    billing_account: str
    reference: str  # idempotency key (per billing account)
    amount: int  # minor units
    reason: str
    actor: str  # the agent who asked for it
    refunded_s: int

    @property
    def application_id(self) -> str:
        return f"REFUND:{self.refund_id}"


@dataclass(frozen=True)
class Adjustment:
    """A manual charge (positive) or credit (negative) for the account's next invoice."""

    adjustment_id: str
    billing_account: str
    amount: int  # minor units
    reason: str
    actor: str  # the agent who made it
    made_s: int

    @property
    def application_id(self) -> str:
        return f"ADJUSTMENT:{self.adjustment_id}"


Movement = Payment | CreditNote | Refund | Adjustment


@dataclass(frozen=True)
class Applied:
    """What Redis did with an application: APPLIED (with its allocations) or REFUSED (the
    movement is void; ``detail`` is pay.lua's refusal)."""

    application_id: str
    outcome: Literal["APPLIED", "REFUSED"]
    detail: str = ""
    allocations: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Pending:
    application_id: str
    kind: Kind | Literal["DISPUTE", "DUNNING"]
    movement_id: str
    billing_account: str = ""
    payload: str = ""  # what to apply, for a dunning decision


class Receivables:
    def __init__(self, pool: Pool, issuer: str, currency: str, credit_note_series: str) -> None:
        self.pool = pool
        self.issuer = issuer
        self.currency = currency
        self.series = credit_note_series

    # -- payments

    async def payment(self, ba: str, key: str) -> Payment | None:
        return await self._one_payment("billing_account = %s AND idempotency_key = %s", (ba, key))

    async def payment_by_id(self, payment_id: str) -> Payment | None:
        return await self._one_payment("payment_id = %s", (payment_id,))

    async def payer_of(self, channel: str, reference: str) -> str | None:
        """The billing account a channel's reference paid, if any (Redis keeps one record
        per reference, so a reference pays one account)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT billing_account FROM payments WHERE channel = %s AND reference = %s LIMIT 1",
                (channel, reference),
            )
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def _one_payment(self, where: str, params: tuple[str, ...]) -> Payment | None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT payment_id, billing_account, channel, reference, amount_minor, received_at "
                f"FROM payments WHERE {where}",
                params,
            )
            row = await cur.fetchone()
        if row is None:
            return None
        return Payment(row[0], row[1], row[2], row[3], int(row[4]), int(row[5].timestamp()))

    async def record_payment(self, p: Payment, audit: AuditEntry) -> Payment:
        """Commit the payment, its pending application and its audit entry; a payment
        with the same key committed meanwhile comes back instead."""
        try:
            async with self._transaction() as conn:
                await conn.execute(
                    "INSERT INTO payments (payment_id, billing_account, channel, reference, idempotency_key, "
                    "amount_minor, currency, received_at, recorded_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (
                        p.payment_id,
                        p.billing_account,
                        p.channel,
                        p.reference,
                        p.key,
                        p.amount,
                        self.currency,
                        _at(p.received_s),
                        audit.actor,
                    ),
                )
                await _pending(conn, p.application_id, "PAYMENT", p.payment_id, p.billing_account)
                await audit_trail.insert(conn, [audit])
        except pg_errors.UniqueViolation:
            pass
        found = await self.payment(p.billing_account, p.key)
        assert found is not None
        return found

    # -- credit notes

    async def credit_note(self, ba: str, key: str) -> CreditNote | None:
        return await self._one_note("billing_account = %s AND idempotency_key = %s", (ba, key))

    async def credit_note_by_number(self, number: str) -> CreditNote | None:
        return await self._one_note("credit_note_id = %s", (number,))

    async def _one_note(self, where: str, params: tuple[str, ...]) -> CreditNote | None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT credit_note_id, billing_account, invoice_id, amount_minor, release_minor, reason, "
                f"idempotency_key, issued_at FROM credit_notes WHERE {where}",
                params,
            )
            row = await cur.fetchone()
        if row is None:
            return None
        return CreditNote(row[0], row[1], row[2], int(row[3]), int(row[4]), row[5], row[6], int(row[7].timestamp()))

    async def record_credit_note(self, note: CreditNote, audit: AuditEntry, numbered_before: int = 0) -> CreditNote:
        """Number and commit the credit note with its pending application and audit entry
        (``numbered_before``: the series' last number where Redis numbered them before)."""
        try:
            async with self._transaction() as conn:
                await self.insert_credit_note(conn, note, audit, numbered_before)
        except pg_errors.UniqueViolation:
            pass  # the same key committed meanwhile; the number went back with the rollback
        found = await self.credit_note(note.billing_account, note.key)
        assert found is not None
        return found

    async def insert_credit_note(
        self, conn: AsyncConnection[TupleRow], note: CreditNote, audit: AuditEntry, numbered_before: int = 0
    ) -> str:
        """Number the credit note and insert it, its pending application and its audit
        entry in the caller's transaction; answers its number. Against a settled invoice
        PostgreSQL bounds it here (``settled.py``: under the invoice's lock, InvalidRequest
        when it is too much)."""
        await bound(conn, note.invoice, note.amount)
        await conn.execute(
            "INSERT INTO invoice_numbers (issuer, series, last_number) VALUES (%s, %s, %s) "
            "ON CONFLICT (issuer, series) DO NOTHING",
            (self.issuer, self.series, numbered_before),
        )
        cur = await conn.execute("SELECT next_invoice_number(%s, %s)", (self.issuer, self.series))
        row = await cur.fetchone()
        assert row is not None
        number = f"{self.series}-{int(row[0]):08d}"
        await conn.execute(
            "INSERT INTO credit_notes (issuer, series, number, credit_note_id, billing_account, invoice_id, "
            "amount_minor, release_minor, currency, reason, idempotency_key, issued_at, recorded_by) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                self.issuer,
                self.series,
                int(row[0]),
                number,
                note.billing_account,
                note.invoice,
                note.amount,
                note.release,
                self.currency,
                note.reason,
                note.key,
                _at(note.issued_s),
                audit.actor,
            ),
        )
        await _pending(conn, f"CREDIT_NOTE:{number}", "CREDIT_NOTE", number, note.billing_account)
        entry = dataclasses.replace(audit, details={**audit.details, "number": number})
        await audit_trail.insert(conn, [entry])
        return number

    # -- refunds of credit

    async def refund(self, ba: str, reference: str) -> Refund | None:
        return await self._one_refund("billing_account = %s AND reference = %s", (ba, reference))

    async def refund_by_id(self, refund_id: str) -> Refund | None:
        return await self._one_refund("refund_id = %s", (refund_id,))

    async def refunded_of(self, reference: str) -> str | None:
        """The billing account a refund reference was used for, if any (Redis keeps one
        record per reference)."""
        found = await self._one_refund("reference = %s", (reference,))
        return None if found is None else found.billing_account

    async def _one_refund(self, where: str, params: tuple[str, ...]) -> Refund | None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT refund_id, billing_account, reference, amount_minor, reason, actor, refunded_at "
                f"FROM refunds WHERE {where} LIMIT 1",
                params,
            )
            row = await cur.fetchone()
        if row is None:
            return None
        return Refund(row[0], row[1], row[2], int(row[3]), row[4], row[5], int(row[6].timestamp()))

    async def record_refund(self, r: Refund, audit: AuditEntry) -> Refund:
        """Commit the refund, its pending application and its audit entry; a refund with
        the same reference committed meanwhile comes back instead."""
        try:
            async with self._transaction() as conn:
                await conn.execute(
                    "INSERT INTO refunds (refund_id, billing_account, reference, amount_minor, reason, refunded_at, "
                    "actor) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (r.refund_id, r.billing_account, r.reference, r.amount, r.reason, _at(r.refunded_s), r.actor),
                )
                await _pending(conn, r.application_id, "REFUND", r.refund_id, r.billing_account)
                await audit_trail.insert(conn, [audit])
        except pg_errors.UniqueViolation:
            pass
        found = await self.refund(r.billing_account, r.reference)
        assert found is not None
        return found

    # -- adjustments

    async def adjustment(self, adjustment_id: str) -> Adjustment | None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT adjustment_id, billing_account, amount_minor, reason, actor, made_at FROM adjustments "
                "WHERE adjustment_id = %s",
                (adjustment_id,),
            )
            row = await cur.fetchone()
        if row is None:
            return None
        return Adjustment(row[0], row[1], int(row[2]), row[3], row[4], int(row[5].timestamp()))

    async def record_adjustment(self, a: Adjustment, audit: AuditEntry) -> Adjustment:
        """Commit the adjustment, its pending application and its audit entry; one with
        the same id committed meanwhile comes back instead."""
        try:
            async with self._transaction() as conn:
                await conn.execute(
                    "INSERT INTO adjustments (adjustment_id, billing_account, amount_minor, reason, actor, made_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s)",
                    (a.adjustment_id, a.billing_account, a.amount, a.reason, a.actor, _at(a.made_s)),
                )
                await _pending(conn, a.application_id, "ADJUSTMENT", a.adjustment_id, a.billing_account)
                await audit_trail.insert(conn, [audit])
        except pg_errors.UniqueViolation:
            pass
        found = await self.adjustment(a.adjustment_id)
        assert found is not None
        return found

    # -- the account's movements

    async def records(self, ba: str) -> list[dict[str, Any]]:
        """The account's payments, credit notes and refunds of credit that Redis applied,
        oldest first, each with what it paid of which invoice (``ListMoneyRecords``)."""
        applied = "JOIN billing_applied a ON a.application_id = %s || {id} AND a.outcome = 'APPLIED'"
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT 'PAYMENT', 'PAYMENT:' || p.payment_id, p.amount_minor, p.channel, p.reference, '', '', '', "
                f"p.received_at FROM payments p {applied.format(id='p.payment_id')} WHERE p.billing_account = %s "
                "UNION ALL SELECT 'CREDIT_NOTE', 'CREDIT_NOTE:' || c.credit_note_id, c.amount_minor, '', '', "
                f"c.credit_note_id, c.invoice_id, c.reason, c.issued_at FROM credit_notes c "
                f"{applied.format(id='c.credit_note_id')} WHERE c.billing_account = %s "
                "UNION ALL SELECT 'REFUND', 'REFUND:' || r.refund_id, r.amount_minor, '', r.reference, '', '', "
                f"r.reason, r.refunded_at FROM refunds r {applied.format(id='r.refund_id')} "
                "WHERE r.billing_account = %s ORDER BY 9, 2",
                ("PAYMENT:", ba, "CREDIT_NOTE:", ba, "REFUND:", ba),
            )
            found = await cur.fetchall()
            cur = await conn.execute(
                "SELECT application_id, invoice_id, amount_minor FROM allocations WHERE application_id = ANY(%s) "
                "ORDER BY application_id, invoice_id",
                ([r[1] for r in found],),
            )
            paid: dict[str, dict[str, int]] = {}
            for application_id, invoice, amount in await cur.fetchall():
                paid.setdefault(application_id, {})[invoice] = int(amount)
        out = []
        for kind, application_id, amount, channel, reference, number, invoice, reason, at in found:
            doc: dict[str, Any] = {"kind": kind, "ba": ba, "amount": int(amount), "at": int(at.timestamp())}
            facts = {"channel": channel, "reference": reference, "number": number, "invoice": invoice}
            doc |= {k: v for k, v in {**facts, "reason": reason}.items() if v}
            if kind != "REFUND":
                doc["allocations"] = paid.get(application_id, {})
            out.append(doc)
        return out

    # -- applications

    @asynccontextmanager
    async def applying(self, application_id: str) -> AsyncIterator[AsyncConnection[TupleRow]]:
        """A transaction holding the application's lock: read ``applied``, call Redis,
        ``mark`` the outcome, in that order, inside it."""
        async with self._transaction() as conn:
            lock = "SELECT pg_advisory_xact_lock(hashtext('billing_application'), hashtext(%s))"
            await conn.execute(lock, (application_id,))
            yield conn

    async def applied(self, conn: AsyncConnection[TupleRow], application_id: str) -> Applied | None:
        cur = await conn.execute(
            "SELECT outcome, detail FROM billing_applied WHERE application_id = %s", (application_id,)
        )
        row = await cur.fetchone()
        if row is None:
            return None
        cur = await conn.execute(
            "SELECT invoice_id, amount_minor FROM allocations WHERE application_id = %s ORDER BY invoice_id",
            (application_id,),
        )
        return Applied(application_id, row[0], row[1], {str(n): int(a) for n, a in await cur.fetchall()})

    async def mark(self, conn: AsyncConnection[TupleRow], applied: Applied) -> None:
        await conn.execute(
            "INSERT INTO billing_applied (application_id, outcome, detail) VALUES (%s, %s, %s)",
            (applied.application_id, applied.outcome, applied.detail),
        )
        rows = [(applied.application_id, number, amount) for number, amount in applied.allocations.items()]
        if rows:
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO allocations (application_id, invoice_id, amount_minor) VALUES (%s, %s, %s)", rows
                )

    async def pending(self, limit: int = 500, kinds: tuple[str, ...] = MOVEMENTS) -> list[Pending]:
        """Applications of these kinds committed and not applied yet, oldest first."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT a.application_id, a.kind, a.movement_id, a.billing_account FROM billing_applications a "
                "WHERE a.kind = ANY(%s) "
                "AND NOT EXISTS (SELECT 1 FROM billing_applied d WHERE d.application_id = a.application_id) "
                "ORDER BY a.created_at, a.application_id LIMIT %s",
                (list(kinds), limit),
            )
            rows = await cur.fetchall()
        return [Pending(r[0], r[1], r[2], r[3]) for r in rows]

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection[TupleRow]]:
        async with self.pool.connection() as conn, conn.transaction():
            yield conn


async def _pending(conn: AsyncConnection[TupleRow], application_id: str, kind: Kind, movement: str, ba: str) -> None:
    await conn.execute(
        "INSERT INTO billing_applications (application_id, kind, movement_id, billing_account) VALUES (%s, %s, %s, %s)",
        (application_id, kind, movement, ba),
    )
