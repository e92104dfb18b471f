"""session.lua and event.lua against the reference in consumption.py, on a real Redis:
random buckets (own and a pool's; priorities, expiries, starts, restrictions, amounts),
money, usage and grants through the public gRPC API; after every request each bucket and
the money are what the reference says."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from datetime import datetime

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charging import keys
from charging.buckets import Bucket, pack, unpack
from charging.catalog import Usage
from charging.clock import ManualClock
from charging.consumption import GroupState, Where, after_taking, charge_group, debit, member_pot
from charging.rating import Rate, UnitKind, quota
from charging.server import App
from charging.v1 import admin_pb2, charging_pb2, common_pb2, topup_pb2
from tests.conftest import INITIAL, TERMINATE, UPDATE, Stubs, session_request
from tests.test_buckets import small_bundles

T0 = int(datetime.fromisoformat("2026-11-26T11:00:00+01:00").timestamp())  # Thursday, peak
CALLED = ["491711234567", "33123456789", "491701234567"]  # national mobile 60/1, international 60/60, on-net 1/1
NUMBERS = itertools.count(1)
SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def names(*choices: str) -> st.SearchStrategy[tuple[str, ...]]:
    """A restriction list: mostly none (anything matches), else one or two names."""
    return st.just(()) | st.lists(st.sampled_from(choices), unique=True, min_size=1, max_size=2).map(tuple)


def buckets(unit: UnitKind) -> st.SearchStrategy[list[Bucket]]:
    """Up to 4 buckets around T0; ids start with a digit, a capital or a small letter (the
    tie-break by id runs across the pool's "^" names)."""
    one = st.builds(
        lambda head, other_unit, amount, start, expiry, priority, services, zones, bands: Bucket(
            id=head,
            unit=(UnitKind.SERVICE_SPECIFIC if unit is UnitKind.TIME else UnitKind.TIME) if other_unit else unit,
            amount=amount,
            reserved=0,
            start_s=T0 + start,
            expiry_s=T0 + expiry,
            priority=priority,
            initial=max(amount, 1),
            services=services,
            zones=zones,
            bands=bands,
        ),
        head=st.sampled_from(["0", "A", "a", "z"]),
        other_unit=st.booleans(),
        amount=st.integers(0, 300),
        start=st.sampled_from([-3600, 0, 30]),
        expiry=st.sampled_from([-5, 10, 50, 150, 86_400, 86_400]),
        priority=st.integers(1, 3),
        services=names("voice", "sms", "data"),
        zones=names("national_mobile", "international_1", "on_net"),
        bands=names("peak", "offpeak", "weekend"),
    )
    return st.lists(one, max_size=4).map(lambda bs: [replace(b, id=f"{b.id}.{i}") for i, b in enumerate(bs)])


async def account(
    stubs: Stubs, clock: ManualClock, redis_url: str, balance: int, own: list[Bucket], pool: list[Bucket] | None
) -> tuple[str, str, str]:
    """At T0, a fresh subscriber (a pool member when ``pool`` is given) holding these
    buckets: (msisdn, account id, pool account id or "")."""
    clock.advance(ms=T0 * 1000 - clock.now_ms())
    n = next(NUMBERS)
    msisdn = f"4917{n:08d}"
    root = ""
    if pool is not None:
        company = await stubs.subscriber(f"4916{n:08d}", balance=0, plan="mobile-prepaid")
        root = company.account_id
    sub = await stubs.admin.CreateSubscriber(
        admin_pb2.CreateSubscriberRequest(
            msisdn=msisdn, plan_id="mobile-prepaid", initial_balance_micros=balance, pool_account_id=root
        )
    )
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    for owner, items in ((sub.account_id, own), (root, pool or [])):
        if items:
            r.hset(keys.buckets(owner), mapping={b.id: pack(b) for b in items})
            # Buckets are looked for only on accounts that ever bought one.
            r.hset(keys.account(owner), "bucket_seq", len(items))
    r.close()
    return msisdn, sub.account_id, root


def stored(redis_url: str, account_id: str, root: str) -> tuple[dict[str, Bucket], int, int]:
    """The account's buckets as the member sees them (without the usage level notified,
    not a matter of consumption), its balance and reserved money."""
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    own = [unpack(i, t) for i, t in r.hgetall(keys.buckets(account_id)).items()]
    pool = [unpack(i, t) for i, t in r.hgetall(keys.buckets(root)).items()] if root else []
    balance, reserved = r.hmget(keys.account(account_id), ["balance", "reserved"])
    r.close()
    pot = {i: replace(b, notified=0) for i, b in member_pot(own, pool).items()}
    return pot, int(balance or 0), int(reserved or 0)


def rated(app: App, rating_group: int, called: str, at_s: int) -> tuple[Rate, Where]:
    """The rate the server applies, and what buckets are matched against."""
    assert app.catalogs is not None
    catalog = app.catalogs.current
    plan = catalog.plans["mobile-prepaid"]
    service, zone, band, _roaming = catalog.where(plan, rating_group, Usage(called), at_s)
    rate = catalog.rate(plan, rating_group, Usage(called), at_s)
    assert rate is not None
    return rate, Where(rate.unit, service, zone, band)


def kept(pot: dict[str, Bucket], at_s: int) -> dict[str, Bucket]:
    return {i: b for i, b in pot.items() if not b.dropped_at(at_s)}


# Two sessions interleaved, so that one draws on buckets while the other holds some; each
# request carries voice and SMS, which share the money.
PLAN = [("a", INITIAL), ("b", INITIAL), ("a", UPDATE), ("b", TERMINATE), ("a", TERMINATE)]
GROUPS = ((10, "time_s"), (20, "service_specific_units"))


@SETTINGS
@given(
    balance=st.sampled_from([0, 50_000, 200_000, 10_000_000]),
    own=buckets(UnitKind.TIME),
    pool=st.none() | buckets(UnitKind.TIME),
    called=st.lists(st.sampled_from(CALLED), min_size=2, max_size=2),
    asked=st.lists(st.sampled_from([0, 1, 30, 60, 61, 200, 500]), min_size=len(PLAN), max_size=len(PLAN)),
    used=st.lists(st.sampled_from([0, 1, 30, 59, 60, 61, 119, 400]), min_size=len(PLAN), max_size=len(PLAN)),
    sms=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=len(PLAN), max_size=len(PLAN)),
    steps=st.lists(st.sampled_from([0, 20, 40, 100, 7_200]), min_size=len(PLAN), max_size=len(PLAN)),
)
async def test_sessions_draw_on_buckets_and_money_as_the_reference_says(
    stubs: Stubs,
    app: App,
    clock: ManualClock,
    redis_url: str,
    balance: int,
    own: list[Bucket],
    pool: list[Bucket] | None,
    called: list[str],
    asked: list[int],
    used: list[int],
    sms: list[tuple[int, int]],
    steps: list[int],
) -> None:
    msisdn, account_id, root = await account(stubs, clock, redis_url, balance, own, pool)
    pot, money, reserved = stored(redis_url, account_id, root)
    states = {(sid, rg): GroupState() for sid in "ab" for rg, _ in GROUPS}
    numbers = {"a": 0, "b": 0}
    for step, (sid, kind) in enumerate(PLAN):
        if sid not in numbers:
            continue  # its INITIAL was refused: no session
        number, to = numbers[sid], called[sid == "b"]
        clock.advance(seconds=steps[step])
        now_s = clock.now_ms() // 1000
        reports = {10: (used[step], asked[step]), 20: sms[step]}  # rating group: (used, asked)
        groups: list[dict[str, object]] = []
        for rg, field in GROUPS:
            group: dict[str, object] = {"rating_group": rg, "used": {field: reports[rg][0] if kind != INITIAL else 0}}
            if kind != TERMINATE:
                group["requested"] = {field: reports[rg][1]}
            groups.append(group)
        answer = await stubs.charging.ChargeSession(
            session_request(sid, kind, number, groups, msisdn=msisdn, called_party=to)
        )
        granted = 0
        for (rg, field), got in zip(GROUPS, answer.rating_groups, strict=True):
            state = states[sid, rg]
            rate, where = rated(app, rg, to, now_s)
            use = reports[rg][0] if kind != INITIAL else 0
            beyond = kind != INITIAL and use > state.reservation.units
            want = quota(rate, reports[rg][1]) if kind != TERMINATE and not beyond else 0
            free = money - (reserved - state.reservation.money)
            expected = charge_group(pot, where, now_s, state, [(use, rate)], rate, want, free)
            assert (getattr(got.granted, field), got.cost_micros) == (expected.granted, expected.cost)
            money -= expected.cost
            reserved += expected.state.reservation.money - state.reservation.money
            pot, states[sid, rg] = expected.pot, expected.state
            granted += expected.granted
        pot, numbers[sid] = kept(pot, now_s), number + 1
        assert stored(redis_url, account_id, root) == (pot, money, reserved)
        if kind == INITIAL and not granted:
            del numbers[sid]
        if kind == UPDATE and answer.result_code != 2001:
            # Nothing is held any more: the server has ended the session (README, result codes).
            assert not any(states[sid, rg].reservation.units for rg, _ in GROUPS)
            del numbers[sid]


@SETTINGS
@given(
    balance=st.sampled_from([0, 90_000, 200_000, 10_000_000]),
    own=buckets(UnitKind.SERVICE_SPECIFIC),
    pool=st.none() | buckets(UnitKind.SERVICE_SPECIFIC),
    events=st.lists(
        st.tuples(st.sampled_from(CALLED), st.integers(1, 4), st.sampled_from([0, 20, 100, 86_400])),
        min_size=1,
        max_size=3,
    ),
)
async def test_events_draw_on_buckets_then_money_as_the_reference_says(
    stubs: Stubs,
    app: App,
    clock: ManualClock,
    redis_url: str,
    balance: int,
    own: list[Bucket],
    pool: list[Bucket] | None,
    events: list[tuple[str, int, int]],
) -> None:
    msisdn, account_id, root = await account(stubs, clock, redis_url, balance, own, pool)
    pot, money, reserved = stored(redis_url, account_id, root)
    for n, (called, units, later) in enumerate(events):
        clock.advance(seconds=later)
        now_s = clock.now_ms() // 1000
        rate, where = rated(app, 20, called, now_s)
        req = charging_pb2.EventRequest(
            event_id=f"e{n}",
            action=charging_pb2.REQUESTED_ACTION_DIRECT_DEBITING,
            subscriber=common_pb2.SubscriberId(msisdn=msisdn),
            rating_group=20,
            called_party=called,
        )
        req.requested.service_specific_units = units
        answer = await stubs.charging.ChargeEvent(req)
        expected = debit(rate, pot, where, now_s, units)
        if money - reserved >= expected.cost:
            assert (answer.result_code, answer.cost_micros) == (2001, expected.cost)
            money -= expected.cost
            pot = kept(after_taking(pot, expected.taken), now_s)
        else:
            assert answer.result_code == 4012  # all or nothing: nothing changes
        assert stored(redis_url, account_id, root) == (pot, money, reserved)


async def test_a_member_uses_its_own_bucket_before_an_equal_one_of_its_pool(stubs: Stubs, clock: ManualClock) -> None:
    clock.advance(ms=T0 * 1000 - clock.now_ms())
    await stubs.admin.LoadCatalog(admin_pb2.CatalogDocument(json=json.dumps(small_bundles())))
    company = await stubs.subscriber("491600000001", balance=1_000_000, plan="mobile-prepaid")
    member = "491700000001"
    await stubs.admin.CreateSubscriber(
        admin_pb2.CreateSubscriberRequest(
            msisdn=member,
            plan_id="mobile-prepaid",
            initial_balance_micros=1_000_000,
            pool_account_id=company.account_id,
        )
    )
    for msisdn in ("491600000001", member):  # the same bundle, bought the same second: equal priority and expiry
        await stubs.topup.BuyBundle(
            topup_pb2.BuyBundleRequest(
                subscriber=common_pb2.SubscriberId(msisdn=msisdn),
                bundle_id="voice-2-first",
                channel=topup_pb2.CHANNEL_APP,
                idempotency_key="k",
            )
        )
    called = "491711234567"
    await stubs.charging.ChargeSession(
        session_request("s", INITIAL, 0, [{"rating_group": 10, "requested": {}}], member, called)
    )
    await stubs.charging.ChargeSession(
        session_request("s", TERMINATE, 1, [{"rating_group": 10, "used": {"time_s": 60}}], member, called)
    )
    amounts = {}
    for msisdn in ("491600000001", member):
        b = await stubs.topup.GetBalance(topup_pb2.BalanceRequest(subscriber=common_pb2.SubscriberId(msisdn=msisdn)))
        amounts[msisdn] = [x.amount for x in b.buckets]
    assert amounts == {member: [60], "491600000001": [120]}
