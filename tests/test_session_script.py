"""session.lua against the reference arithmetic in rating.py (and, with buckets, in
consumption.py), on a real Redis."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from charging import keys
from charging.buckets import Bucket, pack, unpack
from charging.consumption import GroupState, Where, charge_group
from charging.ledger import SESSION
from charging.rating import NO_RATE, Rate, UnitKind, affordable_units, billable_units, incremental_cost
from charging.script_args import RatingGroupArgs, SessionArgs


@pytest.fixture(scope="module")
def r(redis_server: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server, decode_responses=True)
    yield client
    client.close()


def update(
    r: redis.Redis,
    account: str,
    balance: int,
    held: int,
    session: dict[str, object],
    group: RatingGroupArgs,
    buckets: Sequence[Bucket] = (),
) -> list:
    """Run session.lua for UPDATE number 1 of session "s" at 1 s on a fresh account holding
    ``held`` micros in that session and these buckets, with one rating group."""
    sid = "s"
    r.delete(keys.account(account), keys.session(account, sid), keys.answer(account, sid, 1), keys.sessions(account))
    r.delete(keys.buckets(account), keys.outbox(account))
    r.hset(
        keys.account(account),
        mapping={"balance": balance, "reserved": held, "plan": "t", "status": "active", "msisdn": "4911"},
    )
    r.hset(keys.session(account, sid), mapping={**session, "n7": 0, "dl": 0, "cv": "c1"})  # type: ignore[dict-item]
    if buckets:
        r.hset(keys.buckets(account), mapping={b.id: pack(b) for b in buckets})
        r.hset(keys.account(account), "bucket_seq", len(buckets))
    return r.evalsha(  # type: ignore[no-any-return]
        SESSION.sha if r.script_exists(SESSION.sha)[0] else r.script_load(SESSION.source),
        10,
        keys.account(account),
        keys.sessions(account),
        keys.session(account, sid),
        keys.answer(account, sid, 1),
        keys.buckets(account),
        keys.outbox(account),
        keys.usage(account),
        keys.usage_records(account),
        keys.session_refunds(account, sid),
        keys.cdr_outbox(account),
        *SessionArgs(
            1000, "U", sid, 1, "d", "msisdn", "4911", "t", 60, 1000, "c1", 0, False, "", 10**15, 60, "", False, (group,)
        ).to_argv(),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    increment=st.sampled_from([1, 6, 60, 1024]),
    price=st.integers(0, 200_000),
    connect=st.sampled_from([0, 0, 25_000]),
    first=st.sampled_from([0, 0, 30, 60, 2048]),
    first_price=st.integers(0, 300_000),
    minimum=st.sampled_from([0, 0, 150_000]),
    cap=st.sampled_from([0, 0, 0, 400_000, 5_000_000]),
    balance=st.integers(-(10**9), 10**12),
    held=st.integers(0, 10**7),
    reserved_units=st.integers(0, 10**6),
    cum=st.integers(0, 10**9),
    used=st.integers(0, 10**7),
    want=st.integers(0, 10**7),
)
def test_script_matches_reference(
    r: redis.Redis,
    increment: int,
    price: int,
    connect: int,
    first: int,
    first_price: int,
    minimum: int,
    cap: int,
    balance: int,
    held: int,
    reserved_units: int,
    cum: int,
    used: int,
    want: int,
) -> None:
    rate = Rate(
        rating_group=7,
        unit=UnitKind.TIME,
        increment=increment,
        price_micros=price,
        default_quota=1,
        validity_time_s=60,
        connect_fee=connect,
        first_increment=first,
        first_price=first_price,
        min_charge=minimum,
        max_session_cost=cap,
    )
    account = "p"
    # A session that has only used money so far: the money counter is the billable usage.
    session = {"u7": reserved_units, "m7": held, "c7": cum, "k7": billable_units(rate, cum)}
    group = RatingGroupArgs(
        7, 0, want, False, 60, 0, used, rate.packed, 0, NO_RATE, rate.packed, 1, "voice", "", "", False
    )
    reply = update(r, account, balance, held, session, group)
    assert reply[0] == "DONE"
    rc, granted, charged, _vt, fui, _change = (int(x) for x in reply[1].split(" ")[2].split(","))

    expected_cost = incremental_cost(rate, cum, used)
    assert charged == expected_cost
    new_balance = balance - expected_cost
    if used > reserved_units and used > 0:
        assert (rc, granted) == (4012, 0)
        expected_money = 0
    else:
        expected_granted = affordable_units(rate, cum + used, new_balance, want) if want else 0
        assert granted == expected_granted
        if want:
            assert rc == (2001 if expected_granted else 4012)
            assert fui == (1 if 0 < expected_granted < want else 0)
        expected_money = incremental_cost(rate, cum + used, granted)
    acct = r.hgetall(keys.account(account))
    assert int(acct["balance"]) == new_balance
    assert int(acct["reserved"]) == expected_money


minute_rates = st.builds(
    Rate,
    rating_group=st.just(7),
    unit=st.just(UnitKind.TIME),
    increment=st.sampled_from([1, 60]),
    price_micros=st.integers(0, 100_000),
    default_quota=st.just(60),
    validity_time_s=st.just(60),
    first_increment=st.sampled_from([0, 60]),
    first_price=st.integers(0, 100_000),
)


PER_SECOND = Rate(7, UnitKind.TIME, increment=1, price_micros=5, default_quota=60, validity_time_s=60)
FIRST_MINUTE = replace(PER_SECOND, price_micros=1, first_increment=60, first_price=0)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    before_rate=minute_rates,
    after_rate=minute_rates,
    # whole minutes: on an increment boundary of every rate here, where the money
    # counter equals the usage counter
    cum=st.integers(0, 200).map(lambda m: m * 60),
    used_before=st.integers(0, 5_000),
    used_after=st.integers(0, 5_000),
)
# Found by this test (2026-12-01): the change within the new rate's first increment. The
# money counter stayed on the old rate's increments (1 s), so the new rate's first minute
# counted as paid and the 61st second was free.
@example(before_rate=PER_SECOND, after_rate=FIRST_MINUTE, cum=0, used_before=1, used_after=60)
def test_usage_split_at_a_tariff_change_is_priced_each_side_at_its_rate(
    r: redis.Redis, before_rate: Rate, after_rate: Rate, cum: int, used_before: int, used_after: int
) -> None:
    group = RatingGroupArgs(
        7,
        0,
        0,
        False,
        60,
        0,
        used_before,
        before_rate.packed,
        used_after,
        after_rate.packed,
        after_rate.packed,
        1,
        "voice",
        "",
        "",
        False,
    )
    reply = update(r, "q", 10**12, 0, {"c7": cum, "k7": cum}, group)
    charged = int(reply[1].split(" ")[2].split(",")[2])
    expected = incremental_cost(before_rate, cum, used_before) + incremental_cost(
        after_rate, cum + used_before, used_after
    )
    assert charged == expected
    if before_rate == after_rate:
        assert charged == incremental_cost(before_rate, cum, used_before + used_after)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    before_rate=minute_rates,
    after_rate=minute_rates,
    pot=st.lists(
        st.tuples(
            st.integers(0, 300), st.integers(1, 3), st.sampled_from([1, 2, 100]), st.sampled_from([(), ("sms",)])
        ),
        max_size=3,
    ),
    cum=st.integers(0, 200).map(lambda m: m * 60),
    used_before=st.integers(0, 500),
    used_after=st.integers(0, 500),
    want=st.integers(0, 600),
    balance=st.sampled_from([0, 100_000, 10**9]),
)
def test_usage_split_at_a_tariff_change_draws_on_buckets_as_the_consumption_reference_says(
    r: redis.Redis,
    before_rate: Rate,
    after_rate: Rate,
    pot: list[tuple[int, int, int, tuple[str, ...]]],
    cum: int,
    used_before: int,
    used_after: int,
    want: int,
    balance: int,
) -> None:
    buckets = [
        Bucket(f"b{i}", UnitKind.TIME, amount, 0, 0, expiry, priority, amount, services=services)
        for i, (amount, priority, expiry, services) in enumerate(pot)
    ]
    group = RatingGroupArgs(
        7, 0, want, False, 60, 0, used_before, before_rate.packed, used_after, after_rate.packed,
        after_rate.packed, 1, "voice", "", "", False,
    )  # fmt: skip
    # A session with a grant large enough for the report, all paid with money so far.
    reply = update(r, "w", balance, 0, {"u7": 10**6, "m7": 0, "c7": cum, "k7": cum}, group, buckets)
    _rc, granted, charged, _vt, _fui, _change = (int(x) for x in reply[1].split(" ")[2].split(","))
    parts = [(used_before, before_rate), (used_after, after_rate)]
    state = GroupState(cum, cum)
    expected = charge_group(
        {b.id: b for b in buckets}, Where(UnitKind.TIME, "voice"), 1, state, parts, after_rate, want, balance
    )
    assert (granted, charged) == (expected.granted, expected.cost)
    stored = {i: replace(unpack(i, t), notified=0) for i, t in r.hgetall(keys.buckets("w")).items()}
    assert stored == {i: b for i, b in expected.pot.items() if not b.dropped_at(1)}
    acct = r.hgetall(keys.account("w"))
    assert (int(acct["balance"]), int(acct["reserved"])) == (balance - expected.cost, expected.state.reservation.money)


def test_a_split_around_another_change_than_announced_is_refused_and_changes_nothing(r: redis.Redis) -> None:
    # The grant of request 0 announced a tariff change at 100 s (t7).
    session = {"u7": 60, "m7": 5_000, "c7": 0, "k7": 0, "t7": 100}
    split = RatingGroupArgs(
        7, 0, 60, False, 60, 0, 30, FIRST_MINUTE.packed, 20, PER_SECOND.packed, PER_SECOND.packed, 1, "voice", "",
        "", False, split_at_s=40,
    )  # fmt: skip
    assert update(r, "x", 10**6, 5_000, session, split) == ["TARIFF", "7:100"]
    assert r.hgetall(keys.account("x"))["balance"] == str(10**6)
    assert r.hgetall(keys.session("x", "s")) == {
        k: str(v) for k, v in {**session, "n7": 0, "dl": 0, "cv": "c1"}.items()
    }
    assert not r.exists(keys.answer("x", "s", 1))
    # Split around the announced change: charged, and the new grant's announcement (none) kept.
    reply = update(r, "x", 10**6, 5_000, session, replace(split, split_at_s=100))
    assert reply[0] == "DONE"
    assert int(reply[1].split(" ")[2].split(",")[2]) == incremental_cost(FIRST_MINUTE, 0, 30) + incremental_cost(
        PER_SECOND, 30, 20
    )
    assert r.hget(keys.session("x", "s"), "t7") == "0"
