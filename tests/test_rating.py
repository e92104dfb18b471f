"""Rating rules: tables and properties, no server."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from charging.errors import InvalidRequest
from charging.money import MAX_AMOUNT
from charging.rating import (
    Rate,
    UnitKind,
    Units,
    affordable_units,
    ceil_div,
    check_units,
    cost,
    incremental_cost,
    quota,
)


def rate(increment: int = 60, price: int = 100_000, quota_units: int = 300, unit: UnitKind = UnitKind.TIME) -> Rate:
    return Rate(
        rating_group=1,
        unit=unit,
        increment=increment,
        price_micros=price,
        default_quota=quota_units,
        validity_time_s=60,
    )


@pytest.mark.parametrize(
    ("increment", "price", "units", "expected"),
    [
        (60, 100_000, 0, 0),
        (60, 100_000, 1, 100_000),  # 60/60: a started minute costs a minute
        (60, 100_000, 60, 100_000),
        (60, 100_000, 61, 200_000),
        (1, 1_700, 61, 103_700),  # per second
        (1024, 10, 1, 10),  # per started KB
        (1024, 10, 1024, 10),
        (1024, 10, 1025, 20),
        (1, 0, 10**15, 0),  # free
    ],
)
def test_cost_rounds_up_to_whole_increments(increment: int, price: int, units: int, expected: int) -> None:
    assert cost(rate(increment, price), units) == expected


@pytest.mark.parametrize(
    ("before", "used", "expected"),
    [(0, 30, 100_000), (30, 30, 0), (60, 1, 100_000), (59, 2, 100_000), (0, 0, 0), (119, 122, 300_000)],
)
def test_incremental_cost_continues_the_started_increment(before: int, used: int, expected: int) -> None:
    assert incremental_cost(rate(), before, used) == expected


@pytest.mark.parametrize(("requested", "expected"), [(0, 300), (1, 60), (60, 60), (61, 120), (1000, 1020)])
def test_quota_is_requested_or_default_in_whole_increments(requested: int, expected: int) -> None:
    assert quota(rate(), requested) == expected


@pytest.mark.parametrize(
    ("before", "available", "wanted", "expected"),
    [
        (0, 1_000_000, 300, 300),
        (0, 250_000, 300, 120),
        (0, 99_999, 300, 0),
        (30, 0, 300, 30),  # the rest of a paid minute is free
        (30, 100_000, 300, 90),
        (0, -5, 300, 0),
    ],
)
def test_affordable_units(before: int, available: int, wanted: int, expected: int) -> None:
    assert affordable_units(rate(), before, available, wanted) == expected


positive = st.integers(min_value=1, max_value=10**6)
units = st.integers(min_value=0, max_value=10**9)
rates = st.builds(
    Rate,
    rating_group=st.just(1),
    unit=st.just(UnitKind.TIME),
    increment=st.sampled_from([1, 6, 60, 1024]),
    price_micros=st.integers(0, 10**6),
    default_quota=st.just(60),
    validity_time_s=st.just(60),
    connect_fee=st.sampled_from([0, 30_000]),
    first_increment=st.sampled_from([0, 30, 60]),
    first_price=st.integers(0, 10**6),
    min_charge=st.sampled_from([0, 200_000]),
    max_session_cost=st.sampled_from([0, 0, 1_000_000]),
)


@pytest.mark.parametrize(
    ("kwargs", "units", "expected"),
    [
        ({"connect_fee": 50_000}, 1, 150_000),  # connect fee plus the first started minute
        ({"connect_fee": 50_000}, 0, 0),  # no usage, no connect fee
        ({"first_increment": 60, "first_price": 100_000, "increment": 1, "price": 1_000}, 61, 101_000),  # 60/1
        ({"first_increment": 60, "first_price": 100_000, "increment": 1, "price": 1_000}, 5, 100_000),
        ({"min_charge": 250_000}, 61, 250_000),
        ({"min_charge": 250_000}, 181, 400_000),
        ({"max_session_cost": 250_000}, 6000, 250_000),
    ],
)
def test_connect_fee_first_increment_minimum_and_cap(kwargs: dict[str, int], units: int, expected: int) -> None:
    kw = dict(kwargs)
    r = Rate(
        rating_group=1,
        unit=UnitKind.TIME,
        increment=kw.pop("increment", 60),
        price_micros=kw.pop("price", 100_000),
        default_quota=60,
        validity_time_s=60,
        **kw,
    )
    assert cost(r, units) == expected


@given(r=rates, parts=st.lists(units, max_size=8))
def test_any_rate_charges_parts_like_the_whole(r: Rate, parts: list[int]) -> None:
    before, charged = 0, 0
    for used in parts:
        charged += incremental_cost(r, before, used)
        before += used
    assert charged == cost(r, sum(parts))


@given(r=rates, a=units, b=units)
def test_any_rate_is_monotonic(r: Rate, a: int, b: int) -> None:
    lo, hi = sorted((a, b))
    assert cost(r, lo) <= cost(r, hi)


@given(r=rates, before=units, available=st.integers(-(10**6), 10**9), wanted=units)
def test_affordable_units_are_the_most_that_fit(r: Rate, before: int, available: int, wanted: int) -> None:
    g = affordable_units(r, before, available, wanted)
    assert 0 <= g <= wanted
    assert incremental_cost(r, before, g) <= max(available, 0)
    if g < wanted:
        assert incremental_cost(r, before, g + 1) > max(available, 0)


@given(increment=positive, price=st.integers(0, 10**6), a=units, b=units)
def test_cost_is_monotonic_in_usage(increment: int, price: int, a: int, b: int) -> None:
    r = rate(increment, price)
    lo, hi = sorted((a, b))
    assert cost(r, lo) <= cost(r, hi)


@given(increment=positive, price=st.integers(0, 10**6), parts=st.lists(units, max_size=8))
def test_reporting_in_parts_costs_the_same_as_the_whole(increment: int, price: int, parts: list[int]) -> None:
    r = rate(increment, price)
    before, charged = 0, 0
    for used in parts:
        charged += incremental_cost(r, before, used)
        before += used
    assert charged == cost(r, sum(parts))


@given(increment=positive, price=st.integers(0, 10**6), parts=st.lists(units, max_size=8))
def test_separate_events_never_cost_less_than_one(increment: int, price: int, parts: list[int]) -> None:
    r = rate(increment, price)
    assert sum(cost(r, u) for u in parts) >= cost(r, sum(parts))


@given(
    increment=positive, price=st.integers(1, 10**6), before=units, available=st.integers(-(10**9), 10**12), wanted=units
)
def test_affordable_units_fit_in_the_money(
    increment: int, price: int, before: int, available: int, wanted: int
) -> None:
    r = rate(increment, price)
    g = affordable_units(r, before, available, wanted)
    assert 0 <= g <= wanted
    assert incremental_cost(r, before, g) <= max(available, 0)
    if g < wanted:  # one more increment would not fit
        assert incremental_cost(r, before, g + increment) > max(available, 0) or g + increment > wanted


@given(a=st.integers(0, 2**60), b=st.integers(1, 2**40))
def test_ceil_div(a: int, b: int) -> None:
    q = ceil_div(a, b)
    assert q * b >= a > (q - 1) * b or a == 0 == q


def test_units_pick_the_rate_unit() -> None:
    u = Units(time_s=5, input_octets=3, output_octets=4, service_specific_units=2, money_micros=9)
    assert u.count(UnitKind.TIME) == 5
    assert u.count(UnitKind.VOLUME) == 7
    assert Units(total_octets=10, input_octets=3).count(UnitKind.VOLUME) == 10
    assert u.count(UnitKind.SERVICE_SPECIFIC) == 2
    assert u.count(UnitKind.MONEY) == 9


def test_unit_counts_beyond_the_exact_range_are_refused() -> None:
    r = rate(1, MAX_AMOUNT // 10)
    check_units(r, 8, "used")
    with pytest.raises(InvalidRequest) as err:
        check_units(r, 10, "used")
    assert err.value.field == "used"
