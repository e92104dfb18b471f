"""The accounts' credit as rows: every movement of it reaches PostgreSQL (revision 0014).

An overpayment's rest, a credit note's rest and a negative invoice add to a billing
account's credit; a refund and settling an invoice from it take from it. The Redis
script that moves the credit (``pay.lua``, ``settle.lua``) appends the movement to its
shard's credit outbox ``{bill.<n>}:credits`` in the same script, so a movement is never
made without its entry nor written without the movement. The usage-record relay
(``charging/cdr_relay.py``, as a ``kept`` outbox) inserts the entries into
``credit_movements`` in its transaction and trims them after the commit; each movement's
id is unique per account (the payment's record key, ``inv:NUMBER``), so a relay repeated
after a crash between its commit and its trim keeps each once. The view
``account_credit`` sums them: it equals the ``credit`` Redis holds once the outboxes are
relayed.

Upgrading: credit an account held before revision 0014 has no movement. It is recorded
once as an ``opening`` movement, by whichever comes first: the account's next credit
movement (pay.lua and settle.lua record the opening before it) or ``open_once`` (at
``charging migrate`` and the server's start, resumable: each account once by its
``credit_rows`` flag, the pass once by ``{bill}:moved:credits``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import redis.asyncio as aioredis
from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from charging import metrics
from charging.cdrs import BadRecord
from charging.database import Pool
from postpaid import keys as bill_keys
from postpaid.scripts import CREDIT_OPEN, CreditOpenArgs

log = logging.getLogger("postpaid.credit_movements")

# what each kind does to the credit
KINDS = {"opening": 1, "overpaid": 1, "credit_note": 1, "negative_invoice": 1, "applied": -1, "refunded": -1}


@dataclass(frozen=True)
class CreditMovement:
    billing_account: str
    movement: str  # unique per account: "pay:CHANNEL:REF", "inv:NUMBER", "inv:NUMBER:OLDER"
    kind: str
    source: str  # the payment's CHANNEL:REF, the refund's REFUND:REF, the note's or invoice's number
    invoice: str  # the invoice the credit paid or a credit note credited ("" none)
    amount_minor: int  # > 0; the kind says which way
    at: datetime

    def to_row(self) -> tuple[object, ...]:
        return (
            self.billing_account, self.movement, self.kind, self.source, self.invoice or None,
            self.amount_minor, self.at,
        )  # fmt: skip


def parse(entry: str) -> CreditMovement:
    """An outbox entry (pay.lua's or settle.lua's JSON) as a movement."""
    try:
        d = json.loads(entry)
        movement = CreditMovement(
            str(d["ba"]), str(d["movement"]), str(d["kind"]), str(d["source"]), str(d["invoice"]),
            int(d["amount"]), datetime.fromtimestamp(int(d["at_s"]), UTC),
        )  # fmt: skip
    except (ValueError, KeyError, TypeError) as exc:
        raise BadRecord(f"not a credit movement: {exc}") from None
    if movement.kind not in KINDS or movement.amount_minor <= 0 or not movement.billing_account:
        raise BadRecord("not a credit movement: kind or amount")
    return movement


INSERT = (
    "INSERT INTO credit_movements (billing_account, movement, kind, source, invoice, amount_minor, at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
)


async def insert(conn: AsyncConnection[TupleRow], movements: Sequence[CreditMovement]) -> int:
    """The movements' rows in the caller's transaction; answers how many were new."""
    new = 0
    async with conn.cursor() as cur:
        for m in movements:
            await cur.execute(INSERT, m.to_row())
            new += max(cur.rowcount, 0)
    return new


class CreditMovementRows:
    """One shard's credit outbox, relayed into ``credit_movements`` (a ``KeptRows`` of the
    usage-record relay)."""

    def __init__(self, outbox: str) -> None:
        self.outbox = outbox

    async def insert_entries(self, conn: AsyncConnection[TupleRow], entries: Sequence[str]) -> int:
        """The relay's batch, in its transaction; an entry that is not a movement is logged
        and left out (it must not hold back every later one)."""
        movements: list[CreditMovement] = []
        for text in entries:
            try:
                movements.append(parse(text))
            except BadRecord as exc:
                metrics.CDRS_UNREADABLE.inc()
                log.error("unreadable credit movement skipped", extra={"error": str(exc)})
        new = await insert(conn, movements) if movements else 0
        metrics.CDRS_RELAYED.labels("credit_movements").inc(new)
        if len(movements) > new:
            metrics.CDRS_REPEATED.labels("credit_movements").inc(len(movements) - new)
        return new

    async def committed(self, entries: Sequence[str]) -> None:
        """Nothing of a movement is kept in Redis beyond its outbox entry."""


def credit_rows() -> tuple[CreditMovementRows, ...]:
    """The relay's ``kept`` outboxes of every billing shard."""
    return tuple(CreditMovementRows(outbox) for outbox in bill_keys.CREDIT_OUTBOXES)


async def credit_of(pool: Pool, ba: str) -> int:
    """The account's credit as its rows say (the ``account_credit`` view; 0 none)."""
    async with pool.connection() as conn, conn.cursor() as cur:
        await cur.execute("SELECT credit_minor FROM account_credit WHERE billing_account = %s", (ba,))
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def open_all(client: aioredis.Redis, now_s: int) -> int:
    """Record every billing account's opening credit not recorded yet (credit_open.lua,
    one account at a time); how many accounts it recorded now."""
    opened = 0
    args = CreditOpenArgs(now_s)
    async for raw in client.scan_iter(match=bill_keys.BILLING_ACCOUNT_PATTERN, count=500):
        key = str(raw)
        ba = bill_keys.billing_account_of(key)
        if ba is None or key != bill_keys.billing_account(ba):
            continue  # the account's lines, lists...; or a layout from before the shards
        opened += int(await CREDIT_OPEN(client, (key, bill_keys.credit_outbox(ba)), args))
    return opened


async def open_once(client: aioredis.Redis, now_s: int) -> int | None:
    """``open_all`` unless it completed before on this Redis; None when it had."""
    if await client.exists(bill_keys.BILL_CREDITS_OPENED):
        return None
    opened = await open_all(client, now_s)
    await client.set(bill_keys.BILL_CREDITS_OPENED, "1")
    return opened
