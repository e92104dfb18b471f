"""Payments, credit notes and refunds of credit kept only in Redis (made before revision
0005): moved once, on upgrade (``charging migrate``, and at a server's start).

Before 0005 such a movement was only its record in Redis (``{bill}:pay:CHANNEL:REF``,
``{bill}:pay:CN:KEY``, ``{bill}:pay:REFUND:REF``: ``digest|record JSON``), listed under
its account (``{bill}:ba:BA:pay``). ``move`` writes each as its row with an applied
application (Redis applied it long ago) and its allocations, so ``ListMoneyRecords`` and
the analysts' views see every movement; movements committed in PostgreSQL since are in
those lists too and are recognised by their idempotency key and skipped. The credit note
counter row takes the larger of its value and Redis's counter. The Redis records stay:
``pay.lua`` answers a retried request from them. It can be stopped and run again: every
row has a key that makes a second insert a no-op.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from charging.database import Pool
from charging.store import as_text
from postpaid import keys as bill_keys


def _at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _id(record_key: str) -> str:
    return "redis-" + hashlib.sha1(record_key.encode()).hexdigest()[:20]


async def move(client: aioredis.Redis, pool: Pool, issuer: str, series: str, currency: str, now_s: int) -> int:
    """Move the Redis-only movements; answers how many rows were written."""
    moved = 0
    # Under the one {bill} tag or moved into the billing shards already (shards.py).
    async for key in client.scan_iter(match=bill_keys.BILLING_ACCOUNT_PATTERN + ":pay", count=1000):
        name = as_text(key)
        ba = bill_keys.billing_account_of(name[: -len(":pay")])
        if ba is None or not name.endswith(":pay"):
            continue
        record_keys = [as_text(k) for k in await client.lrange(name, 0, -1)]
        docs = await client.mget(record_keys) if record_keys else []
        async with pool.connection() as conn, conn.transaction():
            for record_key, stored in zip(record_keys, docs, strict=True):
                if stored is not None:
                    doc = json.loads(as_text(stored).split("|", 1)[1])
                    moved += await _movement(conn, ba, record_key, doc, issuer, currency, now_s)
    seq = await client.get(bill_keys.credit_note_seq(issuer))
    if seq is not None:
        async with pool.connection() as conn:
            await conn.execute(
                "INSERT INTO invoice_numbers AS n (issuer, series, last_number) VALUES (%s, %s, %s) "
                "ON CONFLICT (issuer, series) "
                "DO UPDATE SET last_number = greatest(n.last_number, EXCLUDED.last_number)",
                (issuer, series, int(seq)),
            )
    return moved


async def move_once(
    client: aioredis.Redis, pool: Pool, issuer: str, series: str, currency: str, now_s: int
) -> int | None:
    """``move`` unless it completed before on this Redis; None when it had."""
    if await client.exists(bill_keys.BILL_PAYMENTS_MOVED):
        return None
    moved = await move(client, pool, issuer, series, currency, now_s)
    await client.set(bill_keys.BILL_PAYMENTS_MOVED, "1")
    return moved


async def _movement(
    conn: AsyncConnection[TupleRow],
    ba: str,
    record_key: str,
    doc: dict[str, Any],
    issuer: str,
    currency: str,
    now_s: int,
) -> int:
    kind, movement_id = str(doc.get("kind", "")), _id(record_key)
    at = _at(int(doc.get("at") or now_s))
    amount = int(doc["amount"])
    if kind == "PAYMENT":
        channel, reference = str(doc["channel"]), str(doc["reference"])
        cur = await conn.execute(
            "INSERT INTO payments (payment_id, billing_account, channel, reference, idempotency_key, amount_minor, "
            "currency, received_at, recorded_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'redis') "
            "ON CONFLICT DO NOTHING",
            (movement_id, ba, channel, reference, f"{channel}:{reference}", amount, currency, at),
        )
    elif kind == "CREDIT_NOTE":
        movement_id = str(doc["number"])
        series, _, digits = movement_id.rpartition("-")
        key = record_key.split(":pay:CN:", 1)[1]
        cur = await conn.execute(
            "INSERT INTO credit_notes (issuer, series, number, credit_note_id, billing_account, invoice_id, "
            "amount_minor, currency, reason, idempotency_key, issued_at, recorded_by) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'redis') ON CONFLICT DO NOTHING",
            (issuer, series, int(digits), movement_id, ba, str(doc["invoice"]), amount, currency, str(doc["reason"]),
             key, at),
        )  # fmt: skip
    elif kind == "REFUND":
        cur = await conn.execute(
            "INSERT INTO refunds (refund_id, billing_account, reference, amount_minor, reason, refunded_at, actor) "
            "VALUES (%s, %s, %s, %s, %s, %s, 'redis') ON CONFLICT DO NOTHING",
            (movement_id, ba, str(doc["reference"]), amount, str(doc.get("reason", "")), at),
        )
    else:
        return 0
    if cur.rowcount == 0:
        return 0  # committed in PostgreSQL already (made since 0005), or moved before
    application_id = f"{kind}:{movement_id}"
    await conn.execute(
        "INSERT INTO billing_applications (application_id, kind, movement_id, billing_account) "
        "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (application_id, kind, movement_id, ba),
    )
    await conn.execute(
        "INSERT INTO billing_applied (application_id, outcome, detail) VALUES (%s, 'APPLIED', 'moved from redis') "
        "ON CONFLICT DO NOTHING",
        (application_id,),
    )
    allocations = [(application_id, str(k), int(v)) for k, v in (doc.get("allocations") or {}).items() if int(v) > 0]
    if allocations:
        await conn.cursor().executemany(
            "INSERT INTO allocations (application_id, invoice_id, amount_minor) VALUES (%s, %s, %s) "
            "ON CONFLICT DO NOTHING",
            allocations,
        )
    return 1
