"""Customers and units Redis kept before PostgreSQL did: recorded once, on upgrade.

Before, a customer was only its hash ``crm:customer:ID`` (listed in ``crm:customers``)
and a corporate customer's units the hashes ``crm:unit:ID`` listed in
``crm:units:CUSTOMER``. ``move`` writes each customer as it is now (one version, change
``moved``, its personal data sealed under the newest key) with its units, one
transaction per customer, in id order. Redis's hashes stay: they are the real-time copy
the provisioning worker reads. It can stop at any point and run again: rows already
written are kept as they are (``ON CONFLICT DO NOTHING``); several server processes
starting at once may run it side by side for the same reason. A marker key says it
completed, so a start does not read every customer again.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from charging.database import Pool
from provisioning import keys
from provisioning.customer_care import instant
from provisioning.customer_records import VERSION, seal_personal
from provisioning.customers import Customer
from provisioning.organisation import Organisation, OrgUnit
from provisioning.sealing import Sealer
from provisioning.unit_records import UNIT_VERSION

BATCH = 500
BY = "crm"  # who recorded what the CRM kept before


@dataclass
class Moved:
    customers: int = 0
    units: int = 0


async def move(client: aioredis.Redis, pool: Pool, sealer: Sealer) -> Moved:
    moved, after = Moved(), 0
    organisation = Organisation(client)
    while True:
        ids = [str(i) for i in await client.zrangebyscore(keys.CUSTOMERS, f"({after}", "+inf", start=0, num=BATCH)]
        if not ids:
            return moved
        for customer_id in ids:
            after = int(customer_id)
            h = {str(k): str(v) for k, v in (await client.hgetall(keys.customer(customer_id))).items()}
            if not h or h.get("kind") not in ("INDIVIDUAL", "CORPORATE"):
                continue
            customer = Customer.from_redis(customer_id, h, sealer)
            units = await organisation.units(customer_id)
            await _record(pool, sealer, customer, list(units.values()))
            moved.customers += 1
            moved.units += len(units)


async def _record(pool: Pool, sealer: Sealer, c: Customer, units: list[OrgUnit]) -> None:
    at = instant(c.created)
    sealed = seal_personal(sealer, c)
    credit = c.credit
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO customers (customer_id, kind, created_at, country, document_type, document_country, "
            "recorded_by) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (int(c.id), c.kind, at, c.country, c.document_type, c.document_country, BY),
        )
        await conn.execute(
            VERSION,
            (
                int(c.id),
                1,
                c.state or "PENDING",
                "" if credit is None else credit.credit_class,
                c.credit_limit_micros,
                c.deposit_micros,
                credit is not None and credit.postpaid_allowed,
                0 if credit is None else credit.max_lines,
                sealed,
                "moved",
                at,
                BY,
            ),
        )
        for u in units:
            await conn.execute(
                "INSERT INTO org_units (unit_id, customer_id, created_at, recorded_by) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                (int(u.id), int(c.id), at, BY),
            )
        for u in units:
            parent = int(u.parent) if u.parent else None
            await conn.execute(UNIT_VERSION, (int(u.id), 1, parent, u.name, u.pays_itself, "moved_from_redis", at, BY))


async def move_once(client: aioredis.Redis, pool: Pool, sealer: Sealer) -> Moved | None:
    """``move`` unless it completed before on this Redis; None when it had."""
    if await client.exists(keys.CUSTOMERS_MOVED):
        return None
    moved = await move(client, pool, sealer)
    await client.set(keys.CUSTOMERS_MOVED, "1")
    return moved
