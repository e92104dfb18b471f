"""Supervision of reservations (a session not refreshed in time gives its units back)
and of bucket expiry (an expired bucket's remaining amount is recorded and notified).

INITIAL requests put the account into the sweeper's index (its shard ``{sweep:<n>}:due``,
``due_shards.py``) with the session's deadline, in the same round trip as the request. The sweeper takes the
accounts that are due (leased, so several server processes share the work), runs
``sweep.lua`` on each, which returns every expired reservation to the balance exactly
and closes the session, records expired buckets, and reschedules the account at its
next session deadline or bucket expiry. Bundle purchases put the account in the index
at the bucket's expiry. A pass walks every shard; the first pass of a process moves an
index of before the shards into them.
"""

from __future__ import annotations

import logging

from charging import keys, metrics
from charging.clock import Clock
from charging.due_shards import adopt_unsharded, take_all
from charging.ledger import Ledger
from charging.notifications import Notifier

log = logging.getLogger("charging.sweeper")


class Sweeper:
    def __init__(
        self,
        ledger: Ledger,
        clock: Clock,
        *,
        interval_s: float,
        batch: int,
        lease_ms: int = 30_000,
        notifier: Notifier | None = None,
        records: bool = True,
    ) -> None:
        self.ledger = ledger
        self.notifier = notifier
        self.clock = clock
        self.interval_s = interval_s
        self.batch = batch
        self.lease_ms = lease_ms
        self.records = records  # a usage record per released session (cdrs.py layout 'w')
        self._adopted = False

    async def sweep_once(self) -> int:
        """Release what is due now; returns the number of sessions released."""
        now = self.clock.now_ms()
        released = 0
        if not self._adopted:
            await adopt_unsharded(self.ledger, keys.UNSHARDED_SWEEP, keys.sweep_index)
            self._adopted = True
        for shard, account, epoch, _due in await take_all(
            self.ledger, keys.SWEEP_SHARDS, now, self.lease_ms, self.batch
        ):
            result = await self.ledger.sweep_account(account, now, self.batch, records=self.records)
            released += result.sessions
            if result.sessions:
                metrics.SESSIONS_CLOSED.labels("supervision").inc(result.sessions)
                metrics.SWEPT_MICROS.inc(result.money)
            if result.outbox and self.notifier is not None:
                self.notifier.wake(account)
            # A full batch may have left more due sessions: look again at once.
            next_look = now if result.sessions == self.batch else result.next_deadline_ms
            await self.ledger.settle(shard, account, epoch, next_look)
        if released:
            log.info("released expired reservations", extra={"sessions": released})
        return released

    async def sweep_due(self) -> None:
        """One pass of the ``sweeper`` job: release in batches until nothing is due."""
        while await self.sweep_once() >= self.batch:
            pass
