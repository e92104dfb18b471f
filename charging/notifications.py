"""Relays notifications from account outboxes to one stream other parts consume.

Ledger scripts detect a crossing (low balance, 80% or 100% of a bundle used, a bundle
expired) exactly once, atomically with the change, and append it to the account's
outbox ``{a:ID}:out``, a key in the account's own hash slot. The relay copies outbox
entries to the stream ``stream:notifications`` and then removes from the outbox's head
exactly the entries it copied (``outbox_trim.lua``), until the outbox is empty. A crash
in between repeats entries rather than losing them, and concurrent relays never remove
an entry they did not copy: delivery is at least once, and each entry carries its
account and time so consumers can drop repeats. A request whose reply shows new outbox
entries wakes the relay for that account; the answer does not wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import redis.asyncio as aioredis

from charging import keys, metrics
from charging.errors import StorageUnavailable
from charging.ledger import OUTBOX_TRIM
from charging.script_args import OutboxTrimArgs
from charging.store import storage_errors

log = logging.getLogger("charging.notifications")
STREAM_MAXLEN = 1_000_000


class Notifier:
    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._running: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()

    def wake(self, account: str) -> None:
        """Relay this account's outbox soon, and its pool's (which hears about the pool's
        buckets). Woken while relaying, it relays once more afterwards."""
        for owner in (account, keys.pool_of(account)):
            if owner is None:
                continue
            if owner in self._running:
                self._again.add(owner)
            else:
                self._running[owner] = asyncio.create_task(self._relay_logged(owner))

    async def _relay_logged(self, account: str) -> None:
        try:
            while True:
                self._again.discard(account)
                await self.relay(account)
                if account not in self._again:
                    break
        except StorageUnavailable as exc:
            log.warning("notification relay failed", extra={"error": str(exc)})
        finally:
            self._running.pop(account, None)

    async def relay(self, account: str, batch: int = 100) -> int:
        """Copy the account's outbox to the stream until it is empty; returns how many
        entries were copied."""
        return await self.relay_outbox(keys.outbox(account), account, batch)

    async def relay_outbox(self, outbox: str, account: str, batch: int = 100) -> int:
        """The same for any outbox (billing's ``{bill}:out``), entries named after ``account``."""
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
        """Wait until every relay woken so far has finished, with the passes it was woken
        again for: then the stream holds every notification made before the call."""
        while self._running:
            await asyncio.wait(list(self._running.values()))

    async def aclose(self) -> None:
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
