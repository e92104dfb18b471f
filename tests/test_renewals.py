"""Recurring bundles of prepaid plans: bought each period when the money covers them."""

from __future__ import annotations

import pytest

from charging import keys
from charging.clock import ManualClock
from charging.errors import StorageUnavailable
from charging.server import App
from charging.v1 import common_pb2, topup_pb2
from tests.conftest import Stubs, balance, notifications, redis_client

MSISDN = "491700000001"
WHO = common_pb2.SubscriberId(msisdn=MSISDN)
DAY = 86_400
PRICE = 5_000_000  # data-1gb


async def test_a_recurring_bundle_renews_each_period_when_money_covers_it(
    stubs: Stubs, app: App, clock: ManualClock, redis_url: str
) -> None:
    assert app.renewer is not None
    await stubs.subscriber(MSISDN, balance=12_000_000, plan="mobile-prepaid-data")
    assert await app.renewer.renew_once() == 1  # the first period starts at activation
    b = await balance(stubs)
    assert b.balance_micros == 12_000_000 - PRICE
    assert [x.amount for x in b.buckets] == [1024**3]
    assert await app.renewer.renew_once() == 0  # not due again yet

    clock.advance(seconds=30 * DAY)
    assert await app.renewer.renew_once() == 1
    b = await balance(stubs)
    # the first period's bucket has just expired; the new one replaces it
    assert (b.balance_micros, [x.amount for x in b.buckets]) == (12_000_000 - 2 * PRICE, [1024**3])

    clock.advance(seconds=30 * DAY)  # 2 EUR left: not enough
    assert await app.renewer.renew_once() == 1
    b = await balance(stubs)
    assert b.balance_micros == 2_000_000
    r = redis_client(redis_url)
    failed = [e for e in await notifications(app, r) if e["kind"] == "renewal_failed"]
    assert [(e["bucket"], e["amount"]) for e in failed] == [("data-1gb", "FUNDS")]
    r.close()

    await stubs.topup.Recharge(
        topup_pb2.RechargeRequest(
            subscriber=WHO, amount_micros=10_000_000, channel=topup_pb2.CHANNEL_BANK, idempotency_key="t"
        )
    )
    clock.advance(seconds=30 * DAY)
    assert await app.renewer.renew_once() == 1
    assert (await balance(stubs)).balance_micros == 12_000_000 - PRICE


async def test_missed_periods_are_bought_once_not_once_each(stubs: Stubs, app: App, clock: ManualClock) -> None:
    assert app.renewer is not None
    await stubs.subscriber(MSISDN, balance=50_000_000, plan="mobile-prepaid-data")
    await app.renewer.renew_once()
    clock.advance(seconds=95 * DAY)  # three periods later
    assert await app.renewer.renew_once() == 1
    assert await app.renewer.renew_once() == 0
    assert (await balance(stubs)).balance_micros == 50_000_000 - 2 * PRICE


async def test_plans_without_a_recurring_bundle_are_not_scheduled(stubs: Stubs, app: App, redis_url: str) -> None:
    assert app.renewer is not None
    await stubs.subscriber(MSISDN, balance=50_000_000, plan="mobile-prepaid")
    assert await app.renewer.renew_once() == 0
    r = redis_client(redis_url)
    assert sum(r.zcard(due) for due, _ in keys.RENEW_SHARDS) == 0
    r.close()


async def test_a_renewal_interrupted_before_it_settles_is_not_bought_twice(
    stubs: Stubs, app: App, clock: ManualClock
) -> None:
    assert app.renewer is not None
    await stubs.subscriber(MSISDN, balance=12_000_000, plan="mobile-prepaid-data")
    ledger = app.renewer.ctx.ledger
    settle = ledger.settle

    async def broken_settle(*args: object) -> None:
        raise StorageUnavailable("redis went away")

    ledger.settle = broken_settle  # type: ignore[method-assign,assignment]
    with pytest.raises(StorageUnavailable):
        await app.renewer.renew_once()
    ledger.settle = settle  # type: ignore[method-assign]
    clock.advance(seconds=61)  # the lease runs out: the account is due again
    await app.renewer.renew_once()
    b = await balance(stubs)
    assert (b.balance_micros, len(b.buckets)) == (12_000_000 - PRICE, 1)
