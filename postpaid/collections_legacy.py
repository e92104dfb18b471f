"""Disputes, promises to pay and dunning steps kept in Redis before PostgreSQL kept them:
moved once, on upgrade (``charging migrate``, and at a server's start).

Before revision 0008 a dispute was a hash (``{bill}:disp:ID``: status, the record JSON)
listed under its customer (``{bill}:cdisp:CUSTOMER``), a promise to pay was a field of
the billing account (``promised_until``), the dunning steps taken were members of a set
(``{bill}:ba:BA:dun``: ``INVOICE|STEP``), and their audit entries went to the stream
``{bill}:audit``. ``move`` writes each dispute's events (with applied applications: Redis
holds them already), each promise, each step and those audit entries as rows, then drops
what Redis no longer needs (the customer lists and the ``promised_until`` fields). The
dispute hashes and the step sets stay: they are what ``dispute.lua`` and ``dunning.lua``
apply once by. It can be stopped and run again: every row has a key that makes a second
insert a no-op, and what was dropped is not read again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from psycopg.types.json import Jsonb

from charging.database import Pool
from charging.store import as_text
from postpaid import keys as bill_keys

# Audit actions of the stream that belong to what moves here (adjustments and prepaid
# closures keep writing the stream).
AUDITED = ("dispute_opened", "dispute_accepted", "dispute_rejected", "promise_to_pay", "collection_handover")


@dataclass
class MovedCollections:
    disputes: int = 0
    promises: int = 0
    steps: int = 0
    audit: int = 0


def _at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


async def move(client: aioredis.Redis, pool: Pool, now_s: int) -> MovedCollections:
    moved = MovedCollections()
    async for key in client.scan_iter(match=bill_keys.legacy_dispute("*"), count=1000):
        moved.disputes += await _dispute(client, pool, as_text(key))
    ba_prefix = bill_keys.legacy_account("")
    async for key in client.scan_iter(match=bill_keys.legacy_account("*") + ":dun", count=1000):
        name = as_text(key)
        ba = name[len(ba_prefix) : -len(":dun")]
        moved.steps += await _steps(client, pool, ba, now_s)
    async for key in client.scan_iter(match=bill_keys.legacy_account("*"), count=1000):
        name = as_text(key)
        if await client.type(name) in ("hash", b"hash"):
            moved.promises += await _promise(client, pool, name[len(ba_prefix) :], now_s)
    moved.audit = await _audit(client, pool)
    async for key in client.scan_iter(match=bill_keys.customer_disputes("*"), count=1000):
        await client.delete(key)  # the disputes are listed by customer in PostgreSQL now
    return moved


async def move_once(client: aioredis.Redis, pool: Pool, now_s: int) -> MovedCollections | None:
    """``move`` unless it completed before on this Redis; None when it had."""
    if await client.exists(bill_keys.BILL_COLLECTIONS_MOVED):
        return None
    moved = await move(client, pool, now_s)
    await client.set(bill_keys.BILL_COLLECTIONS_MOVED, "1")
    return moved


async def _dispute(client: aioredis.Redis, pool: Pool, key: str) -> int:
    h = {as_text(k): as_text(v) for k, v in (await client.hgetall(key)).items()}
    if "doc" not in h or not h.get("status"):
        return 0
    doc: dict[str, Any] = json.loads(h["doc"])
    dispute_id, ba = str(doc["id"]), str(doc["ba"])
    customer = as_text(await client.hget(bill_keys.legacy_account(ba), "customer") or "")
    opened = _at(int(doc.get("opened", 0)))
    common = (ba, str(doc["invoice"]), str(doc.get("line", "")), int(doc["amount"]))
    events = [(dispute_id, "OPENED", *common, str(doc["reason"]), "redis", opened, "", customer)]
    if h["status"] in ("ACCEPTED", "REJECTED"):
        resolution = str(doc.get("resolution", ""))
        note = str(doc.get("credit_note", ""))
        events.append((dispute_id, h["status"], *common, resolution, "redis", opened, note, ""))
    async with pool.connection() as conn, conn.transaction():
        cur = conn.cursor()
        await cur.executemany(
            "INSERT INTO dispute_events (dispute_id, event, billing_account, invoice_id, line, amount_minor, reason, "
            "actor, occurred_at, credit_note_id, customer_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT DO NOTHING",
            events,
        )
        # Redis applied them long ago: their applications are there, applied.
        applications = [(f"DISPUTE:{dispute_id}:{e[1]}", f"{dispute_id}:{e[1]}", ba) for e in events]
        await cur.executemany(
            "INSERT INTO billing_applications (application_id, kind, movement_id, billing_account) "
            "VALUES (%s, 'DISPUTE', %s, %s) ON CONFLICT DO NOTHING",
            applications,
        )
        await cur.executemany(
            "INSERT INTO billing_applied (application_id, outcome, detail) VALUES (%s, 'APPLIED', 'moved from redis') "
            "ON CONFLICT DO NOTHING",
            [(a[0],) for a in applications],
        )
    return 1


async def _steps(client: aioredis.Redis, pool: Pool, ba: str, now_s: int) -> int:
    members = [as_text(m) for m in await client.smembers(bill_keys.legacy_account(ba) + ":dun")]
    rows = []
    for member in members:
        invoice, _, step = member.partition("|")
        if step and invoice not in ("restore", "state", "fee"):
            rows.append((ba, invoice, step, _at(now_s), 0, "moved from redis"))
    if rows:
        async with pool.connection() as conn, conn.transaction():
            await conn.cursor().executemany(
                "INSERT INTO dunning_steps (billing_account, invoice_id, step, taken_at, overdue_minor, "
                "application_id) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                rows,
            )
    return len(rows)


async def _promise(client: aioredis.Redis, pool: Pool, ba: str, now_s: int) -> int:
    until = await client.hget(bill_keys.legacy_account(ba), "promised_until")
    if not until:
        return 0
    day = as_text(until)
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO promises_to_pay (promise_id, billing_account, until_date, actor, made_at) "
            "VALUES (%s, %s, %s, 'redis', %s) ON CONFLICT DO NOTHING",
            (f"{ba}:redis:{day}", ba, day, _at(now_s)),
        )
    # Only once the row is committed: a crash before this moves the same promise again.
    await client.hdel(bill_keys.legacy_account(ba), "promised_until")
    return 1


async def _audit(client: aioredis.Redis, pool: Pool) -> int:
    rows = []
    for entry_id, raw in await client.xrange(bill_keys.LEGACY_AUDIT) or []:
        fields = {as_text(k): as_text(v) for k, v in (raw or {}).items()}
        action = fields.get("action", "")
        if action not in AUDITED:
            continue
        stream_id = as_text(entry_id)
        at = _at(int(fields.get("at") or int(stream_id.split("-")[0]) // 1000))
        subject = fields.get("ba", "")
        details = {k: v for k, v in fields.items() if k not in ("action", "actor", "ba", "reason", "at")}
        actor = fields.get("caller") or fields.get("actor") or "redis"
        rows.append((f"redis-audit:{stream_id}", at, actor, action, subject, fields.get("reason", ""), Jsonb(details)))
    if not rows:
        return 0
    async with pool.connection() as conn, conn.transaction():
        for month in sorted({r[1].date() for r in rows}):
            await conn.execute("SELECT create_month_partitions('audit', %s::date, %s::date)", (month, month))
        cur = conn.cursor()
        await cur.executemany(
            "INSERT INTO audit (entry_id, occurred_at, actor, action, subject, reason, details) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (entry_id, occurred_at) DO NOTHING",
            rows,
        )
    return len(rows)
