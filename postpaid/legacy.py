"""Invoices issued before PostgreSQL kept them: moved out of Redis once, on upgrade.

Before issue 11 an issued invoice was a JSON document in Redis (``{bill}:inv:NUMBER``),
listed under its account (``{bill}:ba:BA:inv``), numbered from a Redis counter
(``{bill}:seq:inv:ISSUER``), with a marker per account and period (``{bill}:run:...``)
and the bill runs' reports in a list (``{bill}:runs``). ``move`` writes each document
to ``invoices`` (with its charge lines and taxes), the counter into ``invoice_numbers``
(the larger of the two wins, so the series continues without a gap or a repeat), the
reports into ``bill_runs``, and only then deletes what it moved from Redis. The
customer's name and address are sealed on the way (``invoice_book.sealed_document``).

It can be stopped at any point and run again, or run by several processes at once: a
document already in the database is not written twice (``invoice_id`` is unique), one
deleted from Redis is not read again, a bill run's report is written as often as Redis
lists it (``_move_runs``).
The invoice's state (``{bill}:is:NUMBER``: open amount, status, delivery) stays in Redis,
where payments and dunning use it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

import redis.asyncio as aioredis

from charging.database import Pool
from charging.errors import StartupError
from charging.store import as_text
from postpaid import keys as bill_keys
from postpaid.invoice_book import CHARGE_COLUMNS, TAX_COLUMNS, sealed_document
from postpaid.invoices import Invoice
from provisioning.sealing import Sealer

BATCH = 200


@dataclass
class Moved:
    invoices: int = 0
    runs: int = 0


async def move(client: aioredis.Redis, pool: Pool, issuer: str, series: str, sealer: Sealer) -> Moved:
    """Move the Redis-kept invoices of ``issuer`` (its number prefix ``series``) into
    PostgreSQL; answers what was moved (nothing when it was done before)."""
    moved = Moved()
    batch: list[str] = []
    async for key in client.scan_iter(match=bill_keys.invoice("*"), count=1000):
        batch.append(as_text(key))
        if len(batch) >= BATCH:
            moved.invoices += await _move_batch(client, pool, issuer, batch, sealer)
            batch = []
    if batch:
        moved.invoices += await _move_batch(client, pool, issuer, batch, sealer)
    last = await client.get(bill_keys.invoice_seq(issuer))
    if last is not None:
        async with pool.connection() as conn:
            await conn.execute(
                "INSERT INTO invoice_numbers AS n (issuer, series, last_number) VALUES (%s, %s, %s) "
                "ON CONFLICT (issuer, series) "
                "DO UPDATE SET last_number = greatest(n.last_number, EXCLUDED.last_number)",
                (issuer, series, int(last)),
            )
        await client.delete(bill_keys.invoice_seq(issuer))
    moved.runs = await _move_runs(client, pool)
    async for key in client.scan_iter(match=bill_keys.bill_run("*", "*"), count=1000):
        await client.delete(key)
    async for key in client.scan_iter(match=bill_keys.legacy_account("*") + ":inv", count=1000):
        await client.delete(key)
    return moved


async def _move_batch(client: aioredis.Redis, pool: Pool, issuer: str, doc_keys: list[str], sealer: Sealer) -> int:
    prefix = bill_keys.invoice("")
    numbers = [k[len(prefix) :] for k in doc_keys]
    docs = await client.mget(doc_keys)
    pipe = client.pipeline(transaction=False)
    for number in numbers:
        pipe.hget(bill_keys.legacy_invoice_state(number), "issued")
    issued_at = await pipe.execute()
    rows, charges, taxes = [], [], []
    for number, doc, at in zip(numbers, docs, issued_at, strict=True):
        if doc is None:
            continue
        inv = Invoice.from_json(as_text(doc))
        text = sealed_document(inv, inv.number, sealer)
        series, _, digits = number.rpartition("-")
        issued = (
            datetime.fromtimestamp(int(at), UTC)
            if at is not None
            else datetime(*inv.issued.timetuple()[:3], tzinfo=UTC)
        )
        rows.append(
            (issuer, series, int(digits), number, inv.billing_account, inv.kind, inv.period_start, inv.period_end,
             issued, inv.due, inv.currency, inv.total, inv.tax_total, text)
        )  # fmt: skip
        position = 0
        for line, c in [(s.line, c) for s in inv.sections for c in s.charges] + [("", c) for c in inv.account_charges]:
            position += 1
            charges.append(
                (number, position, line, c.kind, c.description, c.category, c.tax_code, c.quantity, c.unit, c.amount)
            )
        taxes += [(number, t.code, t.name, t.rate_bp, t.base, t.amount) for t in inv.taxes]
    async with pool.connection() as conn, conn.transaction():
        cur = conn.cursor()
        # No conflict target: a mover at once inserting the same invoice conflicts on the
        # primary key (issuer, series, number) as well as on invoice_id. An invoice kept
        # out by another row (another invoice under its series and number) is an error,
        # not a repeat: its document stays in Redis.
        await cur.executemany(
            "INSERT INTO invoices (issuer, series, number, invoice_id, billing_account, kind, period_start, "
            "period_end, issued_at, due_date, currency, total_minor, tax_minor, document) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            rows,
        )
        wanted = [row[3] for row in rows]
        found = await conn.execute("SELECT invoice_id FROM invoices WHERE invoice_id = ANY(%s)", (wanted,))
        missing = sorted(set(wanted) - {str(i) for (i,) in await found.fetchall()})
        if missing:
            raise StartupError(f"invoices kept in redis clash with invoices issued since: {', '.join(missing[:5])}")
        marks = ", ".join(["%s"] * 10)
        await cur.executemany(
            f"INSERT INTO invoice_charges ({CHARGE_COLUMNS}) VALUES ({marks}) ON CONFLICT DO NOTHING", charges
        )
        marks = ", ".join(["%s"] * 6)
        await cur.executemany(
            f"INSERT INTO invoice_taxes ({TAX_COLUMNS}) VALUES ({marks}) ON CONFLICT DO NOTHING", taxes
        )
    # Only once the rows are committed: a crash before this moves the same documents again.
    await client.delete(*doc_keys)
    return len(rows)


async def _move_runs(client: aioredis.Redis, pool: Pool) -> int:
    """The bill runs' reports as rows. They have no id of their own, so each report is
    written as many times as Redis lists it less the rows it has already (under a lock
    held to the commit): a move repeated after a crash between the commit and the delete,
    or run by two processes at once, writes each report once."""
    reports = [json.loads(as_text(x)) for x in await client.lrange(bill_keys.BILL_RUNS, 0, -1)]
    if not reports:
        return 0
    listed = Counter(
        (datetime.fromtimestamp(int(r["at"]), UTC), int(r["accounts"]), int(r["issued"]), int(r["already"]),
         int(r["failed"]), float(r["seconds"]))
        for r in reports
    )  # fmt: skip
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('bill_runs moved from redis'))")
        found = await conn.execute(
            "SELECT ran_at, accounts, issued, already, failed, seconds FROM bill_runs WHERE ran_at = ANY(%s)",
            (sorted({report[0] for report in listed}),),
        )
        written = Counter(tuple(row) for row in await found.fetchall())
        rows = [report for report, count in listed.items() for _ in range(count - written[report])]
        await conn.cursor().executemany(
            "INSERT INTO bill_runs (ran_at, accounts, issued, already, failed, seconds) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            rows,
        )
    await client.delete(bill_keys.BILL_RUNS)
    return len(rows)


async def move_once(client: aioredis.Redis, pool: Pool, issuer: str, series: str, sealer: Sealer) -> Moved | None:
    """``move`` unless it has completed before on this Redis (a marker says so, so a server
    start does not scan the keyspace again); None when it had."""
    if await client.exists(bill_keys.BILL_INVOICES_MOVED):
        return None
    moved = await move(client, pool, issuer, series, sealer)
    await client.set(bill_keys.BILL_INVOICES_MOVED, "1")
    return moved
