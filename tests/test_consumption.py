"""Billable units and what buckets and money give: tables and properties, no server."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from charging.buckets import Bucket, consumption_order, usable
from charging.consumption import (
    POOL_MARK,
    GroupState,
    Where,
    charge_group,
    debit,
    member_pot,
    take,
)
from charging.rating import Rate, UnitKind, billable_units, incremental_cost, session_cost
from tests.test_rating import rates

NOW = 1_000_000
VOICE = Where(UnitKind.TIME, "voice", "national_mobile", "peak")


def rate(increment: int = 1, first: int = 60) -> Rate:
    return Rate(1, UnitKind.TIME, increment, 1_500, 300, 900, first_increment=first, first_price=90_000)


@pytest.mark.parametrize(
    ("increment", "first", "units", "expected"),
    [(1, 60, 0, 0), (1, 60, 5, 60), (1, 60, 61, 61), (60, 0, 61, 120), (1024, 0, 1, 1024), (1, 0, 7, 7)],
)
def test_billable_units_round_up_to_whole_increments(increment: int, first: int, units: int, expected: int) -> None:
    assert billable_units(rate(increment, first), units) == expected


@given(r=rates, units=st.integers(0, 10**9))
def test_billable_units_cost_what_the_usage_costs(r: Rate, units: int) -> None:
    b = billable_units(r, units)
    assert b >= units and billable_units(r, b) == b
    assert session_cost(r, b) == session_cost(r, units)
    if units > 0:
        assert b - units < max(r.first, r.increment)


def bucket(
    i: str,
    amount: int,
    priority: int = 1,
    expiry: int = NOW + 100,
    start: int = NOW - 10,
    services: tuple[str, ...] = (),
    zones: tuple[str, ...] = (),
    bands: tuple[str, ...] = (),
) -> Bucket:
    return Bucket(i, UnitKind.TIME, amount, 0, start, expiry, priority, amount, 0, services, zones, bands)


def test_order_is_priority_then_earliest_expiry_and_skips_what_does_not_apply() -> None:
    pot = [
        bucket("late", 10, expiry=NOW + 200),
        bucket("early", 10),
        bucket("first", 10, priority=0, expiry=NOW + 300),
        bucket("sms", 10, services=("sms",)),
        bucket("abroad", 10, zones=("international_1",)),
        bucket("night", 10, bands=("offpeak",)),
        bucket("expired", 10, expiry=NOW),
        bucket("later", 10, start=NOW + 1),
        Bucket("data", UnitKind.VOLUME, 10, 0, 0, NOW + 100, 0, 10),
    ]
    ids = [b.id for b in usable(pot, NOW, VOICE.unit, VOICE.service, VOICE.zone, VOICE.band)]
    assert ids == ["first", "early", "late"]
    held = usable(pot, NOW, VOICE.unit, VOICE.service, VOICE.zone, VOICE.band, frozenset({"expired"}))
    assert [b.id for b in held] == ["first", "expired", "early", "late"]  # earliest expiry first


def test_pool_buckets_are_named_apart_and_come_after_the_own() -> None:
    """Even a pool bucket of a more urgent priority waits until the member's own are used."""
    pot = member_pot([bucket("a.1", 5, priority=2)], [bucket("a.1", 5, priority=1)])
    assert sorted(pot) == [POOL_MARK + "a.1", "a.1"]
    assert [b.id for b in sorted(pot.values(), key=consumption_order)] == ["a.1", "^a.1"]


amounts = st.integers(0, 200)
pots = st.lists(
    st.builds(bucket, i=st.just(""), amount=amounts, priority=st.integers(0, 2), expiry=st.integers(NOW - 5, NOW + 5)),
    max_size=5,
).map(lambda bs: {f"b{n}": replace(b, id=f"b{n}") for n, b in enumerate(bs)})


@given(pot=pots, need=st.integers(0, 1000))
def test_take_empties_buckets_in_order(pot: dict[str, Bucket], need: int) -> None:
    order = sorted(pot.values(), key=consumption_order)
    taken = take(order, need)
    assert sum(taken.values()) == min(need, sum(b.available for b in order))
    partial = False
    for b in order:
        t = taken.get(b.id, 0)
        assert 0 <= t <= b.available
        assert not (partial and t), "a later bucket is used only when the earlier ones are empty"
        partial = partial or t < b.available


@given(r=rates, pot=pots, units=st.integers(1, 1000))
def test_an_event_bills_whole_increments_from_buckets_then_money(r: Rate, pot: dict[str, Bucket], units: int) -> None:
    d = debit(r, pot, VOICE, NOW, units)
    from_buckets = sum(d.taken.values())
    assert d.cost == session_cost(r, billable_units(r, units) - from_buckets)
    assert all(pot[i].expiry_s > NOW for i in d.taken)


@given(
    r=rates,
    pot=pots,
    before=st.integers(0, 500),
    used=st.integers(0, 500),
    want=st.integers(0, 500),
    free=st.integers(-(10**6), 10**7),
)
def test_a_report_and_grant_balance_units_and_money(
    r: Rate, pot: dict[str, Bucket], before: int, used: int, want: int, free: int
) -> None:
    state = GroupState(before, billable_units(r, before))
    out = charge_group(pot, VOICE, NOW, state, [(used, r)], r, want, free)
    from_buckets = sum(pot[i].amount - out.pot[i].amount for i in pot)
    need = billable_units(r, before + used) - billable_units(r, before)
    assert from_buckets + (out.state.money_units - state.money_units) == need
    if not from_buckets:  # all money: the rating reference's price
        assert out.cost == incremental_cost(r, before, used)
    assert 0 <= out.granted <= want
    held = sum(n for _, n in out.state.reservation.buckets)
    assert held == sum(b.reserved for b in out.pot.values())
    assert all(0 <= b.reserved <= b.amount for b in out.pot.values())
    assert out.state.reservation.money <= max(free - out.cost, 0)
    if out.granted == 0:
        assert out.state.reservation.money == 0 and held == 0


def test_at_a_tariff_change_money_continues_where_it_paid() -> None:
    """Two parts around a tariff change. Paid all with money so far, the new rate prices
    the session's usage as rating.py does (a change 1 s into a per-second rate, to a rate
    whose first minute is free: the 61st second costs); once a bucket gave units, money
    goes on where it stood (the new rate's connect fee is not asked for again)."""
    per_second = Rate(7, UnitKind.TIME, increment=1, price_micros=5, default_quota=60, validity_time_s=60)
    first_minute = replace(per_second, price_micros=1, first_increment=60, first_price=0)
    out = charge_group({}, VOICE, NOW, GroupState(0, 0), [(1, per_second), (60, first_minute)], first_minute, 0, 10**9)
    assert out.cost == 5 + 1 == incremental_cost(per_second, 0, 1) + incremental_cost(first_minute, 1, 60)
    per_minute = Rate(7, UnitKind.TIME, 60, 100, 60, 60, connect_fee=50)
    per_second_fee = Rate(7, UnitKind.TIME, 1, 2, 60, 60, connect_fee=50)
    bucket = Bucket("b", UnitKind.TIME, 30, 0, 0, NOW + 86_400, 1, 30)
    parts = [(10, per_minute), (50, per_second_fee)]
    with_bucket = charge_group({"b": bucket}, VOICE, NOW, GroupState(0, 0), parts, per_second_fee, 0, 10**9)
    # the first minute: 30 s from the bucket, 30 s of money (50 + 100); then 50 s at 2
    assert with_bucket.cost == 50 + 100 + 50 * 2
    without = charge_group({}, VOICE, NOW, GroupState(0, 0), parts, per_second_fee, 0, 10**9)
    assert with_bucket.cost <= without.cost
