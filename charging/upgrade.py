"""What an installation's Redis kept before PostgreSQL did, outside billing, moved once,
in one order for the server's start and ``charging migrate`` (billing's part is
``postpaid/upgrade.py``, run before this): catalog and coverage versions
(``history_store.py``), orders and lines' history (``provisioning/orders_legacy.py``),
interactions and tickets (``provisioning/care_legacy.py``), customers and their units
(``provisioning/customer_legacy.py``). Each step is resumable and a no-op once done; the
CRM's keys are under their ``{crm}`` tag before (``provisioning/untagged.py``)."""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

from charging import history_store
from charging.database import Pool
from provisioning import care_legacy, customer_legacy, orders_legacy
from provisioning.sealing import Sealer

log = logging.getLogger(__name__)


async def move_stored_records(client: aioredis.Redis, pool: Pool, sealer: Sealer, now_ms: int) -> None:
    versions = await history_store.move_all_stored(client, pool, now_ms)
    if any(versions.values()):
        log.info("document versions recorded", extra=versions)
    orders = await orders_legacy.move_once(client, pool, now_ms)
    if orders is not None and (orders.orders or orders.lines):
        log.info("orders and lines moved from redis", extra={"orders": orders.orders, "lines": orders.lines})
    care = await care_legacy.move_once(client, pool, sealer)
    if care is not None and (care.interactions or care.tickets):
        log.info("care records moved from redis", extra={"interactions": care.interactions, "tickets": care.tickets})
    customers = await customer_legacy.move_once(client, pool, sealer)
    if customers is not None and customers.customers:
        log.info("customers recorded from redis", extra={"customers": customers.customers, "units": customers.units})
