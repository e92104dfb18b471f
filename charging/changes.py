"""Changes that other processes cache, applied everywhere before the change is answered.

Every server process (the workers of a supervisor, servers on other hosts) rates requests
against the running catalog it keeps in memory, so that a charging request costs one Redis
round trip. The other in-process caches need nothing of this: the subscriber directory's
identity -> account and account -> plan entries are hints that every ledger script checks
(``routing.py``: UNKNOWN, PLAN), a line's state is read by the script from the account
hash, and the coverage table is read at its ``current`` pointer on each use. A catalog
loaded through one process, though, would reach the others only at their next ``catalog``
job pass, and a new session opened there meanwhile would be rated, and pinned, at the old
prices.

So a change is announced: after ``catalog:current`` moved, the loading process PUBLISHes
``<document> <version> <change id>`` on ``changes`` (``keys.CHANGES``) and waits until as
many processes as received it have applied it (each INCRs ``changes:ack:<document>:<change
id>`` after its refresh), up to ``CHARGING_CHANGE_ACK_TIMEOUT_S``; only then does
``LoadCatalog`` answer. A request sent after the answer is rated with the new catalog in
every process. Each process applies changes in the order they were published.

A process that is not subscribed does not count among the receivers, so it must not
trust its cache: ``live`` is false from a lost subscription until it is subscribed again
*and* has re-read every document (changes published meanwhile are caught by that read),
and while it is false ``CatalogBook.fresh`` reads the current pointer before each request
(one GET; Redis is likely unreachable then anyway). A process that received a change and
has not confirmed it within the timeout is logged (``charging_change_ack_timeouts_total``):
it is alive and subscribed but stuck, which the operator must look at.

On Redis Cluster, PUBLISH counts only the receivers connected to the node it was sent
to, so there the channel is a sharded one (Redis 7): SSUBSCRIBE through redis-py's
``ClusterPubSub`` connects to the primary of the channel's slot, and SPUBLISH, sent to that
primary, answers how many processes received the change, wherever they run. After a
failover the subscription moves with the slot (redis-py re-subscribes on the new
primary); a change announced in that window is counted among fewer receivers, and a
process that missed it picks the catalog up at its next ``catalog`` job pass. A single
server keeps PUBLISH/SUBSCRIBE.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from charging import keys, metrics
from charging.store import storage_errors

log = logging.getLogger("charging.changes")

ACK_TTL_S = 300
RESUBSCRIBE_FIRST_S = 0.1
RESUBSCRIBE_MAX_S = 5.0

Apply = Callable[[], Awaitable[object]]


class ChangeFeed:
    def __init__(self, client: aioredis.Redis, ack_timeout_s: float) -> None:
        self._client = client
        self.ack_timeout_s = ack_timeout_s
        self._appliers: dict[str, Apply] = {}
        self.live = False
        self._live = asyncio.Event()
        self._sharded = isinstance(client, RedisCluster)  # SPUBLISH/SSUBSCRIBE on a cluster

    def on(self, document: str, apply: Apply) -> None:
        """Re-read ``document`` with ``apply`` whenever another process changes it."""
        self._appliers[document] = apply

    async def wait_live(self) -> None:
        await self._live.wait()

    async def run(self) -> None:
        """Follow the channel until cancelled, subscribing again after a lost connection."""
        failures = 0
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                if self._sharded:
                    await pubsub.ssubscribe(keys.CHANGES)
                else:
                    await pubsub.subscribe(keys.CHANGES)
                for apply in self._appliers.values():
                    await apply()  # what changed while not subscribed
                self.live = True
                self._live.set()
                failures = 0
                while True:
                    message = await self._next(pubsub)
                    if message is not None:
                        await self._applied(str(message["data"]))
            except Exception as exc:
                failures += 1
                if failures == 1:
                    log.warning("change feed lost; refreshing before each request", extra={"error": str(exc)[:200]})
            finally:
                self.live = False
                self._live.clear()
                await asyncio.shield(pubsub.aclose())  # type: ignore[no-untyped-call]
            await asyncio.sleep(min(RESUBSCRIBE_FIRST_S * float(1 << min(failures, 16)), RESUBSCRIBE_MAX_S))

    async def _next(self, pubsub: Any) -> dict[str, Any] | None:
        """The next change on the channel, or None after a second without one."""
        if self._sharded:
            message = await pubsub.get_sharded_message(ignore_subscribe_messages=True, timeout=1.0)
        else:
            message = await pubsub.get_message(timeout=1.0)
        return cast(dict[str, Any] | None, message)

    async def _applied(self, data: str) -> None:
        document, _version, change = [*data.split(" "), "", ""][:3]
        apply = self._appliers.get(document)
        if apply is None or not change:
            return
        await apply()
        ack = keys.change_acks(document, change)
        with storage_errors():
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.incr(ack)
                pipe.expire(ack, ACK_TTL_S)
                await pipe.execute()

    async def announce(self, document: str, version: str) -> bool:
        """Tell every process that ``document`` changed to ``version`` and wait until each
        that heard it has applied it; False when some did not within the timeout."""
        change = f"{version}.{secrets.token_hex(6)}"
        ack = keys.change_acks(document, change)
        with storage_errors():
            publish = self._client.spublish if self._sharded else self._client.publish
            receivers = int(await publish(keys.CHANGES, f"{document} {version} {change}"))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ack_timeout_s
        while True:
            with storage_errors():
                done = int(await self._client.get(ack) or 0)
            if done >= receivers:
                return True
            if loop.time() >= deadline:
                metrics.CHANGE_ACK_TIMEOUTS.labels(document).inc()
                log.warning(
                    "a change was not confirmed by every process",
                    extra={"document": document, "receivers": receivers, "confirmed": done},
                )
                return False
            await asyncio.sleep(0.005)
