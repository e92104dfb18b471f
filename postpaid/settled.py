"""Settled invoices: their real-time state leaves Redis and PostgreSQL answers for them.

An issued invoice's state in Redis (``{bill.<n>}:is:NUMBER``: open and disputed amounts,
status, delivery) is needed only while the invoice can still change money there: while
something of it is open or disputed, or it waits for delivery. The scripts that leave an
invoice with nothing open or disputed, and the delivery pass when it leaves the queue,
add its number to its shard's candidates (``{bill.<n>}:settled``); ``sweep`` then, per
candidate:

1. asks Redis (``settled.lua`` CHECK, atomic): settled as Redis sees it? A candidate that
   is not leaves the set (whatever changes that adds it again);
2. commits the switch in PostgreSQL: under the invoice's lock, and only when no movement,
   dispute event or dunning decision of the account waits to be applied (whose outcome
   rows would still be missing), a ``settled_invoices`` row with the status and delivery
   Redis had. From this commit PostgreSQL answers for the invoice: ``state`` (GetInvoice,
   the console, a dispute's check) and the bound of credit notes against it (``bound``, in
   the transaction that inserts the credit note, under the same lock, so two credit notes
   at once cannot both pass and none is decided against a state about to go);
3. deletes the state (``settled.lua`` DROP, with the records of the invoice's closed
   disputes and its members of the account's dunning steps), idempotently.

A crash between 2 and 3 leaves both: the candidate stays in the set and the next sweep
(the ``billing_applications`` job's pass) inserts nothing again and deletes the state.
Readers ask PostgreSQL first, so a state left over is never read. Inline (after a
movement's outcome, after a delivery pass) only the invoices just touched are swept
(``sweep_invoices``); the shards' backlog (the upgrade's seed among it) is the job's
``sweep``, bounded per pass.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from charging.clock import Clock
from charging.database import Pool
from charging.errors import InvalidRequest
from charging.store import storage_errors
from postpaid import keys as bill_keys
from postpaid.accounts import invoice_account
from postpaid.scripts import SETTLED, SettledArgs

log = logging.getLogger("postpaid.settled")
# Candidates looked at per shard and pass.
SWEEP_BATCH = 500
# The installation's paid invoices' states of before revision 0016 were made candidates.
SEEDED = bill_keys.TAG + ":moved:settled"


async def lock_invoice(conn: AsyncConnection[TupleRow], number: str) -> None:
    """The invoice's lock in the caller's transaction: the switch and the insert of a
    credit note against the invoice take turns."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('invoice'), hashtext(%s))", (number,))


async def is_settled(conn: AsyncConnection[TupleRow], number: str) -> bool:
    cur = await conn.execute("SELECT 1 FROM settled_invoices WHERE invoice_id = %s", (number,))
    return await cur.fetchone() is not None


async def bound(conn: AsyncConnection[TupleRow], number: str, amount: int) -> None:
    """A credit note of ``amount`` against the invoice, in the transaction that inserts it:
    under the invoice's lock; once the invoice is settled, at most its total less every
    credit note against it not refused (applied or waiting: each counts as soon as it is
    committed), else InvalidRequest. While it is not settled Redis decides (pay.lua)."""
    await lock_invoice(conn, number)
    if not await is_settled(conn, number):
        return
    cur = await conn.execute(
        "SELECT i.total_minor - coalesce((SELECT sum(c.amount_minor) FROM credit_notes c "
        "WHERE c.invoice_id = i.invoice_id AND NOT EXISTS (SELECT 1 FROM billing_applied a "
        "WHERE a.application_id = 'CREDIT_NOTE:' || c.credit_note_id AND a.outcome = 'REFUSED')), 0) "
        "FROM invoices i WHERE i.invoice_id = %s",
        (number,),
    )
    row = await cur.fetchone()
    creditable = int(row[0]) if row is not None else 0
    if amount > creditable:
        raise InvalidRequest("amount_minor", f"at most what the invoice can still be credited ({max(creditable, 0)})")


async def latest_delivery(conn: AsyncConnection[TupleRow], number: str) -> tuple[str, str, str]:
    """The invoice's delivery as its latest attempt on each channel left it (a failed
    resend then one that reached the customer reads DELIVERED): the outcome (DELIVERED
    when every channel's latest attempt reached it, else FAILED), the channels reached
    and the failures, in delivered.lua's forms."""
    cur = await conn.execute(
        "SELECT DISTINCT ON (channel) channel, delivered, reason FROM invoice_deliveries "
        "WHERE invoice_id = %s ORDER BY channel, attempt_id DESC",
        (number,),
    )
    latest = [(str(c), bool(ok), str(reason)) for c, ok, reason in await cur.fetchall()]
    failures = [f"{channel}: {reason}" for channel, ok, reason in latest if not ok]
    reached = ",".join(channel for channel, ok, _ in latest if ok)
    return ("FAILED" if failures else "DELIVERED"), reached, "; ".join(failures)


class SettledInvoices:
    def __init__(self, client: aioredis.Redis, pool: Pool, clock: Clock) -> None:
        self.client = client
        self.pool = pool
        self.clock = clock

    # -- reading

    async def settled_state(self, number: str) -> dict[str, str] | None:
        """A settled invoice's state as PostgreSQL answers it (None: not settled): nothing
        open or disputed, its status and delivery as they were settled, what its applied
        credit notes credited. A delivery attempted since (ResendInvoice) counts: then each
        channel's latest attempt decides (``delivery``)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT s.billing_account, i.total_minor, s.status, s.delivery, s.delivered_on, s.delivery_detail, "
                "i.issued_at, coalesce((SELECT sum(c.amount_minor) FROM credit_notes c JOIN billing_applied a "
                "ON a.application_id = 'CREDIT_NOTE:' || c.credit_note_id AND a.outcome = 'APPLIED' "
                "WHERE c.invoice_id = s.invoice_id), 0), "
                # Attempts are kept at whole seconds (invoice_book.record_deliveries) and the
                # switch at ms: one in the switch's second may be after it, so it counts.
                "EXISTS (SELECT 1 FROM invoice_deliveries d WHERE d.invoice_id = s.invoice_id "
                "AND d.attempted_at >= date_trunc('second', s.settled_at)) "
                "FROM settled_invoices s JOIN invoices i USING (invoice_id) WHERE s.invoice_id = %s",
                (number,),
            )
            row = await cur.fetchone()
            if row is None:
                return None
            ba, total, status, delivery, delivered_on, detail, issued, credited, later = row
            if later:  # delivered again since (ResendInvoice)
                delivery, delivered_on, detail = await latest_delivery(conn, number)
        state = {"ba": ba, "total": str(total), "open": "0", "disputed": "0", "status": status}
        state |= {"delivery": delivery, "delivered_on": delivered_on, "delivery_detail": detail}
        return state | {"credited": str(credited), "issued": str(int(issued.timestamp())), "settled": "1"}

    async def state(self, number: str) -> dict[str, str] | None:
        """The invoice's state, from whichever store answers for it: PostgreSQL once it is
        settled, else Redis (asked again after Redis, which may have dropped it meanwhile)."""
        found = await self.settled_state(number)
        if found is not None:
            return found
        ba = await invoice_account(self.client, number)
        if ba is not None:
            with storage_errors():
                h = await self.client.hgetall(bill_keys.invoice_state(ba, number))
            if h:
                return {str(k): str(v) for k, v in h.items()}
        return await self.settled_state(number)

    async def account_of(self, number: str) -> str | None:
        """The billing account of an invoice Redis or, once settled, PostgreSQL answers for."""
        ba = await invoice_account(self.client, number)
        if ba is not None:
            return ba
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT billing_account FROM settled_invoices WHERE invoice_id = %s", (number,))
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def settled(self, number: str) -> bool:
        async with self.pool.connection() as conn:
            return await is_settled(conn, number)

    # -- sweeping

    async def sweep(self, shards: Iterable[int] = range(bill_keys.SHARDS), limit: int = SWEEP_BATCH) -> int:
        """Drop the states of the shards' settled candidates, at most ``limit`` a shard
        (the ``billing_applications`` job's pass); answers how many went."""
        dropped = 0
        for shard in shards:
            with storage_errors():
                found = await self.client.srandmember(bill_keys.SETTLED_SETS[shard], limit)
            for raw in found or []:
                dropped += await self._sweep_one(shard, str(raw))
        return dropped

    async def sweep_invoices(self, shard: int, numbers: Iterable[str]) -> int:
        """Drop the states of these invoices of the shard if they are settled: those a
        movement or the delivery pass has just touched, after its outcome is committed.
        Inline callers sweep only these, so a payment never pays for the shard's backlog
        (``sweep``, the job's, bounded). Best effort: a failure is logged, and the job's
        next pass does what is left."""
        dropped = 0
        try:
            for number in sorted(set(numbers)):
                dropped += await self._sweep_one(shard, number)
        except Exception:
            log.exception("dropping settled invoices' states failed; the next pass does it")
        return dropped

    async def _sweep_one(self, shard: int, number: str) -> int:
        script_keys = (
            bill_keys.invoice_state_in(shard, number),
            bill_keys.DELIVERY_QUEUES[shard],
            bill_keys.SETTLED_SETS[shard],
        )
        with storage_errors():
            reply: list[Any] = await SETTLED(self.client, script_keys, SettledArgs("CHECK", number))
        if str(reply[0]) != "READY":
            return 0
        ba, status, delivery, delivered_on, detail = (str(x) for x in reply[1:6])
        switched = await self._switch(number, ba, status, delivery, delivered_on, detail)
        if switched is None:
            return 0  # a movement of the account waits to be applied: it stays a candidate
        disputes, steps = switched
        drop_keys = (*script_keys, bill_keys.billing_dunning_done(ba), *(bill_keys.dispute(ba, d) for d in disputes))
        members = tuple(m for step in steps for m in (f"{number}|{step}", f"fee|{number}|{step}"))
        await self._drop(drop_keys, SettledArgs("DROP", number, members))
        return 1

    async def _drop(self, drop_keys: tuple[str, ...], args: SettledArgs) -> None:
        """Step 3, apart: where a crash after the switch's commit stops (the crash tests')."""
        with storage_errors():
            await SETTLED(self.client, drop_keys, args)

    async def _switch(
        self, number: str, ba: str, status: str, delivery: str, delivered_on: str, detail: str
    ) -> tuple[list[str], list[str]] | None:
        """Commit the settled row (once), unless something of the account is still to be
        applied in Redis (or PostgreSQL has no such invoice); answers the invoice's
        disputes (closed, all applied) and the dunning steps taken on it."""
        now = datetime.fromtimestamp(self.clock.now_ms() / 1000, UTC)
        async with self.pool.connection() as conn, conn.transaction():
            await lock_invoice(conn, number)
            cur = await conn.execute("SELECT 1 FROM invoices WHERE invoice_id = %s", (number,))
            if await cur.fetchone() is None:
                return None  # not an invoice PostgreSQL has: Redis keeps what it has
            cur = await conn.execute(
                "SELECT 1 FROM billing_applications a WHERE a.billing_account = %s AND NOT EXISTS "
                "(SELECT 1 FROM billing_applied d WHERE d.application_id = a.application_id) LIMIT 1",
                (ba,),
            )
            if await cur.fetchone() is not None:
                return None
            await conn.execute(
                "INSERT INTO settled_invoices (invoice_id, billing_account, status, delivery, delivered_on, "
                "delivery_detail, settled_at) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (number, ba, status, delivery, delivered_on, detail, now),
            )
            cur = await conn.execute(
                "SELECT DISTINCT dispute_id FROM dispute_events WHERE invoice_id = %s ORDER BY 1", (number,)
            )
            disputes = [str(r[0]) for r in await cur.fetchall()]
            cur = await conn.execute(
                "SELECT step FROM dunning_steps WHERE billing_account = %s AND invoice_id = %s ORDER BY 1",
                (ba, number),
            )
            return disputes, [str(r[0]) for r in await cur.fetchall()]


async def seed_once(client: aioredis.Redis) -> int | None:
    """Existing installations (before revision 0016): every invoice state with nothing
    open becomes a candidate (the sweep drops those that are settled), and the credit
    notes' copies pay.lua kept (no script read them) are deleted. Resumable (both are
    idempotent), once per Redis by ``SEEDED``; None when it had run."""
    if await client.exists(SEEDED):
        return None
    seeded = 0
    async for raw in client.scan_iter(match=bill_keys.INVOICE_STATE_PATTERN, count=1000, _type="hash"):
        found = bill_keys.invoice_state_of(str(raw))
        if found is not None and await client.hget(str(raw), "open") == "0":
            shard, number = found
            await client.sadd(bill_keys.settled_shard(shard), number)
            seeded += 1
    async for raw in client.scan_iter(match=bill_keys.CREDIT_NOTE_COPY_PATTERN, count=1000, _type="string"):
        if bill_keys.is_credit_note_copy(str(raw)):
            await client.delete(str(raw))
    await client.set(SEEDED, "1")
    return seeded
