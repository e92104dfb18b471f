"""Dunning history and promises to pay in the system of record (PostgreSQL).

A dunning decision for one account (``collection.py``) is committed here first, while
its connection holds the account's advisory lock (held on until Redis applied it): a row per step taken per invoice
(``dunning_steps``, unique per account, invoice and step, so a step is taken once however
often the run is killed and run again), a promise's outcome if the decision judged one,
the audit entries, and the pending Redis application (``billing_applications``, kind
``DUNNING``) whose ``payload`` is what ``dunning.lua`` is to apply: late fees, the
notifications, the service state. Only then does Redis hear of it; the application is
marked applied (``billing_applied``) afterwards. Payments, credit notes and disputes take
the same account lock while they change Redis, so a decision is made and applied on the
money as it stands, never on money that moved in between. Whatever crashes between the
commit and that mark, the account's next evaluation, or the ``billing_applications``
job, applies the payload again, and ``dunning.lua`` applies each step's effects once (by
its member).

Promises to pay are rows (``promises_to_pay``) committed with their audit entry; the
account's latest promise without an outcome holds its dunning.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime

from psycopg import AsyncConnection
from psycopg import errors as pg_errors
from psycopg.rows import TupleRow

from charging import audit_trail
from charging.audit_trail import AuditEntry
from charging.database import Pool
from postpaid.receivables import Pending
from postpaid.scripts import DunningArgs, DunningStep

# The advisory lock of one billing account's dunning (parameter: the account).
ACCOUNT_LOCK = "hashtext('dunning'), hashtext(%s)"


async def lock_account(conn: AsyncConnection[TupleRow], ba: str) -> None:
    """Take the account's dunning lock in the caller's transaction."""
    await conn.execute(f"SELECT pg_advisory_xact_lock({ACCOUNT_LOCK})", (ba,))


def _at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


@dataclass(frozen=True)
class TakenStep:
    """A step of the ladder taken for an invoice: the fee it charged, the channel it
    notified on ('' when it was passed over on catch-up)."""

    invoice: str
    step: str
    taken_s: int
    overdue: int  # the account's collectible overdue amount then (minor units)
    late_fee: int = 0
    channel: str = ""


@dataclass(frozen=True)
class Promise:
    promise_id: str
    billing_account: str
    until: date
    actor: str
    made_s: int
    outcome: str = ""  # '' while undecided, KEPT or BROKEN


@dataclass(frozen=True)
class PromiseOutcome:
    promise_id: str
    outcome: str  # KEPT or BROKEN
    overdue: int


@dataclass(frozen=True)
class Decided:
    """One committed dunning decision: its rows, its audit entries, and what Redis applies."""

    application_id: str
    billing_account: str
    steps: tuple[TakenStep, ...]
    outcome: PromiseOutcome | None
    args: DunningArgs
    audit: tuple[AuditEntry, ...]
    at_s: int


def payload(args: DunningArgs) -> str:
    steps = [[s.member, s.charge, s.note] for s in args.steps]
    return json.dumps({"state": args.state, "steps": steps, "now_s": args.now_s})


def args_of(text: str) -> DunningArgs:
    doc = json.loads(text)
    steps = tuple(DunningStep(str(m), str(c), str(n)) for m, c, n in doc["steps"])
    return DunningArgs(str(doc["state"]), steps, int(doc["now_s"]))


class DunningRecord:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    @asynccontextmanager
    async def locked(self, ba: str) -> AsyncIterator[AsyncConnection[TupleRow]]:
        """A connection holding the account's dunning lock until the block ends: decide,
        commit and apply on it (``ACCOUNT_LOCK``; payments and disputes take it while they
        change Redis, so a decision is never applied on money that moved after it)."""
        async with self.pool.connection() as conn:
            # Autocommit: each ``conn.transaction()`` on it is a transaction of its own
            # (committed when it ends), not a savepoint of one begun by the lock.
            await conn.set_autocommit(True)
            await conn.execute(f"SELECT pg_advisory_lock({ACCOUNT_LOCK})", (ba,))
            try:
                yield conn
            finally:
                await conn.execute(f"SELECT pg_advisory_unlock({ACCOUNT_LOCK})", (ba,))
                await conn.set_autocommit(False)

    async def done(self, conn: AsyncConnection[TupleRow], ba: str) -> frozenset[tuple[str, str]]:
        """(invoice, step) of every step taken on the account."""
        cur = await conn.execute("SELECT invoice_id, step FROM dunning_steps WHERE billing_account = %s", (ba,))
        return frozenset((str(r[0]), str(r[1])) for r in await cur.fetchall())

    async def commit(self, conn: AsyncConnection[TupleRow], d: Decided) -> None:
        """Write a decision in the caller's transaction (on its ``locked`` connection)."""
        rows = [
            (d.billing_account, s.invoice, s.step, _at(s.taken_s), s.overdue, s.late_fee, s.channel, d.application_id)
            for s in d.steps
        ]
        if rows:
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO dunning_steps (billing_account, invoice_id, step, taken_at, overdue_minor, "
                    "late_fee_minor, channel, application_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT DO NOTHING",
                    rows,
                )
        if d.outcome is not None:
            await conn.execute(
                "INSERT INTO promise_outcomes (promise_id, outcome, overdue_minor, decided_at) VALUES (%s, %s, %s, %s)",
                (d.outcome.promise_id, d.outcome.outcome, d.outcome.overdue, _at(d.at_s)),
            )
        await conn.execute(
            "INSERT INTO billing_applications (application_id, kind, movement_id, billing_account, payload) "
            "VALUES (%s, 'DUNNING', %s, %s, %s)",
            (d.application_id, d.application_id.rsplit(":", 1)[1], d.billing_account, payload(d.args)),
        )
        await audit_trail.insert(conn, list(d.audit))

    async def pending(
        self, ba: str = "", limit: int = 500, conn: AsyncConnection[TupleRow] | None = None
    ) -> list[Pending]:
        """Dunning decisions committed and not applied in Redis yet (of one account when
        ``ba`` is given), oldest first; their payload is what to apply."""
        if conn is None:
            async with self.pool.connection() as own:
                return await self.pending(ba, limit, own)
        cur = await conn.execute(
            "SELECT a.application_id, a.movement_id, a.billing_account, a.payload FROM billing_applications a "
            "WHERE a.kind = 'DUNNING' AND (%s = '' OR a.billing_account = %s) "
            "AND NOT EXISTS (SELECT 1 FROM billing_applied d WHERE d.application_id = a.application_id) "
            "ORDER BY a.created_at, a.application_id LIMIT %s",
            (ba, ba, limit),
        )
        rows = await cur.fetchall()
        return [Pending(r[0], "DUNNING", r[1], r[2], r[3]) for r in rows]

    async def steps(self, ba: str) -> list[TakenStep]:
        """The account's dunning history, oldest first."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT invoice_id, step, taken_at, overdue_minor, late_fee_minor, channel FROM dunning_steps "
                "WHERE billing_account = %s ORDER BY taken_at, invoice_id, step",
                (ba,),
            )
            rows = await cur.fetchall()
        return [TakenStep(r[0], r[1], int(r[2].timestamp()), int(r[3]), int(r[4]), r[5]) for r in rows]

    # -- promises to pay

    async def promise(self, ba: str, conn: AsyncConnection[TupleRow] | None = None) -> Promise | None:
        """The account's latest promise (with its outcome, if judged)."""
        if conn is None:
            async with self.pool.connection() as own:
                return await self.promise(ba, own)
        cur = await conn.execute(
            "SELECT p.promise_id, p.billing_account, p.until_date, p.actor, p.made_at, coalesce(o.outcome, '') "
            "FROM promises_to_pay p LEFT JOIN promise_outcomes o ON o.promise_id = p.promise_id "
            "WHERE p.billing_account = %s ORDER BY p.made_at DESC, p.promise_id DESC LIMIT 1",
            (ba,),
        )
        row = await cur.fetchone()
        return None if row is None else _promise(row)

    async def promises(self, ba: str) -> list[Promise]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT p.promise_id, p.billing_account, p.until_date, p.actor, p.made_at, coalesce(o.outcome, '') "
                "FROM promises_to_pay p LEFT JOIN promise_outcomes o ON o.promise_id = p.promise_id "
                "WHERE p.billing_account = %s ORDER BY p.made_at, p.promise_id",
                (ba,),
            )
            return [_promise(r) for r in await cur.fetchall()]

    async def record_promise(self, p: Promise, audit: AuditEntry) -> bool:
        """Commit the promise with its audit entry; False when that promise was made before."""
        try:
            async with self.pool.connection() as conn, conn.transaction():
                await conn.execute(
                    "INSERT INTO promises_to_pay (promise_id, billing_account, until_date, actor, made_at) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    (p.promise_id, p.billing_account, p.until, p.actor, _at(p.made_s)),
                )
                await audit_trail.insert(conn, [audit])
        except pg_errors.UniqueViolation:
            return False
        return True


def _promise(row: TupleRow) -> Promise:
    return Promise(row[0], row[1], row[2], row[3], int(row[4].timestamp()), row[5])
