"""What an installation's Redis kept of billing before PostgreSQL did, moved once, in one
order for the server's start and ``charging migrate``: issued invoices and bill runs
(``legacy.py``); disputes, promises to pay and dunning steps (``collections_legacy.py``);
payments, credit notes and refunds (``receivables_legacy.py``); then what is left under
the one ``{bill}`` tag into the billing shards (``shards.py``); and the credit accounts
held before its movements were rows, as one opening movement each
(``credit_movements.py``); then the states of invoices paid before revision 0016 become
candidates to leave Redis, which the ``billing_applications`` job's sweep drops once
PostgreSQL answers for them, and the credit notes' Redis copies go (``settled.py``).
Each step is resumable, safe with several movers at once, and a no-op once done. Run
within ``charging/upgrade.py``'s sequence, under its lease."""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

from charging.database import Pool
from postpaid import collections_legacy, credit_movements, legacy, receivables_legacy, settled, shards
from postpaid.config import BillingConfig
from provisioning.sealing import Sealer

log = logging.getLogger(__name__)


async def move_stored_records(
    client: aioredis.Redis, pool: Pool, config: BillingConfig, sealer: Sealer, now_s: int
) -> None:
    issuer = config.issuer
    moved = await legacy.move_once(client, pool, issuer.id, issuer.number_prefix, sealer)
    if moved is not None and (moved.invoices or moved.runs):
        log.info("invoices moved from redis", extra={"invoices": moved.invoices, "runs": moved.runs})
    collections = await collections_legacy.move_once(client, pool, now_s)
    if collections is not None and any(vars(collections).values()):
        log.info("disputes, promises and dunning steps moved from redis", extra=vars(collections))
    payments = await receivables_legacy.move_once(
        client, pool, issuer.id, issuer.credit_note_prefix, config.currency, now_s
    )
    if payments:
        log.info("payments, credit notes and refunds moved from redis", extra={"movements": payments})
    await shards.move_once(client)
    # The credit accounts held before its movements were rows (``credit_movements.py``).
    await credit_movements.open_once(client, now_s)
    seeded = await settled.seed_once(client)
    if seeded:
        log.info("paid invoices' states to leave redis", extra={"invoices": seeded})
