"""Re-sealing personal data under the newest key, then rewriting the AOF.

``charging rotate-data-key`` runs this once every process reading the data has the new
key in its key ring (``sealing.py``: the last key seals). Each sealed value not sealed
with that key, or written in clear before sealing existed, is read through its record's
``from_redis`` and written back through its ``to_redis``, in a transaction watching the
key (a value changed meanwhile is read again). Billing accounts (who their invoices are
addressed to) are re-sealed by their owner, ``postpaid/accounts.py``. Issued invoices in
PostgreSQL are immutable rows: they keep the key that sealed them (see the README).
Interactions and tickets in PostgreSQL are sealed again in place (``customer_care.reseal``:
the same text under the newest key), and so are the customers' versions
(``customer_records.reseal``).
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
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterNode, RedisCluster

from charging.database import Pool
from postpaid.accounts import reseal_all
from provisioning import customer_records, keys
from provisioning.customer_care import Dispute, Interaction, Ticket, reseal
from provisioning.customers import PERSONAL, Customer
from provisioning.orders import REQUEST
from provisioning.sealing import Sealer

REPLICA = "replica"  # redis-py's ClusterNode.server_type of a replica


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
    customer_versions: int = 0  # in PostgreSQL (customer_records.reseal)

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
            done.customer_versions = await customer_records.reseal(self.pool, self.sealer)
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


Info = Callable[[], Awaitable[dict[str, Any]]]
Command = Callable[[], Awaitable[object]]


async def rewrite_aof(client: aioredis.Redis, timeout_s: float) -> None:
    """Rewrite the append-only file and wait until the new one is in use; raises
    ``RuntimeError`` when Redis reports the rewrite failed or it takes too long.

    On a Redis Cluster every node keeps an AOF of its own, replicas included: each is
    rewritten, a replica once it has applied everything its primary had when the rotation
    ended (else its rewritten file could still hold a value its primary re-sealed)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    if not isinstance(client, RedisCluster):
        await _rewrite(lambda: client.info("persistence"), client.bgrewriteaof, deadline)
        return
    # The replicas as each primary knows them now (ROLE: [role, offset, [[host, port,
    # acknowledged offset], ...]]): redis-py's node cache may not list them all.
    primaries = {p.name: p for p in client.get_primaries()}
    nodes = {name: await client.execute_command("ROLE", target_nodes=p) for name, p in primaries.items()}
    replicas: list[ClusterNode] = []
    unknown: list[ClusterNode] = []  # made here: disconnected at the end
    try:
        for name, role in nodes.items():
            offset = int(role[1])
            for host, port, _acked in role[2]:
                replica = client.get_node(host=host, port=int(port))
                if replica is None:
                    replica = ClusterNode(host, int(port), REPLICA, **client.nodes_manager.connection_kwargs)
                    unknown.append(replica)
                replicas.append(replica)
                await _caught_up(client, primaries[name], replica, offset, deadline)

        def info(node: ClusterNode) -> Info:
            return lambda: client.info("persistence", target_nodes=node)

        def rewrite(node: ClusterNode) -> Command:
            return lambda: client.execute_command("BGREWRITEAOF", target_nodes=node)

        every = [*primaries.values(), *replicas]
        await asyncio.gather(*(_rewrite(info(n), rewrite(n), deadline) for n in every))
    finally:
        for node in unknown:
            await node.disconnect()


async def _caught_up(
    client: RedisCluster, primary: ClusterNode, replica: ClusterNode, offset: int, deadline: float
) -> None:
    """Until ``primary`` reports ``replica`` has acknowledged its stream up to ``offset``."""
    while True:
        _role, _offset, acked = await client.execute_command("ROLE", target_nodes=primary)
        if any(int(p) == replica.port and h == replica.host and int(a) >= offset for h, p, a in acked):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise RuntimeError(f"the replica {replica.name} did not catch up with its primary in time")
        await asyncio.sleep(0.1)


async def _rewrite(info: Info, rewrite: Command, deadline: float) -> None:
    """The rewrite on one Redis (node), by its ``info("persistence")`` and BGREWRITEAOF."""
    if (await info()).get("aof_enabled") != 1:
        return  # no AOF to rewrite (an RDB-only or in-memory Redis)
    loop = asyncio.get_running_loop()
    while True:  # a rewrite already running would refuse ours: wait for it first
        state = await info()
        if not state["aof_rewrite_in_progress"]:
            break
        if loop.time() > deadline:
            raise RuntimeError("an AOF rewrite already running did not end in time")
        await asyncio.sleep(0.1)
    await rewrite()
    while True:
        state = await info()
        if not state["aof_rewrite_in_progress"] and not state["aof_rewrite_scheduled"]:
            if state["aof_last_bgrewrite_status"] != "ok":
                raise RuntimeError("redis could not rewrite the append-only file; see its log")
            return
        if loop.time() > deadline:
            raise RuntimeError("the AOF rewrite did not end in time")
        await asyncio.sleep(0.1)
