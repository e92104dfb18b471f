"""A report split around a tariff change is priced at the change its grant announced,
whatever the server's clock says when the report arrives (a clock jump, a late report),
through gRPC on a real Redis. The price is rating.py's: the units before the change at
the rate in force just before it, those after at the rate in force at it, each on the
session's cumulative usage.

The bundled mobile-prepaid plan: national calls at peak (weekdays 08:00-20:00, Berlin)
and off-peak; voice grants are valid 900 s, so the server's own guess of the change
looks back 1800 s."""

from __future__ import annotations

from datetime import datetime

import pytest
import redis
from prometheus_client import REGISTRY

from charging import keys
from charging.catalog import Usage
from charging.catalog_doc import catalog_from_doc
from charging.catalogs import read_catalog_file
from charging.clock import ManualClock
from charging.rating import incremental_cost
from charging.v1 import charging_pb2
from tests.conftest import INITIAL, TERMINATE, UPDATE, Stubs, session_request, set_time

MSISDN = "491700000001"
CALLED = "491711234567"  # national mobile
PLAN = "mobile-prepaid"
BALANCE = 50_000_000
# Thursday: peak ends at 20:00.
GRANTED_AT = "2026-11-26T19:58:00+01:00"
CHANGE = int(datetime.fromisoformat("2026-11-26T20:00:00+01:00").timestamp())


def tariff_retries() -> float:
    return REGISTRY.get_sample_value("charging_stale_view_retries_total", {"kind": "TARIFF"}) or 0.0


def voice(sid: str, kind: int, n: int, **units: object) -> charging_pb2.SessionRequest:
    return session_request(sid, kind, n, [{"rating_group": 10, **units}], called_party=CALLED)


def reference(change_s: int, used_so_far: int, before: int, after: int) -> int:
    """What a report of ``before`` + ``after`` units split at ``change_s`` costs by rating.py."""
    catalog = catalog_from_doc(read_catalog_file(""))
    plan = catalog.plan_of(PLAN)
    assert plan is not None
    old = catalog.rate(plan, 10, Usage(CALLED), change_s - 1)
    new = catalog.rate(plan, 10, Usage(CALLED), change_s)
    assert old is not None and new is not None and old != new
    return incremental_cost(old, used_so_far, before) + incremental_cost(new, used_so_far + before, after)


async def granted_across_the_change(stubs: Stubs, clock: ManualClock, sid: str) -> None:
    set_time(clock, GRANTED_AT)
    a = await stubs.charging.ChargeSession(voice(sid, INITIAL, 0, requested={}))
    assert a.rating_groups[0].tariff_change_time == CHANGE


@pytest.fixture
async def subscriber(stubs: Stubs) -> str:
    return (await stubs.subscriber(MSISDN, balance=BALANCE, plan=PLAN)).account_id


async def test_a_clock_jump_past_another_change_prices_the_split_at_the_announced_one(
    stubs: Stubs, clock: ManualClock, subscriber: str
) -> None:
    await granted_across_the_change(stubs, clock, "j")
    # The server's clock jumps to the next morning, just past the next change (08:00,
    # off-peak to peak): by it, the last change was peak starting, not peak ending.
    set_time(clock, "2026-11-27T08:01:00+01:00")
    report = voice("j", UPDATE, 1, requested={}, used={"time_s": 120}, used_after={"time_s": 60})
    retries = tariff_retries()
    u = await stubs.charging.ChargeSession(report)
    # The server's guess (08:00) was refused once (TARIFF) and the announced change used.
    assert tariff_retries() == retries + 1
    expected = reference(CHANGE, 0, 120, 60)
    assert expected == (90_000 + 60 * 1_500) + 60 * 750  # 120 s at peak, then 60 s off-peak
    assert (u.result_code, u.rating_groups[0].cost_micros) == (2001, expected)
    assert (await stubs.balance()).balance_micros == BALANCE - expected

    # A retransmission, with the clock moved on again: the same answer, charged once.
    set_time(clock, "2026-11-27T08:03:00+01:00")
    again = await stubs.charging.ChargeSession(report)
    assert again.rating_groups == u.rating_groups and again.result_code == u.result_code
    assert (await stubs.balance()).balance_micros == BALANCE - expected

    t = await stubs.charging.ChargeSession(voice("j", TERMINATE, 2, used={"time_s": 0}))
    assert t.result_code == 2001
    b = await stubs.balance()
    assert (b.balance_micros, b.reserved_micros) == (BALANCE - expected, 0)


async def test_a_clock_jump_back_before_the_change_prices_the_split_at_the_announced_one(
    stubs: Stubs, clock: ManualClock, subscriber: str
) -> None:
    await granted_across_the_change(stubs, clock, "b")
    # Stepped back before the change: by the server's clock no change has happened yet.
    set_time(clock, "2026-11-26T19:57:00+01:00")
    t = await stubs.charging.ChargeSession(voice("b", TERMINATE, 1, used={"time_s": 59}, used_after={"time_s": 2}))
    expected = reference(CHANGE, 0, 59, 2)
    assert (t.result_code, t.rating_groups[0].cost_micros) == (2001, expected)
    b = await stubs.balance()
    assert (b.balance_micros, b.reserved_micros) == (BALANCE - expected, 0)


async def test_a_report_later_than_the_lookback_prices_the_split_at_the_announced_one(
    stubs: Stubs, clock: ManualClock, subscriber: str
) -> None:
    await granted_across_the_change(stubs, clock, "l")
    # 40 minutes after the change: further back than the server looks for one (1800 s).
    set_time(clock, "2026-11-26T20:40:00+01:00")
    report = voice("l", TERMINATE, 1, used={"time_s": 90}, used_after={"time_s": 200})
    t = await stubs.charging.ChargeSession(report)
    expected = reference(CHANGE, 0, 90, 200)
    assert (t.result_code, t.rating_groups[0].cost_micros) == (2001, expected)
    again = await stubs.charging.ChargeSession(report)
    assert again.rating_groups == t.rating_groups and again.result_code == t.result_code
    b = await stubs.balance()
    assert (b.balance_micros, b.reserved_micros) == (BALANCE - expected, 0)


async def test_a_split_without_an_announcement_is_priced_at_the_last_change_by_the_clock(
    stubs: Stubs, clock: ManualClock, r: redis.Redis, subscriber: str
) -> None:
    # A grant announcing no change (noon), and one whose announcement the session does not
    # hold (granted before the session kept it): both split at the last change by the
    # server's clock, as before, with no second round.
    set_time(clock, "2026-11-26T12:00:00+01:00")
    await stubs.charging.ChargeSession(voice("n", INITIAL, 0, requested={}))
    await granted_across_the_change(stubs, clock, "o")
    r.hdel(keys.session(subscriber, "o"), "t10")
    set_time(clock, "2026-11-26T20:01:00+01:00")
    n = await stubs.charging.ChargeSession(voice("n", TERMINATE, 1, used={"time_s": 120}, used_after={"time_s": 60}))
    o = await stubs.charging.ChargeSession(voice("o", TERMINATE, 1, used={"time_s": 120}, used_after={"time_s": 60}))
    expected = reference(CHANGE, 0, 120, 60)
    assert n.rating_groups[0].cost_micros == o.rating_groups[0].cost_micros == expected
    b = await stubs.balance()
    assert (b.balance_micros, b.reserved_micros) == (BALANCE - 2 * expected, 0)
