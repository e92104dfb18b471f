"""Recurring bundles: a prepaid plan can buy a bundle for the subscriber every period,
from the money balance, when the balance covers it.

Accounts on such plans sit in the renewal index (its shard ``{renew:<n>}:due``,
``due_shards.py``) by the time of their next renewal (the index script is the sweeper's,
see ``due_index.lua``). Periods are
counted from the account's renewal anchor (``renew_anchor``, set once when it is first
scheduled), and each renewal is a bundle purchase whose idempotency key names the
period's start, so running it twice, or again after a crash, buys once. When the
balance does not cover the bundle nothing is bought, the subscriber is notified
(``renewal_failed`` on the notification stream) and the next period is tried as usual.
A renewer that was stopped for several periods buys once for the current period, not
once per missed period.
"""

from __future__ import annotations

import logging

from charging import keys, metrics
from charging.due_shards import adopt_unsharded, take_all
from charging.errors import InvalidRequest, NotFound
from charging.store import storage_errors
from charging.topups import BundlePurchase, TopUps

log = logging.getLogger("charging.renewals")
DAY_MS = 86_400_000


class Renewer:
    def __init__(self, topups: TopUps, *, interval_s: float, batch: int = 200, lease_ms: int = 60_000) -> None:
        self.topups = topups
        self.ctx = topups.ctx
        self.interval_s = interval_s
        self.batch = batch
        self.lease_ms = lease_ms
        self._adopted = False

    async def schedule(self, account_id: str, at_ms: int) -> None:
        """Renew from ``at_ms`` on (the anchor is kept if the account had one)."""
        with storage_errors():
            await self.ctx.ledger.client.execute("HSETNX", keys.account(account_id), "renew_anchor", at_ms)
        await self.ctx.ledger.hint(keys.renew_index(account_id), account_id, at_ms)

    async def renew_once(self) -> int:
        """Renew what is due now; returns the number of renewals attempted."""
        now = self.ctx.clock.now_ms()
        attempted = 0
        if not self._adopted:
            await adopt_unsharded(self.ctx.ledger, keys.UNSHARDED_RENEW, keys.renew_index)
            self._adopted = True
        for shard, account_id, epoch, due in await take_all(
            self.ctx.ledger, keys.RENEW_SHARDS, now, self.lease_ms, self.batch
        ):
            next_ms = await self._renew(account_id, due, now)
            await self.ctx.ledger.settle(shard, account_id, epoch, next_ms)
            attempted += 1 if next_ms else 0
        return attempted

    async def _renew(self, account_id: str, due: int, now: int) -> int:
        """Attempt one renewal; returns when to renew next (0: the plan renews nothing)."""
        account = await self.ctx.directory.read(account_id)
        plan = self.ctx.catalogs.current.plans.get(account.plan_id)
        version = plan.version_at(now // 1000) if plan else None
        recurring = version.recurring if version else None
        if recurring is None:
            return 0
        period = recurring.period_days * DAY_MS
        with storage_errors():
            anchor_text = await self.ctx.ledger.client.execute("HGET", keys.account(account_id), "renew_anchor")
        anchor = int(anchor_text) if anchor_text is not None else due
        # The period we are in (missed periods are not bought one by one).
        start = anchor + max((now - anchor) // period, 0) * period
        purchase = BundlePurchase(
            identity=account.identity,
            bundle_id=recurring.bundle_id,
            channel="operator",
            idempotency_key=f"renew-{recurring.bundle_id}-{start}",
            digest=f"renew:{recurring.bundle_id}:{start}",
            # A postpaid plan's bundle is part of its rental, on the invoice already.
            included=plan is not None and plan.customer_type.value.endswith("POSTPAID"),
        )
        try:
            result = await self.topups.buy_bundle(purchase)
        except (InvalidRequest, NotFound) as exc:
            # The catalog lost the bundle or the subscriber is gone: try next period.
            log.warning("renewal impossible", extra={"error": str(exc)})
            return start + period
        outcome = "renewed" if result.outcome == "OK" else "failed"
        if not result.replayed:
            metrics.RENEWALS.labels(outcome).inc()
            if outcome == "failed" and self.ctx.notifier is not None:
                await self.ctx.notifier.publish(account_id, "renewal_failed", recurring.bundle_id, result.outcome, now)
        return start + period
