"""Relays notifications from account outboxes to one stream other parts consume.

Ledger scripts detect a crossing (low balance, 80% or 100% of a bundle used, a bundle
expired) exactly once, atomically with the change, and append it to the account's
outbox ``{a:ID}:out``, a key in the account's own hash slot. The relay copies outbox
entries to the stream ``stream:notifications`` and then trims what it copied, so a
crash in between repeats entries rather than losing them: delivery is at least once
and each entry carries its account and time so consumers can drop repeats. A request
whose reply shows a non-empty outbox wakes the relay for that account; the answer to
the request does not wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as aioredis

from charging import keys, metrics
from charging.errors import StorageUnavailable
from charging.store import storage_errors

log = logging.getLogger("charging.notifications")
STREAM_MAXLEN = 1_000_000


class Notifier:
    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._running: dict[str, asyncio.Task[None]] = {}

    def wake(self, account: str) -> None:
        """Relay this account's outbox soon (once, however often it is woken meanwhile),
        and its pool's, which hears about the pool's buckets."""
        for owner in (account, keys.pool_of(account)):
            if owner is not None and owner not in self._running:
                self._running[owner] = asyncio.create_task(self._relay_logged(owner))

    async def _relay_logged(self, account: str) -> None:
        try:
            await self.relay(account)
        except StorageUnavailable as exc:
            log.warning("notification relay failed", extra={"error": str(exc)})
        finally:
            self._running.pop(account, None)

    async def relay(self, account: str) -> int:
        """Copy the account's outbox to the stream; returns how many entries moved."""
        outbox = keys.outbox(account)
        with storage_errors():
            entries = await self._client.lrange(outbox, 0, -1)
            if not entries:
                return 0
            pipe = self._client.pipeline(transaction=False)
            for entry in entries:
                kind, subject, unit, amount, at_ms = str(entry).split(" ")
                pipe.xadd(
                    keys.NOTIFICATIONS,
                    {
                        "kind": kind,
                        "account": account,
                        "bucket": subject,
                        "unit": unit,
                        "amount": amount,
                        "at_ms": at_ms,
                    },
                    maxlen=STREAM_MAXLEN,
                    approximate=True,
                )
                metrics.NOTIFICATIONS.labels(kind).inc()
            pipe.ltrim(outbox, len(entries), -1)
            await pipe.execute()
        return len(entries)

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

    async def aclose(self) -> None:
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
