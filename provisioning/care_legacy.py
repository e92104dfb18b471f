"""Interactions and tickets Redis kept before PostgreSQL did: moved once, on upgrade.

Before, an interaction was a sealed JSON document in the customer's list
(``crm:interactions:CUSTOMER``), a ticket one under ``crm:ticket:ID`` listed in
``crm:tickets:CUSTOMER``, their ids from the counters ``crm:seq:interaction`` and
``crm:seq:ticket``. ``move`` writes each record with its id (a ticket with every change
of its history), sets the database's sequences past the counters (so ids continue
without a repeat), and only then deletes what it moved. It can stop at any point and run
again: rows already written are kept as they are (``ON CONFLICT DO NOTHING``), keys
already deleted are not read again. Several server processes starting at once may run it
side by side for the same reason. A marker key says it completed, so a start does not
scan the keyspace again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import redis.asyncio as aioredis
from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from charging.database import Pool
from charging.store import as_text
from provisioning import keys
from provisioning.customer_care import Interaction, Ticket, instant
from provisioning.sealing import Sealer


@dataclass
class Moved:
    interactions: int = 0
    tickets: int = 0


async def move(client: aioredis.Redis, pool: Pool, sealer: Sealer) -> Moved:
    moved = Moved()
    async for key in client.scan_iter(match=keys.interactions("*"), count=1000):
        name = as_text(key)
        customer_id = name.removeprefix(keys.interactions(""))
        items = [Interaction.from_redis(as_text(x), sealer) for x in await client.lrange(name, 0, -1)]
        async with pool.connection() as conn:
            for i in items:
                await _interaction(conn, sealer, customer_id, i)
        await client.delete(name)
        moved.interactions += len(items)
    async for key in client.scan_iter(match=keys.tickets("*"), count=1000):
        name = as_text(key)
        ids = [as_text(x) for x in await client.lrange(name, 0, -1)]
        for ticket_id in ids:
            text = await client.get(keys.ticket(ticket_id))
            if text is None:
                continue  # moved by an earlier run
            async with pool.connection() as conn:
                await _ticket(conn, sealer, Ticket.from_redis(as_text(text), sealer))
            await client.delete(keys.ticket(ticket_id))
            moved.tickets += 1
        await client.delete(name)
    async with pool.connection() as conn:
        for seq, table, column, counter in (
            ("interaction_ids", "interactions", "interaction_id", keys.INTERACTION_SEQ),
            ("ticket_ids", "tickets", "ticket_id", keys.TICKET_SEQ),
        ):
            counted = int(await client.get(counter) or 0)
            # past the larger of Redis's counter and the ids moved (nothing to do on a new
            # installation: the sequence starts at 1)
            await conn.execute(
                f"SELECT setval('{seq}', top) FROM "
                f"(SELECT greatest(%s, (SELECT coalesce(max({column}), 0) FROM {table})) AS top) t WHERE top > 0",
                (counted,),
            )
    return moved


async def _interaction(conn: AsyncConnection[TupleRow], sealer: Sealer, customer_id: str, i: Interaction) -> None:
    await conn.execute(
        "INSERT INTO interactions (interaction_id, customer_id, channel, sealed_note, sealed_refs, occurred_at, "
        "recorded_by) VALUES (%s, %s, %s, %s, %s, %s, 'crm') ON CONFLICT DO NOTHING",
        (
            int(i.id),
            customer_id,
            i.channel,
            sealer.seal(i.note, "care.interaction"),
            sealer.seal(json.dumps(list(i.references)), "care.interaction"),
            instant(i.at),
        ),
    )


async def _ticket(conn: AsyncConnection[TupleRow], sealer: Sealer, t: Ticket) -> None:
    opened = t.history[0].at if t.history else 0
    await conn.execute(
        "INSERT INTO tickets (ticket_id, customer_id, topic, line, invoice, sealed_summary, opened_at, opened_by) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, 'crm') ON CONFLICT DO NOTHING",
        (int(t.id), t.customer_id, t.topic, t.line, t.invoice, sealer.seal(t.summary, "care.ticket"), instant(opened)),
    )
    for n, change in enumerate(t.history, start=1):
        await conn.execute(
            "INSERT INTO ticket_changes (ticket_id, change_no, state, sealed_note, occurred_at, changed_by) "
            "VALUES (%s, %s, %s, %s, %s, 'crm') ON CONFLICT DO NOTHING",
            (int(t.id), n, change.state, sealer.seal(change.note, "care.ticket"), instant(change.at)),
        )


async def move_once(client: aioredis.Redis, pool: Pool, sealer: Sealer) -> Moved | None:
    """``move`` unless it completed before on this Redis; None when it had."""
    if await client.exists(keys.CARE_MOVED):
        return None
    moved = await move(client, pool, sealer)
    await client.set(keys.CARE_MOVED, "1")
    return moved
