"""Relays notifications from account outboxes to one stream other parts consume.

Ledger scripts detect a crossing (low balance, 80% or 100% of a bundle used, a bundle
expired) exactly once, atomically with the change, and append it to the account's
outbox ``{a:ID}:out``, a key in the account's own hash slot. The relay copies outbox
entries to the stream ``stream:notifications`` and then removes from the outbox's head
exactly the entries it copied (``outbox_trim.lua``), until the outbox is empty. A crash
in between repeats entries rather than losing them, and concurrent relays never remove
an entry they did not copy: delivery is at least once, and each entry carries its
account and time so consumers can drop repeats. A request whose reply shows new outbox
entries wakes the relay for that account; the answer does not wait for it. The relay is
the ``notifications`` job (``charging/jobs.py``): an outbox whose relay failed (Redis
unavailable) stays woken and is relayed again after the job's backoff.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

from charging import keys, metrics
from charging.jobs import Wakeup
from charging.ledger import OUTBOX_TRIM
from charging.script_args import OutboxTrimArgs
from charging.store import storage_errors

STREAM_MAXLEN = 1_000_000
CONCURRENT_RELAYS = 16  # outboxes relayed at once by one pass (each holds a connection)


class Notifier:
    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._woken: set[str] = set()
        self._relaying: set[str] = set()
        self._settled = asyncio.Event()
        self._settled.set()
        self.wakeup = Wakeup()  # the wake source of the ``notifications`` job

    def wake(self, account: str) -> None:
        """Relay this account's outbox soon, and its pool's (which hears about the pool's
        buckets). Woken while relaying, it relays once more afterwards."""
        for owner in (account, keys.pool_of(account)):
            if owner is not None:
                self._woken.add(owner)
        self._settled.clear()
        self.wakeup.wake()

    async def relay_woken(self) -> None:
        """One pass of the ``notifications`` job: relay every outbox woken so far. Those
        whose relay failed stay woken, and the first error fails the pass."""
        owners, self._woken = sorted(self._woken), set()
        self._relaying.update(owners)
        errors: list[BaseException] = []
        try:
            for start in range(0, len(owners), CONCURRENT_RELAYS):
                chunk = owners[start : start + CONCURRENT_RELAYS]
                results = await asyncio.gather(*(self.relay(o) for o in chunk), return_exceptions=True)
                for owner, result in zip(chunk, results, strict=True):
                    if isinstance(result, BaseException):
                        errors.append(result)
                    else:
                        self._relaying.discard(owner)
        finally:
            # Whatever was not relayed (failed, or the pass was cancelled) stays woken.
            self._woken.update(self._relaying)
            self._relaying.clear()
            if not self._woken:
                self._settled.set()
        if errors:
            raise errors[0]

    async def relay(self, account: str, batch: int = 100) -> int:
        """Copy the account's outbox to the stream until it is empty; returns how many
        entries were copied."""
        return await self.relay_outbox(keys.outbox(account), account, batch)

    async def relay_outbox(self, outbox: str, account: str, batch: int = 100) -> int:
        """The same for any outbox (billing's, one per shard: ``{bill.<n>}:out``), entries named after ``account``."""
        moved = 0
        with storage_errors():
            while entries := [str(e) for e in await self._client.lrange(outbox, 0, batch - 1)]:
                pipe = self._client.pipeline(transaction=False)
                for entry in entries:
                    kind, subject, unit, amount, at_ms = entry.split(" ")
                    fields: dict[Any, Any] = {
                        "kind": kind,
                        "account": account,
                        "bucket": subject,
                        "unit": unit,
                        "amount": amount,
                        "at_ms": at_ms,
                    }
                    pipe.xadd(keys.NOTIFICATIONS, fields, maxlen=STREAM_MAXLEN, approximate=True)
                await pipe.execute()
                for entry in entries:
                    metrics.NOTIFICATIONS.labels(entry.split(" ", 1)[0]).inc()
                await OUTBOX_TRIM(self._client, (outbox,), OutboxTrimArgs(tuple(entries)))
                moved += len(entries)
        return moved

    async def publish(self, account: str, kind: str, subject: str, detail: str, at_ms: int) -> None:
        """Add one notification that no ledger script produced (e.g. a failed renewal)."""
        with storage_errors():
            await self._client.xadd(
                keys.NOTIFICATIONS,
                {
                    "kind": kind,
                    "account": account,
                    "bucket": subject,
                    "unit": "",
                    "amount": detail,
                    "at_ms": str(at_ms),
                },
                maxlen=STREAM_MAXLEN,
                approximate=True,
            )
        metrics.NOTIFICATIONS.labels(kind).inc()

    async def idle(self) -> None:
        """Wait until every outbox woken so far has been relayed, with the passes it was
        woken again for: then the stream holds every notification made before the call.
        (Only while the ``notifications`` job runs.)"""
        await self._settled.wait()
