"""Bundles and buckets end to end: purchase, consumption order, restrictions, expiry,
thresholds and notifications, through gRPC on a real Redis."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from charging import keys
from charging.catalogs import read_catalog_file
from charging.clock import ManualClock
from charging.server import App
from charging.v1 import admin_pb2, charging_pb2, common_pb2, topup_pb2
from tests.conftest import (
    INITIAL,
    TERMINATE,
    UPDATE,
    Stubs,
    balance,
    notifications,
    redis_client,
    session_request,
    set_time,
    sms_request,
)
from tests.test_sessions import ledger_is_consistent

MSISDN = "491700000001"
WHO = common_pb2.SubscriberId(msisdn=MSISDN)


def small_bundles() -> dict[str, Any]:
    doc = read_catalog_file("")
    doc["version"] = "test-buckets"
    doc["bundles"] += [
        {"id": "voice-2", "currency": "EUR", "price_micros": 100_000, "validity_days": 30, "priority": 10,
         "buckets": [{"unit": "TIME", "amount": 120, "services": ["voice"], "zones": ["national_mobile"]}]},
        {"id": "voice-2-first", "currency": "EUR", "price_micros": 100_000, "validity_days": 30, "priority": 1,
         "buckets": [{"unit": "TIME", "amount": 120, "services": ["voice"]}]},
        {"id": "sms-10", "currency": "EUR", "price_micros": 100_000, "validity_days": 30, "priority": 10,
         "buckets": [{"unit": "SERVICE_SPECIFIC", "amount": 10, "services": ["sms"]}]},
        {"id": "usd-pack", "currency": "USD", "price_micros": 1, "validity_days": 1,
         "buckets": [{"unit": "SERVICE_SPECIFIC", "amount": 1, "services": ["sms"]}]},
    ]  # fmt: skip
    return doc


@pytest.fixture
async def shop(stubs: Stubs, clock: ManualClock) -> Stubs:
    set_time(clock, "2026-11-26T11:00:00+01:00")  # Thursday, peak
    await stubs.admin.LoadCatalog(admin_pb2.CatalogDocument(json=json.dumps(small_bundles())))
    await stubs.subscriber(MSISDN, balance=10_000_000, plan="mobile-prepaid")
    return stubs


async def buy(stubs: Stubs, bundle: str, key: str) -> topup_pb2.BuyBundleAnswer:
    return await stubs.topup.BuyBundle(
        topup_pb2.BuyBundleRequest(subscriber=WHO, bundle_id=bundle, channel=topup_pb2.CHANNEL_APP, idempotency_key=key)
    )


def call(sid: str, kind: int, n: int, called: str = "491711234567", **units: object) -> charging_pb2.SessionRequest:
    return session_request(sid, kind, n, [{"rating_group": 10, **units}], called_party=called)


async def test_buying_a_bundle_is_idempotent_and_needs_the_money(shop: Stubs) -> None:
    a = await buy(shop, "voice-100", "k1")
    assert a.result == topup_pb2.PURCHASE_RESULT_PURCHASED
    assert a.balance.balance_micros == 10_000_000 - 3_000_000
    again = await buy(shop, "voice-100", "k1")
    assert again.replayed and again.bucket_ids == a.bucket_ids
    b = await balance(shop)
    assert b.balance_micros == 7_000_000
    assert [(x.unit, x.amount, list(x.services)) for x in b.buckets] == [(common_pb2.UNIT_KIND_TIME, 6000, ["voice"])]
    for key in ("k2", "k3"):
        await buy(shop, "voice-100", key)
    short = await buy(shop, "voice-100", "k4")  # 1 EUR left
    assert short.result == topup_pb2.PURCHASE_RESULT_INSUFFICIENT_BALANCE
    assert (await balance(shop)).balance_micros == 1_000_000
    assert (await buy(shop, "usd-pack", "k5")).result == topup_pb2.PURCHASE_RESULT_CURRENCY_MISMATCH
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await buy(shop, "no-such-bundle", "k6")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "bundle_id" in (err.value.details() or "")


async def test_a_call_uses_the_bundle_before_money(shop: Stubs, redis_url: str) -> None:
    await buy(shop, "voice-100", "k1")
    a = await shop.charging.ChargeSession(call("c", INITIAL, 0, requested={}))
    assert a.rating_groups[0].granted.time_s == 300
    b = await balance(shop)
    assert (b.reserved_micros, b.buckets[0].reserved) == (0, 300)
    t = await shop.charging.ChargeSession(call("c", TERMINATE, 1, used={"time_s": 90}))
    assert t.rating_groups[0].cost_micros == 0
    b = await balance(shop)
    assert (b.balance_micros, b.buckets[0].amount, b.buckets[0].reserved) == (7_000_000, 6000 - 90, 0)
    ledger_is_consistent(redis_url)


async def test_a_bucket_whose_id_holds_a_colon_is_reserved_used_and_released(shop: Stubs, redis_url: str) -> None:
    # Catalogs before the schema's bundle id pattern allowed ':' in bundle ids; their
    # buckets are still in Redis and reservation records name them as "<id>:<units>".
    await buy(shop, "voice-100", "k1")
    account = (await balance(shop)).account_id
    r = redis_client(redis_url)
    stored: dict[str, str] = r.hgetall(keys.buckets(account))  # type: ignore[assignment]
    (old_id, packed), *_ = stored.items()
    r.hdel(keys.buckets(account), old_id)
    r.hset(keys.buckets(account), f"legacy:{old_id}", packed)
    a = await shop.charging.ChargeSession(call("c", INITIAL, 0, requested={}))
    assert a.rating_groups[0].granted.time_s == 300
    assert (await balance(shop)).buckets[0].reserved == 300
    await shop.charging.ChargeSession(call("c", UPDATE, 1, used={"time_s": 60}, requested={}))
    t = await shop.charging.ChargeSession(call("c", TERMINATE, 2, used={"time_s": 30}))
    assert t.rating_groups[0].cost_micros == 0
    b = await balance(shop)
    assert (b.balance_micros, b.buckets[0].amount, b.buckets[0].reserved) == (7_000_000, 6000 - 90, 0)
    ledger_is_consistent(redis_url)


async def test_restricted_bucket_is_not_used_elsewhere(shop: Stubs) -> None:
    await buy(shop, "voice-100", "k1")
    await shop.charging.ChargeSession(call("i", INITIAL, 0, called="33123456789", requested={}))
    t = await shop.charging.ChargeSession(call("i", TERMINATE, 1, called="33123456789", used={"time_s": 60}))
    assert t.rating_groups[0].cost_micros == 300_000
    assert (await balance(shop)).buckets[0].amount == 6000


async def test_a_grant_spans_the_bundle_and_then_money(shop: Stubs, app: App, redis_url: str) -> None:
    await buy(shop, "voice-2", "k1")  # 120 s, 0.10 EUR
    a = await shop.charging.ChargeSession(call("s", INITIAL, 0, requested={}))
    assert a.rating_groups[0].granted.time_s == 300
    b = await balance(shop)
    # 120 s from the bundle, 180 s from money: first minute 90000 + 120 s x 1500
    assert (b.buckets[0].reserved, b.reserved_micros) == (120, 90_000 + 120 * 1_500)
    t = await shop.charging.ChargeSession(call("s", TERMINATE, 1, used={"time_s": 200}))
    # 120 s from the bundle; the other 80 s are money: first minute + 20 s
    assert t.rating_groups[0].cost_micros == 90_000 + 20 * 1_500
    b = await balance(shop)
    assert (b.buckets[0].amount, b.buckets[0].reserved, b.reserved_micros) == (0, 0, 0)
    assert b.balance_micros == 10_000_000 - 100_000 - 120_000
    ledger_is_consistent(redis_url)


async def test_consumption_order_is_priority_then_earliest_expiry(shop: Stubs, clock: ManualClock) -> None:
    await buy(shop, "voice-2", "k1")
    clock.advance(seconds=3600)
    await buy(shop, "voice-2", "k2")  # same priority, expires an hour later
    await buy(shop, "voice-2-first", "k3")  # priority 1: first of all
    await shop.charging.ChargeSession(call("o", INITIAL, 0, requested={"time_s": 60}))
    await shop.charging.ChargeSession(call("o", TERMINATE, 1, used={"time_s": 180}))
    amounts = {
        b.id.split(".")[0] + ":" + str(b.expiry_time - b.start_time): b.amount for b in (await balance(shop)).buckets
    }
    by_id = {b.id: b.amount for b in (await balance(shop)).buckets}
    assert amounts  # ids are <bundle>.<n>
    assert by_id == {"voice-2.1": 60, "voice-2.2": 120, "voice-2-first.3": 0}


async def test_expired_buckets_are_not_used_and_are_recorded(
    shop: Stubs, clock: ManualClock, redis_url: str, app: App
) -> None:
    await buy(shop, "voice-2", "k1")
    clock.advance(seconds=30 * 86_400 + 1)
    await shop.charging.ChargeSession(call("x", INITIAL, 0, requested={"time_s": 60}))
    t = await shop.charging.ChargeSession(call("x", TERMINATE, 1, used={"time_s": 60}))
    assert t.rating_groups[0].cost_micros == 45_000  # money at the holiday rate (26 December)
    assert list((await balance(shop)).buckets) == []
    r = redis_client(redis_url)
    assert r.hget(keys.account("1"), "expired_1") == "120"
    entries = await notifications(app, r)
    assert [e["kind"] for e in entries] == ["bundle_expired"]
    assert (entries[0]["unit"], entries[0]["amount"]) == ("1", "120")
    r.close()


async def test_sms_from_a_bundle_and_usage_thresholds_notify_once(shop: Stubs, redis_url: str, app: App) -> None:
    await buy(shop, "sms-10", "k1")
    r = redis_client(redis_url)
    for n in range(8):
        a = await shop.charging.ChargeEvent(sms_request(f"s{n}"))
        assert (a.result_code, a.cost_micros) == (2001, 0)
    assert [e["kind"] for e in await notifications(app, r)] == ["bundle_80"]
    for n in range(8, 11):
        await shop.charging.ChargeEvent(sms_request(f"s{n}"))
    kinds = [e["kind"] for e in await notifications(app, r)]
    assert kinds == ["bundle_80", "bundle_100"]
    b = await balance(shop)
    assert b.buckets[0].amount == 0
    assert b.balance_micros == 10_000_000 - 100_000 - 90_000  # the 11th SMS is money
    r.close()


async def test_low_balance_notifies_once_per_crossing(stubs: Stubs, redis_url: str, app: App) -> None:
    await stubs.subscriber(MSISDN, balance=1_100_000)
    r = redis_client(redis_url)
    for n in range(3):  # 1.05, 1.00, 0.95 EUR: crosses below 1 EUR once
        await stubs.charging.ChargeEvent(sms_request(f"e{n}"))
    await stubs.charging.ChargeEvent(sms_request("e3"))
    entries = await notifications(app, r)
    assert [e["kind"] for e in entries] == ["low_balance"]
    await stubs.topup.Recharge(
        topup_pb2.RechargeRequest(
            subscriber=WHO, amount_micros=5_000_000, channel=topup_pb2.CHANNEL_BANK, idempotency_key="t"
        )
    )
    for n in range(2):  # back above the threshold: no new notification
        await stubs.charging.ChargeEvent(sms_request(f"f{n}"))
    assert [e["kind"] for e in await notifications(app, r)] == ["low_balance"]
    # one big debit from above the threshold straight below it notifies again
    big = sms_request("big")
    big.requested.service_specific_units = 100
    await stubs.charging.ChargeEvent(big)
    assert [e["kind"] for e in await notifications(app, r)] == ["low_balance", "low_balance"]
    r.close()


async def test_supervision_returns_reserved_bucket_units(shop: Stubs, clock: ManualClock, app: App) -> None:
    await buy(shop, "voice-100", "k1")
    await shop.charging.ChargeSession(call("sv", INITIAL, 0, requested={}))
    assert (await balance(shop)).buckets[0].reserved == 300
    clock.advance(seconds=2 * 3600 + 1)
    assert app.sweeper is not None
    assert await app.sweeper.sweep_once() == 1
    b = await balance(shop)
    assert (b.buckets[0].amount, b.buckets[0].reserved) == (6000, 0)
    late = await shop.charging.ChargeSession(call("sv", UPDATE, 1, used={"time_s": 10}))
    assert late.result_code == 5002


async def test_the_sweeper_records_expiry_without_any_other_activity(
    shop: Stubs, clock: ManualClock, app: App, redis_url: str
) -> None:
    await buy(shop, "voice-2", "k1")
    assert app.sweeper is not None
    assert await app.sweeper.sweep_once() == 0  # not expired yet: nothing recorded
    r = redis_client(redis_url)
    assert r.hget(keys.account("1"), "expired_1") is None
    clock.advance(seconds=30 * 86_400)
    await app.sweeper.sweep_once()
    assert r.hget(keys.account("1"), "expired_1") == "120"
    assert r.hlen(keys.buckets("1")) == 0
    assert [e["kind"] for e in await notifications(app, r)] == ["bundle_expired"]
    assert sum(r.zcard(due) for due, _ in keys.SWEEP_SHARDS) == 0  # nothing left to look after
    r.close()


async def test_a_grant_from_a_bucket_is_valid_until_the_bucket_expires_and_usage_within_it_is_covered(
    shop: Stubs, clock: ManualClock, redis_url: str
) -> None:
    await buy(shop, "voice-2-first", "k1")  # 120 s, expires in 30 days
    clock.advance(seconds=30 * 86_400 - 30)  # 30 s before it expires
    a = await shop.charging.ChargeSession(call("v", INITIAL, 0, requested={"time_s": 120}))
    assert (a.rating_groups[0].granted.time_s, a.rating_groups[0].validity_time_s) == (120, 30)
    clock.advance(seconds=60)  # the report comes after the expiry
    u = await shop.charging.ChargeSession(call("v", TERMINATE, 1, used={"time_s": 60}))
    assert u.rating_groups[0].cost_micros == 0  # the reserved bucket units still cover it
    b = await balance(shop)
    assert (b.balance_micros, list(b.buckets)) == (10_000_000 - 100_000, [])
    r = redis_client(redis_url)
    assert r.hget(keys.account("1"), "expired_1") == "60"  # what was left is recorded
    r.close()
