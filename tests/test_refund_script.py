"""event.lua's refunds against the reference in refunds.py (``give_back``), on a real Redis:
random debits (one or two rate parts, from any point of a session, drawn on up to three
buckets and money) refunded in random pieces."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charging import keys
from charging.buckets import Bucket, pack, unpack
from charging.ledger import EVENT
from charging.rating import NO_RATE, Rate, UnitKind, billable_units, session_cost
from charging.refunds import Part, give_back
from charging.script_args import EventArgs

# Bucket ids as bundles name them; one holds ':' (catalog.schema.json allows it).
BUCKETS = ("voice-2.1", "x:y.2", "voice-100.3")
START = 1_000_000


@pytest.fixture(scope="module")
def r(redis_server: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server, decode_responses=True)
    yield client
    client.close()


def packed(parts: list[Part]) -> str:
    """A refund record of rating group 7 as event.lua and session.lua write it."""
    texts = [
        "/".join((p.rate.packed, str(p.used_before), str(p.money_units_before), str(p.left), str(p.money_units)))
        + "/"
        + "|".join(f"{b}:{n}" for b, n in p.taken)
        for p in parts
    ]
    return ";".join(["7", str(int(UnitKind.TIME)), "voice", "", "", "", "0", *texts])


rates = st.builds(
    lambda increment, price, connect, first, first_price, minimum, cap: Rate(
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
    ),
    st.sampled_from([1, 6, 60, 1024]),
    st.integers(0, 200_000),
    st.sampled_from([0, 0, 25_000]),
    st.sampled_from([0, 0, 30, 60]),
    st.integers(0, 300_000),
    st.sampled_from([0, 0, 150_000]),
    st.sampled_from([0, 0, 0, 400_000, 5_000_000]),
)


@st.composite
def debits(draw: st.DrawFn) -> list[Part]:
    """One or two parts of a debit, each drawn on some buckets and money (billed in full, or
    in part past an overrun floor), as the scripts record them."""
    used_before = draw(st.sampled_from([0, 0, draw(st.integers(1, 10**6))]))
    money_before = draw(st.integers(0, used_before))
    parts = []
    for rate in draw(st.lists(rates, min_size=1, max_size=2)):
        used = draw(st.integers(1, 5_000))
        need = billable_units(rate, used_before + used) - billable_units(rate, used_before)
        taken, left = [], need
        for bucket in draw(st.lists(st.sampled_from(BUCKETS), unique=True, max_size=3)):
            n = draw(st.integers(0, left))
            if n:
                taken.append((bucket, n))
                left -= n
        # Usage past a session's overrun floor is billed in part or not at all.
        left = draw(st.sampled_from([left, left, left, draw(st.integers(0, left))]))
        parts.append(Part(rate, used_before, money_before, used, left, tuple(taken)))
        used_before, money_before = used_before + used, money_before + left
    return parts


numbers = itertools.count()


def refund(r: redis.Redis, account: str, units: int) -> list[str]:
    event_id = f"r{next(numbers)}"
    script_keys = (
        keys.account(account),
        keys.event(account, event_id),
        keys.buckets(account),
        keys.outbox(account),
        keys.usage(account),
        keys.usage_records(account),
        keys.event(account, "debit"),
        keys.cdr_outbox(account),
    )
    args = EventArgs(
        "R", "d", "msisdn", "4911", "t", 7, units, 60, 10**15, NO_RATE, int(UnitKind.TIME), "", "", "", 1000, 0,
        False, False, "", event_id, "", "", "test", False,
    )  # fmt: skip
    sha = EVENT.sha if r.script_exists(EVENT.sha)[0] else r.script_load(EVENT.source)
    return r.evalsha(sha, len(script_keys), *script_keys, *args.to_argv())  # type: ignore[no-any-return]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=debits(), refunds=st.lists(st.integers(1, 12_000), min_size=1, max_size=6))
def test_refunds_give_back_what_the_reference_says(r: redis.Redis, parts: list[Part], refunds: list[int]) -> None:
    account = f"rf{next(numbers)}"
    r.hset(
        keys.account(account),
        mapping={"balance": START, "reserved": 0, "plan": "t", "status": "active", "msisdn": "4911", "bucket_seq": 3},
    )
    live = {b: Bucket(b, UnitKind.TIME, 10, 0, 0, 10**10, 1, 10**6, services=("voice",)) for b in BUCKETS}
    r.hset(keys.buckets(account), mapping={b.id: pack(b) for b in live.values()})
    r.set(keys.event(account, "debit"), "digest|2001 0 0 0|" + packed(parts))
    balance = START
    amounts = {b: 10 for b in BUCKETS}
    original = parts
    for units in refunds:
        expected = give_back(parts, units)
        reply = refund(r, account, units)
        rc, got_balance = (int(x) for x in reply[1].split(" ")[:2])
        if expected is None:
            assert rc == 5004
        else:
            assert rc == 2001
            balance += expected.money
            for bucket, n in expected.buckets:
                amounts[bucket] += n
            parts = list(expected.parts)
        assert got_balance == balance
        stored = {i: unpack(i, t).amount for i, t in r.hgetall(keys.buckets(account)).items()}
        assert stored == amounts
    # Refunding what is left gives back exactly what the debit took: its money and units.
    left = sum(p.left for p in parts)
    if left:
        rc, got_balance = (int(x) for x in refund(r, account, left)[1].split(" ")[:2])
        assert rc == 2001
        balance = got_balance
    stored = {i: unpack(i, t).amount for i, t in r.hgetall(keys.buckets(account)).items()}
    assert sum(stored.values()) - 3 * 10 == sum(n for p in original for _, n in p.taken)
    assert balance - START == sum(
        session_cost(p.rate, p.money_units_before + p.money_units) - session_cost(p.rate, p.money_units_before)
        for p in original
    )
