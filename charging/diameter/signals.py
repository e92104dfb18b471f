"""Account changes that Diameter peers must hear about, whichever process made them.

    credit   a top-up or a bundle bought: sessions of the account that got a
             Final-Unit-Indication are re-authorized (RAR), so the PGW asks for a new
             grant and lifts its redirect
    blocked  the line barred, suspended or terminated: its sessions are aborted (ASR)

The process that made the change publishes ``<kind> <account>`` on the Redis pub/sub
channel ``keys.SIGNALS`` (after the change is stored; a failed publish is logged and
counted, the change stands). Every Diameter door listens, and the one holding the
session's peer connection sends the request, so it works with several server processes.
Pub/sub delivers at most once: a lost signal costs promptness only, never correctness,
because the next CCR-U of the session is answered by the core from the account as it is
(a new grant after a top-up, 4010 on a barred line). Clients that ignore RAR (Open5GS
answers it and does nothing) or do not know ASR get the right answers all the same.
"""

from __future__ import annotations

import logging
from typing import Literal

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from charging.diameter import keys, metrics
from charging.subscribers import Account, Directory, Identity
from charging.topups import BundlePurchase, PurchaseResult, Recharge, RechargeResult, TopUps

log = logging.getLogger("charging.diameter")

Kind = Literal["credit", "blocked"]
# Terminated lines are "barred" in charging; a barred-outgoing line keeps incoming service.
BLOCKED_STATUSES = frozenset({"barred", "suspended"})


async def publish(client: aioredis.Redis, kind: Kind, account: str) -> None:
    try:
        await client.publish(keys.SIGNALS, f"{kind} {account}")
        metrics.SIGNALS.labels(kind, "published").inc()
    except redis_errors.RedisError as exc:
        metrics.SIGNALS.labels(kind, "lost").inc()
        log.warning("diameter: signal not published", extra={"kind": kind, "error": str(exc)})


def parse(message: str) -> tuple[Kind, str] | None:
    kind, _, account = message.partition(" ")
    if kind == "credit" and account:
        return "credit", account
    if kind == "blocked" and account:
        return "blocked", account
    return None


class SignallingTopUps(TopUps):
    """Top-ups and bundle purchases that say ``credit`` once they are done (not for a
    replayed request: its first execution said it)."""

    def __init__(self, *args: object, signals: aioredis.Redis, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._signals = signals

    async def recharge(self, req: Recharge) -> RechargeResult:
        result = await super().recharge(req)
        if not result.replayed:
            await publish(self._signals, "credit", result.account_id)
        return result

    async def buy_bundle(self, req: BundlePurchase) -> PurchaseResult:
        result = await super().buy_bundle(req)
        if result.outcome == "OK" and not result.replayed:
            await publish(self._signals, "credit", result.account_id)
        return result


class SignallingDirectory(Directory):
    """The subscriber directory, saying ``blocked`` when a line stops being active."""

    async def set_status(self, identity: Identity, status: str) -> Account:
        account = await super().set_status(identity, status)
        if status in BLOCKED_STATUSES:
            await publish(self._client, "blocked", account.account_id)
        return account
