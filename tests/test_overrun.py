"""Usage beyond grants is bounded: a ceiling per report, and an overrun floor below which
usage is recorded as unbilled and the session ends (issue 10 item 2)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import grpc
import pytest
import redis
from prometheus_client import REGISTRY

from charging import keys
from charging.catalogs import read_catalog_file
from charging.clock import ManualClock
from charging.errors import InvalidRequest
from charging.money import MAX_AMOUNT, MAX_UNITS
from charging.rating import UnitKind
from charging.server import App
from charging.settings import Settings
from charging.v1 import admin_pb2, topup_pb2
from tests.conftest import INITIAL, TERMINATE, UPDATE, Stubs, notifications, session_request
from tests.test_sessions import ledger_is_consistent

CONTENT = 50  # money-unit rate of the default plan: 1 micro per micro
# The default plan's largest single grant: 1 TB of data at 10 micros per started KB.
FLOOR = 10**12 // 1024 * 10


def unbilled_metric(unit: str) -> float:
    return REGISTRY.get_sample_value("charging_unbilled_overrun_total", {"unit": unit}) or 0.0


def used_money(sid: str, n: int, micros: int) -> object:
    return session_request(sid, UPDATE, n, [{"rating_group": CONTENT, "used": {"money_micros": micros}}])


async def test_reports_above_the_ceiling_are_refused(stubs: Stubs) -> None:
    await stubs.subscriber(balance=0)
    await stubs.charging.ChargeSession(session_request("h", INITIAL, 0, []))
    for n in range(1, 16):
        a = await stubs.charging.ChargeSession(used_money("h", n, 999_999_999_999_000))
        assert (a.result_code, a.rating_groups[0].result_code) == (2001, 5004)
        assert a.failed_field == "rating_groups[0].used.money_micros"
    assert (await stubs.balance()).balance_micros == 0


async def test_overrun_stops_at_the_floor_and_the_rest_is_unbilled(
    stubs: Stubs, r: redis.Redis, redis_url: str, app: App
) -> None:
    sub = await stubs.subscriber(balance=0)
    before = unbilled_metric("money")
    answers = []
    for n in range(15):
        await stubs.charging.ChargeSession(session_request(f"h{n}", INITIAL, 0, []))
        answers.append(await stubs.charging.ChargeSession(used_money(f"h{n}", 1, 10**9)))
    # nine sessions are billed in full; the tenth reaches the floor: billed up to it, the
    # rest unbilled; nothing more is billed, and those sessions are over
    costs = [a.rating_groups[0].cost_micros for a in answers]
    assert costs == [10**9] * 9 + [FLOOR - 9 * 10**9] + [0] * 5
    assert [a.result_code for a in answers] == [2001] * 9 + [4012] * 6
    assert {a.rating_groups[0].result_code for a in answers[9:]} == {4012}
    for n in range(15):
        a = await stubs.charging.ChargeSession(session_request(f"h{n}", TERMINATE, 2, []))
        assert a.result_code == (2001 if n < 9 else 5002)
    b = await stubs.balance()
    assert (b.balance_micros, b.reserved_micros) == (-FLOOR, 0)
    unbilled = 15 * 10**9 - FLOOR
    assert r.hget(keys.account(sub.account_id), f"unbilled_{int(UnitKind.MONEY)}") == str(unbilled)
    notes = await notifications(app, r)  # every one relayed: none in the outbox, none twice
    assert not r.exists(keys.outbox(sub.account_id))
    amounts = [int(f["amount"]) for f in notes if f["kind"] == "unbilled_overrun"]
    assert sorted(amounts) == sorted([10 * 10**9 - FLOOR] + [10**9] * 5)
    assert unbilled_metric("money") - before == unbilled
    # the balance stays exact: every micro of a top-up counts
    for i, micros in enumerate((1, 2, 3)):
        await stubs.topup.Recharge(
            topup_pb2.RechargeRequest(
                subscriber=session_request("x", INITIAL, 0, []).subscriber,
                amount_micros=micros,
                channel=topup_pb2.CHANNEL_RETAIL,
                idempotency_key=f"k{i}",
            )
        )
    assert (await stubs.balance()).balance_micros == -FLOOR + 6
    ledger_is_consistent(redis_url)


async def test_the_floor_holds_across_concurrent_sessions_and_releases_their_reservations(
    stubs: Stubs, redis_url: str
) -> None:
    await stubs.subscriber(balance=10_000_000)
    for i in range(8):
        a = await stubs.charging.ChargeSession(
            session_request(f"c{i}", INITIAL, 0, [{"rating_group": 10, "requested": {}}])
        )
        assert a.result_code == 2001
    # every session reports a day of voice beyond its grant, at once
    answers = await asyncio.gather(
        *(
            stubs.charging.ChargeSession(
                session_request(f"c{i}", TERMINATE, 1, [{"rating_group": 10, "used": {"time_s": 86_400}}])
            )
            for i in range(8)
        )
    )
    assert all(a.rating_groups[0].result_code == 4012 for a in answers)
    b = await stubs.balance()
    assert b.balance_micros >= -FLOOR
    assert b.reserved_micros == 0
    ledger_is_consistent(redis_url)


async def test_a_floor_set_in_the_settings_applies_to_every_plan(
    settings: Settings, clock: ManualClock, r: redis.Redis
) -> None:
    app = App(dataclasses.replace(settings, overrun_floor_micros=2_000_000), clock=clock, run_background=False)
    await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
    try:
        stubs = Stubs.on(channel)
        sub = await stubs.subscriber(balance=1_000_000)
        before = unbilled_metric("time")
        await stubs.charging.ChargeSession(session_request("f", INITIAL, 0, [{"rating_group": 10, "requested": {}}]))
        a = await stubs.charging.ChargeSession(
            session_request("f", TERMINATE, 1, [{"rating_group": 10, "used": {"time_s": 86_400}}])
        )
        # 1 EUR of balance and 2 EUR below zero pay 30 started minutes of the day
        assert (a.result_code, a.rating_groups[0].cost_micros) == (4012, 3_000_000)
        b = await stubs.balance()
        assert (b.balance_micros, b.reserved_micros) == (-2_000_000, 0)
        assert unbilled_metric("time") - before == 86_400 - 1_800
        assert r.hget(keys.account(sub.account_id), "unbilled_1") == str(86_400 - 1_800)
    finally:
        await channel.close()
        await app.stop()


def test_limits_come_from_settings_and_are_checked() -> None:
    s = Settings.from_env({"CHARGING_MAX_USED_TIME_S": "3600", "CHARGING_OVERRUN_FLOOR_MICROS": "5000000"})
    assert (s.max_used_time_s, s.overrun_floor_micros) == (3600, 5_000_000)
    for name, value in (
        ("CHARGING_MAX_USED_OCTETS", "0"),
        ("CHARGING_OVERRUN_FLOOR_MICROS", str(MAX_AMOUNT + 1)),
        ("CHARGING_OVERRUN_FLOOR_MICROS", "-2"),
    ):
        with pytest.raises(InvalidRequest) as err:
            Settings.from_env({name: value})
        assert err.value.field == name


async def test_a_rating_group_past_max_units_in_one_session_is_unbilled_and_ends_it(
    stubs: Stubs, r: redis.Redis
) -> None:
    sub = await stubs.subscriber(balance=10**9)
    await stubs.charging.ChargeSession(session_request("u", INITIAL, 0, [{"rating_group": 30, "requested": {}}]))
    data = [{"rating_group": 30, "requested": {}, "used": {"total_octets": 1024}}]
    a = await stubs.charging.ChargeSession(session_request("u", UPDATE, 1, data))
    assert (a.result_code, a.rating_groups[0].cost_micros) == (2001, 10)
    # as if the session had gone on for a very long time: 512 bytes short of MAX_UNITS
    session = keys.session(sub.account_id, "u")
    r.hset(session, mapping={"c30": MAX_UNITS - 512, "k30": MAX_UNITS - 512})
    a = await stubs.charging.ChargeSession(session_request("u", UPDATE, 2, data))
    assert (a.result_code, a.rating_groups[0].result_code, a.rating_groups[0].cost_micros) == (4012, 4012, 0)
    assert not r.exists(session)
    assert r.hget(keys.account(sub.account_id), "unbilled_2") == "1024"
    b = await stubs.balance()
    assert (b.balance_micros, b.reserved_micros) == (10**9 - 10, 0)


async def test_running_totals_stop_below_2_53(stubs: Stubs, r: redis.Redis) -> None:
    sub = await stubs.subscriber(balance=0)
    r.hset(keys.account(sub.account_id), "unbilled_4", 2**53 - 10)
    await stubs.charging.ChargeSession(session_request("a", INITIAL, 0, []))
    a = await stubs.charging.ChargeSession(
        session_request("a", UPDATE, 1, [{"rating_group": 30, "used": {"total_octets": 10**12}}])
    )
    assert a.rating_groups[0].cost_micros == FLOOR
    await stubs.charging.ChargeSession(session_request("b", INITIAL, 0, []))
    a = await stubs.charging.ChargeSession(used_money("b", 1, 10**9))
    assert (a.result_code, a.rating_groups[0].cost_micros) == (4012, 0)
    assert r.hget(keys.account(sub.account_id), "unbilled_4") == str(2**53 - 1)


async def test_a_postpaid_usage_aggregate_keeps_its_units_below_2_53(stubs: Stubs, r: redis.Redis) -> None:
    sub = await stubs.subscriber(balance=10**9)
    # a postpaid account in its period P1, whose data aggregate is close to 2**53 units
    r.hset(keys.account(sub.account_id), mapping={"bp": "P1:99999999999", "credit_limit": 0})
    r.hset(keys.usage(sub.account_id), "P1|data|||", f"{2**53 - 10},0,1")
    await stubs.charging.ChargeSession(session_request("p", INITIAL, 0, []))
    a = await stubs.charging.ChargeSession(
        session_request("p", UPDATE, 1, [{"rating_group": 30, "used": {"total_octets": 1_000_001}}])
    )
    assert a.rating_groups[0].cost_micros == 977 * 10
    assert r.hget(keys.usage(sub.account_id), "P1|data|||") == f"{2**53 - 1},9770,2"
    assert r.lrange(keys.usage_records(sub.account_id), 0, -1)[0].split(",")[7:9] == ["1000001", "9770"]


def limited_catalog(limits: dict[str, Any], version: str = "test-plan-limits") -> str:
    """The sample catalog with ``limits`` as the default plan's own usage limits."""
    doc = read_catalog_file("")
    doc["version"] = version
    next(p for p in doc["plans"] if p["id"] == "default")["usage_limits"] = limits
    return json.dumps(doc)


def voice(sid: str, kind: int, n: int, used_s: int | None = None) -> object:
    group: dict[str, Any] = {"rating_group": 10, "requested": {}}
    if used_s is not None:
        group["used"] = {"time_s": used_s}
    return session_request(sid, kind, n, [group])


async def test_a_plan_sets_its_own_ceiling_within_the_servers(stubs: Stubs) -> None:
    await stubs.admin.LoadCatalog(admin_pb2.CatalogDocument(json=limited_catalog({"max_used_time_s": 3600})))
    await stubs.subscriber(balance=100_000_000)
    await stubs.charging.ChargeSession(voice("p", INITIAL, 0))
    a = await stubs.charging.ChargeSession(voice("p", UPDATE, 1, 3601))
    assert (a.rating_groups[0].result_code, a.failed_field) == (5004, "rating_groups[0].used.time_s")
    assert (await stubs.balance()).balance_micros == 100_000_000
    a = await stubs.charging.ChargeSession(voice("p", UPDATE, 2, 3600))
    assert a.rating_groups[0].cost_micros == 6_000_000  # past its grant: billed, then 4012
    assert (await stubs.balance()).balance_micros == 94_000_000
    # a plan cannot widen the server's ceiling (a day of time by default)
    await stubs.admin.LoadCatalog(admin_pb2.CatalogDocument(json=limited_catalog({"max_used_time_s": 10**6}, "wider")))
    await stubs.charging.ChargeSession(voice("q", INITIAL, 0))
    a = await stubs.charging.ChargeSession(voice("q", UPDATE, 1, 86_401))
    assert (a.rating_groups[0].result_code, a.failed_field) == (5004, "rating_groups[0].used.time_s")


async def test_a_plans_floor_replaces_the_default(stubs: Stubs, r: redis.Redis) -> None:
    doc = limited_catalog({"overrun_floor_micros": 1_000_000})
    await stubs.admin.LoadCatalog(admin_pb2.CatalogDocument(json=doc))
    sub = await stubs.subscriber(balance=1_000_000)
    await stubs.charging.ChargeSession(voice("f", INITIAL, 0))
    a = await stubs.charging.ChargeSession(voice("f", TERMINATE, 1, 3600))
    # 1 EUR of balance and 1 EUR below zero pay 20 started minutes; 40 are unbilled
    assert (a.result_code, a.rating_groups[0].cost_micros) == (4012, 2_000_000)
    b = await stubs.balance()
    assert (b.balance_micros, b.reserved_micros) == (-1_000_000, 0)
    assert r.hget(keys.account(sub.account_id), "unbilled_1") == str(3600 - 1200)


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        ({"max_used_time_s": 0}, "plans[0].usage_limits.max_used_time_s"),
        ({"max_used_octets": MAX_UNITS + 1}, "plans[0].usage_limits.max_used_octets"),
        ({"overrun_floor_micros": -1}, "plans[0].usage_limits.overrun_floor_micros"),
        ({"max_used_seconds": 60}, "plans[0].usage_limits.max_used_seconds"),
    ],
)
async def test_bad_plan_limits_are_refused_naming_the_field(stubs: Stubs, limits: dict[str, Any], field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.admin.LoadCatalog(admin_pb2.CatalogDocument(json=limited_catalog(limits)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (err.value.details() or "")
