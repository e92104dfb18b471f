"""Lines' owner type and unit filled in once (revision 0015's columns), on upgrade.

Rows of ``line_changes`` written before revision 0015 (the ``found`` rows of the move of
``orders_legacy.py``, and every change the running system wrote between 0013 and 0015)
have an empty ``customer_type`` and ``unit_id``: a reader took the line as
MOBILE_PREPAID of no unit until its next change wrote a row that names them. ``fill``
gives every line whose latest row is such a row a row of its own that names them, from
what the line's Redis hash (``crm:line:<msisdn>``, kept for the worker and charging)
knows. Rows are immutable, so the owner is a new row, a copy of the latest with the
owner in it: the same instant, cause ``found`` (the line as the upgrade found it) and the
latest row's id with ``:owner`` appended, so a second run writes nothing. Its ``seq`` is
larger, so it is the latest of that instant (``order_store.lines_of``), and any change
written since, at a later instant, stays after it. A line whose hash is gone, or names
another customer now, or names neither a type nor a unit, keeps its rows as they are.

It can stop at any point and run again (a line filled is skipped: its latest row names
its type), or run in several processes at once (``ON CONFLICT DO NOTHING``); a marker
key says it completed, so a start does not read the table again.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from charging.database import Pool
from charging.store import as_text
from provisioning import keys

BATCH = 500
OWNER = ":owner"  # appended to the copied row's change_id

# The latest row of each line (after a number, in number order) when it names no type:
# the rows without one, in the order of the (msisdn, at, seq) index, each kept when no
# row of its line comes after it (one pass over the table in all, batch by batch).
UNNAMED = (
    "SELECT c.change_id, c.msisdn, c.customer_id FROM line_changes c WHERE c.msisdn > %s "
    "AND c.customer_type = '' AND NOT EXISTS (SELECT 1 FROM line_changes n WHERE n.msisdn = c.msisdn "
    "AND (n.at, n.seq) > (c.at, c.seq)) ORDER BY c.msisdn LIMIT %s"
)
COPY = (
    "INSERT INTO line_changes (change_id, msisdn, customer_id, account_id, state, plan_id, crm_order_id, cause, "
    "reason, at, customer_type, unit_id) SELECT change_id || %s, msisdn, customer_id, account_id, state, plan_id, "
    "crm_order_id, 'found', reason, at, %s, %s FROM line_changes WHERE change_id = %s ON CONFLICT DO NOTHING"
)


@dataclass
class Filled:
    lines: int = 0  # lines given a row that names their owner
    unknown: int = 0  # lines Redis knows no owner of (their rows stay as they are)


@dataclass(frozen=True)
class Owner:
    """What the line's Redis hash says of its owner."""

    customer_id: str
    customer_type: str
    unit_id: str


async def _owners(client: aioredis.Redis, msisdns: list[str]) -> list[Owner | None]:
    pipe = client.pipeline(transaction=False)
    for msisdn in msisdns:
        pipe.hmget(keys.line(msisdn), ["customer_id", "customer_type", "unit_id"])
    out: list[Owner | None] = []
    for customer, kind, unit in await pipe.execute():
        named = as_text(kind) or as_text(unit)
        out.append(Owner(as_text(customer), as_text(kind) or "MOBILE_PREPAID", as_text(unit)) if named else None)
    return out


async def fill(client: aioredis.Redis, pool: Pool) -> Filled:
    """A row naming its owner for every line whose latest row names none (see the module
    docstring); resumable, idempotent."""
    filled, after = Filled(), ""
    while True:
        async with pool.connection() as conn:
            rows = await (await conn.execute(UNNAMED, (after, BATCH))).fetchall()
        if not rows:
            return filled
        owners = await _owners(client, [str(r[1]) for r in rows])
        async with pool.connection() as conn, conn.transaction():
            for (change_id, _msisdn, customer_id), owner in zip(rows, owners, strict=True):
                if owner is None or owner.customer_id != str(customer_id):
                    filled.unknown += 1
                    continue
                await conn.execute(COPY, (OWNER, owner.customer_type, owner.unit_id, change_id))
                filled.lines += 1
        after = str(rows[-1][1])


async def fill_once(client: aioredis.Redis, pool: Pool) -> Filled | None:
    """``fill`` unless it completed before on this Redis; None when it had."""
    if await client.exists(keys.LINE_OWNERS_FILLED):
        return None
    filled = await fill(client, pool)
    await client.set(keys.LINE_OWNERS_FILLED, "1")
    return filled
