"""Corporate shared balances: members draw on their pool's buckets, atomically, with all
keys of a pool in one Redis Cluster slot."""

from __future__ import annotations

import asyncio
import json

from redis.crc import key_slot

from charging import keys
from charging.clock import ManualClock
from charging.server import App
from charging.v1 import admin_pb2, common_pb2, topup_pb2
from tests.conftest import INITIAL, TERMINATE, Stubs, notifications, redis_client, session_request, set_time
from tests.test_buckets import small_bundles
from tests.test_ledger_invariants import check

COMPANY, ALICE, BOB = "491700000100", "491700000101", "491700000102"


def who(msisdn: str) -> common_pb2.SubscriberId:
    return common_pb2.SubscriberId(msisdn=msisdn)


async def buckets(stubs: Stubs, msisdn: str) -> list[topup_pb2.Bucket]:
    return list((await stubs.topup.GetBalance(topup_pb2.BalanceRequest(subscriber=who(msisdn)))).buckets)


async def setup(stubs: Stubs, clock: ManualClock) -> tuple[str, str, str]:
    set_time(clock, "2026-11-26T11:00:00+01:00")
    await stubs.admin.LoadCatalog(admin_pb2.CatalogDocument(json=json.dumps(small_bundles())))
    company = await stubs.subscriber(COMPANY, balance=20_000_000, plan="mobile-postpaid")
    members = []
    for msisdn in (ALICE, BOB):
        sub = await stubs.admin.CreateSubscriber(
            admin_pb2.CreateSubscriberRequest(
                msisdn=msisdn,
                plan_id="mobile-postpaid",
                initial_balance_micros=1_000_000,
                pool_account_id=company.account_id,
            )
        )
        assert sub.pool_account_id == company.account_id
        members.append(sub.account_id)
    await stubs.topup.BuyBundle(
        topup_pb2.BuyBundleRequest(
            subscriber=who(COMPANY), bundle_id="voice-100", channel=topup_pb2.CHANNEL_OPERATOR, idempotency_key="pool"
        )
    )
    return company.account_id, members[0], members[1]


def call(sid: str, kind: int, n: int, msisdn: str, **units: object):
    return session_request(sid, kind, n, [{"rating_group": 10, **units}], msisdn=msisdn, called_party="491711234567")


async def test_members_draw_on_the_pool_bucket(stubs: Stubs, clock: ManualClock, redis_url: str) -> None:
    company, alice, bob = await setup(stubs, clock)
    assert (alice, bob) == (f"{company}.1", f"{company}.2")
    await asyncio.gather(
        stubs.charging.ChargeSession(call("a", INITIAL, 0, ALICE, requested={})),
        stubs.charging.ChargeSession(call("b", INITIAL, 0, BOB, requested={})),
    )
    pool = (await buckets(stubs, COMPANY))[0]
    assert (pool.amount, pool.reserved) == (6000, 600)
    await stubs.charging.ChargeSession(call("a", TERMINATE, 1, ALICE, used={"time_s": 90}))
    await stubs.charging.ChargeSession(call("b", TERMINATE, 1, BOB, used={"time_s": 30}))
    pool = (await buckets(stubs, COMPANY))[0]
    # 60/1 rounding: 90 s and 60 s (the first minute is a block)
    assert (pool.amount, pool.reserved) == (6000 - 90 - 60, 0)
    for msisdn in (ALICE, BOB):
        assert (await stubs.balance(msisdn)).balance_micros == 1_000_000  # own money untouched
    for account in (company, alice, bob):
        check(redis_url, account, overrun=False)


async def test_a_members_own_bucket_of_higher_priority_goes_first(stubs: Stubs, clock: ManualClock) -> None:
    await setup(stubs, clock)
    await stubs.topup.BuyBundle(
        topup_pb2.BuyBundleRequest(
            subscriber=who(ALICE), bundle_id="voice-2-first", channel=topup_pb2.CHANNEL_APP, idempotency_key="own"
        )
    )
    await stubs.charging.ChargeSession(call("a", INITIAL, 0, ALICE, requested={"time_s": 60}))
    await stubs.charging.ChargeSession(call("a", TERMINATE, 1, ALICE, used={"time_s": 150}))
    assert [b.amount for b in await buckets(stubs, ALICE)] == [0]
    assert [b.amount for b in await buckets(stubs, COMPANY)] == [6000 - 30]


async def test_pool_thresholds_notify_the_pool_owner(
    stubs: Stubs, clock: ManualClock, redis_url: str, app: App
) -> None:
    company, _alice, _bob = await setup(stubs, clock)
    await stubs.charging.ChargeSession(call("a", INITIAL, 0, ALICE, requested={"time_s": 60}))
    await stubs.charging.ChargeSession(call("a", TERMINATE, 1, ALICE, used={"time_s": 4900}))
    r = redis_client(redis_url)
    entries = [e for e in await notifications(app, r) if e["kind"].startswith("bundle_")]
    assert [(e["kind"], e["account"]) for e in entries] == [("bundle_80", company)]
    r.close()


async def test_supervision_returns_pool_reservations(stubs: Stubs, clock: ManualClock, app: App) -> None:
    await setup(stubs, clock)
    await stubs.charging.ChargeSession(call("a", INITIAL, 0, ALICE, requested={}))
    assert (await buckets(stubs, COMPANY))[0].reserved == 300
    clock.advance(seconds=2 * 3600 + 1)
    assert app.sweeper is not None
    assert await app.sweeper.sweep_once() == 1
    assert (await buckets(stubs, COMPANY))[0].reserved == 0


def test_a_pool_and_its_members_share_one_cluster_slot() -> None:
    slot = key_slot(keys.buckets("7").encode())
    for member in ("7.1", "7.25"):
        for key in (keys.account(member), keys.session(member, "s"), keys.buckets(member), keys.outbox(member)):
            assert key_slot(key.encode()) == slot
    assert keys.account("7.1") != keys.account("7")


async def test_only_standalone_accounts_can_be_pools(stubs: Stubs, clock: ManualClock) -> None:
    import grpc
    import pytest

    company, alice, _bob = await setup(stubs, clock)
    for pool in (alice, "999"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.admin.CreateSubscriber(
                admin_pb2.CreateSubscriberRequest(
                    msisdn="491700000199", plan_id="mobile-postpaid", pool_account_id=pool
                )
            )
        assert "pool_account_id" in (err.value.details() or "")
    assert company
