"""What an installation's Redis kept before PostgreSQL did, outside billing, moved once,
in one order for the server's start and ``charging migrate`` (billing's part is
``postpaid/upgrade.py``, run before this): catalog and coverage versions
(``history_store.py``), orders and lines' history (``provisioning/orders_legacy.py``),
the owner type and unit of lines whose rows came before revision 0015
(``provisioning/line_owners.py``, after the orders' move: its ``found`` rows need it),
interactions and tickets (``provisioning/care_legacy.py``), customers and their units
(``provisioning/customer_legacy.py``). Each step is resumable and a no-op once done; the
CRM's keys are under their ``{crm}`` tag before (``provisioning/untagged.py``).

``move_all`` runs the whole of it, billing's part and this, for a server's start,
``charging worker`` and ``charging migrate``: under one lease, ``upgrade-moves``
(``leases.one_at_a_time``), so processes and hosts starting together on an old
installation move one at a time; the others wait, and go on (to serve billing and the
CRM) only once they ran the sequence themselves after the holder, finding every step
done. A holder that dies is taken over within one lease period, and the next holder
finishes what it left half moved. The lease is an optimisation, not the guarantee: every
step is idempotent (rows with unique keys, ``ON CONFLICT DO NOTHING``, Redis keys deleted
only after their rows commit), so two movers at once (a holder paused past its lease)
write each record once. There is deliberately no marker for the whole sequence: each
step has its own (a done step costs one ``EXISTS``), so a step added by a later version
runs on an installation that ran the sequence before."""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

from charging import history_store
from charging.clock import Clock
from charging.database import Pool
from charging.leases import one_at_a_time
from charging.settings import Settings
from postpaid import config as billing_config
from postpaid import upgrade as billing_upgrade
from postpaid.config import BillingConfig
from provisioning import care_legacy, customer_legacy, line_owners, orders_legacy
from provisioning.sealing import Sealer, load_sealer
from provisioning.untagged import adopt_untagged

log = logging.getLogger(__name__)

LEASE_JOB = "upgrade-moves"  # one mover at a time among all processes and hosts (leases.py)


async def move_all(
    client: aioredis.Redis,
    pool: Pool,
    billing: BillingConfig,
    sealer: Sealer,
    clock: Clock,
    lease_s: float,
    holder: str | None = None,
) -> None:
    """Every start-time move (``move_sequence``) under the ``upgrade-moves`` lease (see
    the module docstring); returns once they are done, by this process or another."""

    async def moves() -> None:
        await move_sequence(client, pool, billing, sealer, clock)

    await one_at_a_time(client, LEASE_JOB, lease_s, moves, holder=holder)


async def move_sequence(
    client: aioredis.Redis, pool: Pool, billing: BillingConfig, sealer: Sealer, clock: Clock
) -> None:
    """Every start-time move, in their one order: the CRM's keys under their ``{crm}`` tag,
    billing's records (``postpaid/upgrade.py``), then the others (``move_stored_records``).
    Safe to run from several processes at once, and to stop at any point."""
    await adopt_untagged(client)
    now_ms = clock.now_ms()
    await billing_upgrade.move_stored_records(client, pool, billing, sealer, now_ms // 1000)
    await move_stored_records(client, pool, sealer, now_ms)


async def move_all_of(
    settings: Settings, client: aioredis.Redis, pool: Pool, clock: Clock, holder: str | None = None
) -> None:
    """``move_all`` with the billing settings file, key ring and lease period ``settings``
    name (a server's start, ``charging worker``, ``charging migrate``)."""
    billing = billing_config.load(settings.billing_file)
    await move_all(client, pool, billing, load_sealer(settings), clock, settings.lease_s, holder)


async def move_stored_records(client: aioredis.Redis, pool: Pool, sealer: Sealer, now_ms: int) -> None:
    versions = await history_store.move_all_stored(client, pool, now_ms)
    if any(versions.values()):
        log.info("document versions recorded", extra=versions)
    orders = await orders_legacy.move_once(client, pool, now_ms)
    if orders is not None and (orders.orders or orders.lines):
        log.info("orders and lines moved from redis", extra={"orders": orders.orders, "lines": orders.lines})
    owners = await line_owners.fill_once(client, pool)
    if owners is not None and (owners.lines or owners.unknown):
        log.info("lines' owners recorded", extra={"lines": owners.lines, "unknown": owners.unknown})
    care = await care_legacy.move_once(client, pool, sealer)
    if care is not None and (care.interactions or care.tickets):
        log.info("care records moved from redis", extra={"interactions": care.interactions, "tickets": care.tickets})
    customers = await customer_legacy.move_once(client, pool, sealer)
    if customers is not None and customers.customers:
        log.info("customers recorded from redis", extra={"customers": customers.customers, "units": customers.units})
