"""Re-sealing personal data under the newest key, then rewriting the AOF.

``charging rotate-data-key`` runs this once every process reading the data has the new
key in its key ring (``sealing.py``: the last key seals). Each sealed value not sealed
with that key, or written in clear before sealing existed, is read through its record's
``from_redis`` and written back through its ``to_redis``, in a transaction watching the
key (a value changed meanwhile is read again). Billing accounts (who their invoices are
addressed to) are re-sealed by their owner, ``postpaid/accounts.py``. Issued invoices in
PostgreSQL are immutable rows: they keep the key that sealed them (see the README).
Interactions and tickets in PostgreSQL are sealed again in place (``customer_care.reseal``:
the same text under the newest key).
Running it again changes only what is still under an old key.

Redis's append-only file still holds every value as first written, clear or under the
old key, until it is rewritten: the rotation ends with ``BGREWRITEAOF`` and waits for it,
so only the dataset as it is now stays in the file. A snapshot (RDB) taken earlier, or
a backup, keeps what it had: those are the operator's to expire.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from charging.database import Pool
from postpaid.accounts import reseal_all
from provisioning import keys
from provisioning.customer_care import Dispute, Interaction, Ticket, reseal
from provisioning.customers import PERSONAL, Customer
from provisioning.orders import REQUEST
from provisioning.sealing import Sealer


@dataclass
class Rotated:
    """How many values were sealed again, by kind."""

    customers: int = 0
    order_requests: int = 0
    interactions: int = 0
    tickets: int = 0
    ticket_changes: int = 0
    disputes: int = 0
    billing_accounts: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Rotation:
    def __init__(self, client: aioredis.Redis, sealer: Sealer, pool: Pool | None = None) -> None:
        self.client = client
        self.sealer = sealer
        self.pool = pool  # the system of record: interactions and tickets (customer_care.reseal)

    async def run(self, *, rewrite_timeout_s: float = 600.0) -> Rotated:
        done = Rotated()
        for customer_id in [str(c) for c in await self.client.zrange(keys.CUSTOMERS, 0, -1)]:
            done.customers += await self._customer(customer_id)
            done.interactions += await self._interactions(customer_id)
            for ticket_id in await self.client.lrange(keys.tickets(customer_id), 0, -1):
                done.tickets += await self._string(keys.ticket(str(ticket_id)), self._ticket)
            for dispute_id in await self.client.lrange(keys.disputes(customer_id), 0, -1):
                done.disputes += await self._string(keys.dispute(str(dispute_id)), self._dispute)
        for order_id in [str(o) for o in await self.client.zrange(keys.SUBMITTED, 0, -1)]:
            done.order_requests += await self._request(order_id)
        done.billing_accounts = await reseal_all(self.client, self.sealer)
        if self.pool is not None:
            rows = await reseal(self.pool, self.sealer)
            done.interactions += rows["interactions"]
            done.tickets += rows["tickets"]
            done.ticket_changes += rows["ticket_changes"]
        await rewrite_aof(self.client, rewrite_timeout_s)
        return done

    def _stale(self, value: str) -> bool:
        return bool(value) and not self.sealer.is_current(value)

    def _ticket(self, text: str) -> str:
        return Ticket.from_redis(text, self.sealer).to_redis(self.sealer)

    def _dispute(self, text: str) -> str:
        return Dispute.from_redis(text, self.sealer).to_redis(self.sealer)

    async def _customer(self, customer_id: str) -> int:
        key = keys.customer(customer_id)

        async def txn(pipe: Pipeline) -> int:
            h = {str(k): str(v) for k, v in (await pipe.hgetall(key)).items()}
            if not any(self._stale(h.get(name, "")) for name in PERSONAL):
                return 0
            sealed = Customer.from_redis(customer_id, h, self.sealer).to_redis(self.sealer)
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.hset(key, mapping={name: sealed[name] for name in PERSONAL})
            return 1

        return await self._watching(key, txn)

    async def _interactions(self, customer_id: str) -> int:
        key = keys.interactions(customer_id)

        async def txn(pipe: Pipeline) -> int:
            stored = [str(x) for x in await pipe.lrange(key, 0, -1)]
            stale = sum(self._stale(x) for x in stored)
            if stale:
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.delete(key)
                pipe.rpush(key, *(Interaction.from_redis(x, self.sealer).to_redis(self.sealer) for x in stored))
            return stale

        return await self._watching(key, txn)

    async def _string(self, key: str, reseal: Callable[[str], str]) -> int:
        async def txn(pipe: Pipeline) -> int:
            text = await pipe.get(key)
            if text is None or not self._stale(str(text)):
                return 0
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.set(key, reseal(str(text)))
            return 1

        return await self._watching(key, txn)

    async def _request(self, order_id: str) -> int:
        key = keys.order_work(order_id)

        async def txn(pipe: Pipeline) -> int:
            request = await pipe.hget(key, "request")
            if request is None or not self._stale(str(request)):
                return 0
            clear = json.loads(self.sealer.open(str(request), REQUEST))
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.hset(key, "request", self.sealer.seal(json.dumps(clear), REQUEST))
            return 1

        return await self._watching(key, txn)

    async def _watching(self, key: str, txn: Callable[[Pipeline], Awaitable[int]]) -> int:
        count: int = await self.client.transaction(txn, key, value_from_callable=True)
        return count


async def rewrite_aof(client: aioredis.Redis, timeout_s: float) -> None:
    """Rewrite the append-only file and wait until the new one is in use; raises
    ``RuntimeError`` when Redis reports the rewrite failed or it takes too long."""
    if (await client.info("persistence")).get("aof_enabled") != 1:
        return  # no AOF to rewrite (an RDB-only or in-memory Redis)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:  # a rewrite already running would refuse ours: wait for it first
        info = await client.info("persistence")
        if not info["aof_rewrite_in_progress"]:
            break
        if loop.time() > deadline:
            raise RuntimeError("an AOF rewrite already running did not end in time")
        await asyncio.sleep(0.1)
    await client.bgrewriteaof()
    while True:
        info = await client.info("persistence")
        if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
            if info["aof_last_bgrewrite_status"] != "ok":
                raise RuntimeError("redis could not rewrite the append-only file; see its log")
            return
        if loop.time() > deadline:
            raise RuntimeError("the AOF rewrite did not end in time")
        await asyncio.sleep(0.1)
