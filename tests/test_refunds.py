"""Refunds (REFUND_ACCOUNT with 3GPP TS 32.299 Refund-Information) through gRPC on a real
Redis: a refund gives back at most what the debit its token names took and was not
refunded yet, to where it came from, once per event id."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import itertools
import json
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charging import keys
from charging.buckets import unpack
from charging.cdr_relay import drain
from charging.clock import ManualClock
from charging.refunds import RefundRef, event_token, parse_token, session_token
from charging.server import App
from charging.settings import Settings
from charging.v1 import admin_pb2, charging_pb2, common_pb2, topup_pb2
from postpaid.billing import Billing
from tests.conftest import (
    INITIAL,
    MSISDN,
    TERMINATE,
    UPDATE,
    LineBook,
    Stubs,
    enrol,
    redis_client,
    session_request,
    set_time,
)
from tests.test_buckets import buy, small_bundles
from tests.test_cli import cli
from tests.test_overrun import CONTENT, FLOOR, used_money
from tests.test_pools import COMPANY, setup
from tests.test_pools import call as pool_call

SMS = 50_000
MINUTE = 100_000
DEBIT = charging_pb2.REQUESTED_ACTION_DIRECT_DEBITING
REFUND = charging_pb2.REQUESTED_ACTION_REFUND_ACCOUNT
NATIONAL_MOBILE = "491711234567"


def event(
    event_id: str,
    action: int,
    token: bytes = b"",
    rating_group: int = 20,
    msisdn: str = MSISDN,
    called_party: str = "",
    **units: int,
) -> charging_pb2.EventRequest:
    req = charging_pb2.EventRequest(
        event_id=event_id,
        action=action,  # type: ignore[arg-type]
        subscriber=common_pb2.SubscriberId(msisdn=msisdn),
        rating_group=rating_group,
        refund_information=token,
        called_party=called_party,
    )
    for k, v in (units or {"service_specific_units": 1}).items():
        setattr(req.requested, k, v)
    return req


async def money(stubs: Stubs, msisdn: str = MSISDN) -> int:
    return int((await stubs.balance(msisdn)).balance_micros)


async def bucket_amounts(stubs: Stubs, msisdn: str = MSISDN) -> dict[str, int]:
    b = await stubs.topup.GetBalance(topup_pb2.BalanceRequest(subscriber=common_pb2.SubscriberId(msisdn=msisdn)))
    return {k.id: k.amount for k in b.buckets}


@pytest.fixture
async def shop(stubs: Stubs, clock: ManualClock) -> Stubs:
    """mobile-prepaid with 10 EUR, on a Thursday at peak, with tests.test_buckets' bundles."""
    set_time(clock, "2026-11-26T11:00:00+01:00")
    await stubs.admin.LoadCatalog(admin_pb2.CatalogDocument(json=json.dumps(small_bundles())))
    await stubs.subscriber(MSISDN, balance=10_000_000, plan="mobile-prepaid")
    return stubs


def test_tokens_name_their_debit_and_nothing_else() -> None:
    assert parse_token(event_token("sms-1")) == RefundRef("e", "sms-1")
    assert parse_token(session_token("gw;1;x:y", 7)) == RefundRef("s", "gw;1;x:y", 7)
    token = session_token("s", 7)
    for bad in (b"", b"not a token", b"1:s:07:s", b"2:e:x", b"1:e:", token + b"\xff", b"x" * 1000, event_token("a b")):
        assert parse_token(bad) is None, bad


async def test_a_refund_of_nothing_debited_is_refused_and_changes_nothing(stubs: Stubs) -> None:
    await stubs.subscriber(balance=0)
    a = await stubs.charging.ChargeEvent(event("r1", REFUND, service_specific_units=1000))
    assert (a.result_code, a.failed_field, a.cost_micros) == (5005, "refund_information", 0)
    for i, token in enumerate((event_token("never-debited"), session_token("no-session", 1), b"junk")):
        a = await stubs.charging.ChargeEvent(event(f"r2-{i}", REFUND, token, service_specific_units=1000))
        assert (a.result_code, a.failed_field, a.cost_micros) == (5004, "refund_information", 0)
    assert await money(stubs) == 0


async def test_a_refund_beyond_the_debit_is_refused_and_changes_nothing(stubs: Stubs) -> None:
    await stubs.subscriber(balance=1_000_000)
    d = await stubs.charging.ChargeEvent(event("d1", DEBIT))
    assert (d.result_code, d.cost_micros) == (2001, SMS)
    assert d.refund_information == event_token("d1")
    a = await stubs.charging.ChargeEvent(event("r1", REFUND, d.refund_information, service_specific_units=10))
    assert (a.result_code, a.failed_field) == (5004, "requested.service_specific_units")
    assert await money(stubs) == 1_000_000 - SMS
    # Another rating group, or units of another kind, are not what the debit took either.
    a = await stubs.charging.ChargeEvent(event("r2", REFUND, d.refund_information, rating_group=21))
    assert (a.result_code, a.failed_field) == (5004, "rating_group")
    a = await stubs.charging.ChargeEvent(event("r3", REFUND, d.refund_information, time_s=1))
    assert (a.result_code, a.failed_field) == (5004, "requested.time_s")
    a = await stubs.charging.ChargeEvent(event("r4", REFUND, d.refund_information, time_s=1, total_octets=1))
    assert (a.result_code, a.failed_field) == (5004, "requested")
    a = await stubs.charging.ChargeEvent(event("r5", REFUND, d.refund_information))
    assert (a.result_code, a.cost_micros, a.balance_micros, a.granted.service_specific_units) == (
        2001,
        SMS,
        1_000_000,
        1,
    )
    assert not a.refund_information
    a = await stubs.charging.ChargeEvent(event("r6", REFUND, d.refund_information))
    assert (a.result_code, a.failed_field) == (5004, "requested.service_specific_units")
    assert await money(stubs) == 1_000_000


async def test_a_barred_subscriber_gets_back_what_was_debited_and_nothing_more(stubs: Stubs) -> None:
    await stubs.subscriber(balance=1_000_000)
    d = await stubs.charging.ChargeEvent(event("d1", DEBIT, service_specific_units=2))
    for status in (admin_pb2.SUBSCRIBER_STATUS_BARRED, admin_pb2.SUBSCRIBER_STATUS_SUSPENDED):
        await stubs.admin.SetSubscriberStatus(
            admin_pb2.SetStatusRequest(subscriber=common_pb2.SubscriberId(msisdn=MSISDN), status=status)
        )
        a = await stubs.charging.ChargeEvent(event(f"plain-{status}", REFUND, service_specific_units=1000))
        assert (a.result_code, a.failed_field) == (5005, "refund_information")
        a = await stubs.charging.ChargeEvent(event(f"r-{status}", REFUND, d.refund_information))
        assert (a.result_code, a.cost_micros) == (2001, SMS)
    assert await money(stubs) == 1_000_000
    a = await stubs.charging.ChargeEvent(event("r-more", REFUND, d.refund_information))
    assert a.result_code == 5004
    # Debits stay denied.
    assert (await stubs.charging.ChargeEvent(event("d2", DEBIT))).result_code == 4010


async def test_partial_refunds_until_the_debit_is_exhausted(stubs: Stubs) -> None:
    await stubs.subscriber(balance=1_000_000)
    d = await stubs.charging.ChargeEvent(event("d1", DEBIT, service_specific_units=5))
    assert d.cost_micros == 5 * SMS
    for i, n in enumerate((2, 2, 1)):
        a = await stubs.charging.ChargeEvent(event(f"r{i}", REFUND, d.refund_information, service_specific_units=n))
        assert (a.result_code, a.cost_micros) == (2001, n * SMS)
    assert await money(stubs) == 1_000_000
    a = await stubs.charging.ChargeEvent(event("r9", REFUND, d.refund_information))
    assert a.result_code == 5004
    assert await money(stubs) == 1_000_000


async def test_a_partial_refund_re_rates_the_debit_at_the_units_left(shop: Stubs) -> None:
    # National peak on mobile-prepaid: the first 60 s for 0.09 EUR, then 0.0015 EUR a second.
    d = await shop.charging.ChargeEvent(event("d1", DEBIT, rating_group=10, called_party=NATIONAL_MOBILE, time_s=100))
    assert d.cost_micros == 90_000 + 40 * 1_500
    token = d.refund_information
    a = await shop.charging.ChargeEvent(event("r1", REFUND, token, rating_group=10, time_s=70))
    # 30 s left cost the first increment: 70 s back is the 40 s beyond it.
    assert (a.result_code, a.cost_micros) == (2001, 40 * 1_500)
    a = await shop.charging.ChargeEvent(event("r2", REFUND, token, rating_group=10, time_s=30))
    assert (a.result_code, a.cost_micros) == (2001, 90_000)
    assert await money(shop) == 10_000_000


async def test_units_go_back_to_their_bucket_and_money_to_the_balance(shop: Stubs) -> None:
    await buy(shop, "sms-10", "k1")
    start = await money(shop)
    (bucket,) = await bucket_amounts(shop)
    d = await shop.charging.ChargeEvent(event("d1", DEBIT, service_specific_units=9))
    assert d.cost_micros == 0
    assert await bucket_amounts(shop) == {bucket: 1}
    # 1 SMS left in the bucket, 2 from money: a refund gives back the money first (it was
    # drawn on last), then the bucket.
    d2 = await shop.charging.ChargeEvent(event("d2", DEBIT, service_specific_units=3))
    assert await bucket_amounts(shop) == {bucket: 0}
    price = d2.cost_micros // 2
    assert await money(shop) == start - 2 * price
    a = await shop.charging.ChargeEvent(event("r1", REFUND, d2.refund_information))
    assert (a.result_code, a.cost_micros) == (2001, price)
    a = await shop.charging.ChargeEvent(event("r2", REFUND, d2.refund_information, service_specific_units=2))
    assert (a.result_code, a.cost_micros) == (2001, price)
    assert await bucket_amounts(shop) == {bucket: 1}
    assert await money(shop) == start
    a = await shop.charging.ChargeEvent(event("r3", REFUND, d.refund_information, service_specific_units=5))
    assert (a.result_code, a.cost_micros) == (2001, 0)
    assert await bucket_amounts(shop) == {bucket: 6}
    assert await money(shop) == start


async def test_units_of_an_expired_bucket_are_not_given_back(shop: Stubs, clock: ManualClock, redis_url: str) -> None:
    await buy(shop, "sms-10", "k1")
    start = await money(shop)
    d = await shop.charging.ChargeEvent(event("d1", DEBIT, service_specific_units=4))
    clock.advance(ms=31 * 86_400_000)  # sms-10 is valid for 30 days
    a = await shop.charging.ChargeEvent(event("r1", REFUND, d.refund_information, service_specific_units=4))
    assert (a.result_code, a.cost_micros) == (2001, 0)
    assert await bucket_amounts(shop) == {}
    assert await money(shop) == start
    r = redis_client(redis_url)
    # The 6 left when it expired and the 4 refunded: as if the debit had never been.
    assert r.hget(keys.account("1"), "expired_3") == "10"
    r.close()
    a = await shop.charging.ChargeEvent(event("r2", REFUND, d.refund_information))
    assert a.result_code == 5004


async def test_a_refund_record_names_the_units_it_gave_back_to_an_expired_bucket(
    shop: Stubs, clock: ManualClock, app: App
) -> None:
    """Units given back to a bucket that has expired count as expired ("as if the debit
    had never been"): the refund's usage record must say they went back, or the system of
    record counts them used as well as expired (found by the chaos suite's clock jumps:
    units bought != used + remaining + expired)."""
    await buy(shop, "sms-10", "k1")
    (bucket,) = await bucket_amounts(shop)
    d = await shop.charging.ChargeEvent(event("d1", DEBIT, service_specific_units=4))
    clock.advance(ms=31 * 86_400_000)  # sms-10 is valid for 30 days
    a = await shop.charging.ChargeEvent(event("r1", REFUND, d.refund_information, service_specific_units=3))
    assert (a.result_code, a.cost_micros) == (2001, 0)
    # As the system of record has them (the server's relay job may have moved them already).
    assert app.cdr_relay is not None and app.database is not None
    await drain(app.cdr_relay)
    async with app.database.connection() as conn:
        cur = await conn.execute("SELECT record_id, bucket_units FROM usage_records WHERE account = '1'")
        found: dict[str, dict[str, int]] = dict(await cur.fetchall())
    assert found["1:e:d1"] == {bucket: 4}
    assert found["1:e:r1"] == {bucket: 3}


async def test_a_retransmitted_refund_is_answered_once(stubs: Stubs) -> None:
    await stubs.subscriber(balance=1_000_000)
    d = await stubs.charging.ChargeEvent(event("d1", DEBIT, service_specific_units=3))
    req = event("r1", REFUND, d.refund_information)
    answers = await asyncio.gather(*(stubs.charging.ChargeEvent(req) for _ in range(8)))
    assert len({a.SerializeToString() for a in answers}) == 1
    assert (answers[0].result_code, answers[0].cost_micros) == (2001, SMS)
    assert await money(stubs) == 1_000_000 - 2 * SMS
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.charging.ChargeEvent(event("r1", REFUND, d.refund_information, service_specific_units=2))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    # A refused refund is remembered too: the same request later is refused the same way.
    big = event("r2", REFUND, d.refund_information, service_specific_units=3)
    assert (await stubs.charging.ChargeEvent(big)).result_code == 5004
    await stubs.charging.ChargeEvent(event("r3", REFUND, d.refund_information))
    assert (await stubs.charging.ChargeEvent(big)).result_code == 5004
    assert await money(stubs) == 1_000_000 - SMS


async def test_session_usage_is_refunded_per_request_and_rating_group(stubs: Stubs) -> None:
    await stubs.subscriber(balance=1_000_000)
    i = await stubs.charging.ChargeSession(
        session_request("s1", INITIAL, 0, [{"rating_group": 10, "requested": {}}, {"rating_group": 30}])
    )
    assert i.result_code == 2001 and not i.refund_information
    u = await stubs.charging.ChargeSession(
        session_request(
            "s1",
            UPDATE,
            1,
            [{"rating_group": 10, "used": {"time_s": 90}, "requested": {}}, {"rating_group": 30, "used": {}}],
        )
    )
    assert u.rating_groups[0].cost_micros == 2 * MINUTE
    assert u.refund_information == session_token("s1", 1)
    t = await stubs.charging.ChargeSession(
        session_request("s1", TERMINATE, 2, [{"rating_group": 10, "used": {"time_s": 20}}])
    )
    assert t.rating_groups[0].cost_micros == 0  # within the minute already paid
    assert t.refund_information == session_token("s1", 2)
    assert await money(stubs) == 1_000_000 - 2 * MINUTE
    # 90 s less 60 s is 30 s: one started minute instead of two.
    a = await stubs.charging.ChargeEvent(event("r1", REFUND, u.refund_information, rating_group=10, time_s=60))
    assert (a.result_code, a.cost_micros) == (2001, MINUTE)
    a = await stubs.charging.ChargeEvent(event("r2", REFUND, u.refund_information, rating_group=30, total_octets=1))
    assert (a.result_code, a.failed_field) == (5004, "rating_group")
    a = await stubs.charging.ChargeEvent(event("r3", REFUND, t.refund_information, rating_group=10, time_s=20))
    assert (a.result_code, a.cost_micros) == (2001, 0)
    a = await stubs.charging.ChargeEvent(event("r4", REFUND, u.refund_information, rating_group=10, time_s=31))
    assert (a.result_code, a.failed_field) == (5004, "requested.time_s")
    a = await stubs.charging.ChargeEvent(event("r5", REFUND, u.refund_information, rating_group=10, time_s=30))
    assert (a.result_code, a.cost_micros) == (2001, MINUTE)
    assert await money(stubs) == 1_000_000
    # A request that debited nothing hands out no token; a retransmission the same one.
    again = await stubs.charging.ChargeSession(
        session_request(
            "s1",
            UPDATE,
            1,
            [{"rating_group": 10, "used": {"time_s": 90}, "requested": {}}, {"rating_group": 30, "used": {}}],
        )
    )
    assert again.refund_information == u.refund_information
    gone = await stubs.charging.ChargeSession(session_request("s1", UPDATE, 3, [{"rating_group": 10, "used": {}}]))
    assert gone.result_code == 5002 and not gone.refund_information


async def test_a_pool_member_refund_goes_back_to_the_pool_bucket(stubs: Stubs, clock: ManualClock) -> None:
    _company, _alice, _bob = await setup(stubs, clock)
    from tests.test_pools import ALICE

    (bucket,) = await bucket_amounts(stubs, COMPANY)
    full = (await bucket_amounts(stubs, COMPANY))[bucket]
    start = await money(stubs, ALICE)
    await stubs.charging.ChargeSession(pool_call("p1", INITIAL, 0, ALICE, requested={}))
    t = await stubs.charging.ChargeSession(pool_call("p1", TERMINATE, 1, ALICE, used={"time_s": 75}))
    assert t.rating_groups[0].cost_micros == 0
    assert (await bucket_amounts(stubs, COMPANY))[bucket] == full - 75
    a = await stubs.charging.ChargeEvent(
        event("r1", REFUND, t.refund_information, rating_group=10, msisdn=ALICE, time_s=75)
    )
    assert (a.result_code, a.cost_micros) == (2001, 0)
    assert (await bucket_amounts(stubs, COMPANY))[bucket] == full
    assert await money(stubs, ALICE) == start
    # The token is the member's: the pool's own line cannot use it.
    a = await stubs.charging.ChargeEvent(
        event("r2", REFUND, t.refund_information, rating_group=10, msisdn=COMPANY, time_s=1)
    )
    assert (a.result_code, a.failed_field) == (5004, "refund_information")


async def test_a_postpaid_refund_reverses_the_recorded_usage(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], redis_url: str
) -> None:
    b, _book = postpaid_billing
    account = await enrol(stubs, b, "C1", MSISDN)
    headroom = await money(stubs)
    d = await stubs.charging.ChargeEvent(event("d1", DEBIT, service_specific_units=3))
    assert d.result_code == 2001 and d.cost_micros > 0
    price = d.cost_micros // 3
    r = redis_client(redis_url)
    ((field, value),) = r.hgetall(keys.usage(account)).items()
    assert value == f"3,{3 * price},1"
    a = await stubs.charging.ChargeEvent(event("r1", REFUND, d.refund_information, service_specific_units=2))
    assert (a.result_code, a.cost_micros) == (2001, 2 * price)
    assert r.hgetall(keys.usage(account)) == {field: f"1,{price},2"}
    records = r.lrange(keys.usage_records(account), 0, -1)
    assert [x.split(",")[7:] for x in records] == [["3", str(3 * price), "d1"], ["-2", str(-2 * price), "r1"]]
    assert await money(stubs) == headroom - price
    # Session usage the same way: a call's usage, refunded whole, nets to nothing.
    await stubs.charging.ChargeSession(
        session_request("c1", INITIAL, 0, [{"rating_group": 10, "requested": {}}], called_party=NATIONAL_MOBILE)
    )
    t = await stubs.charging.ChargeSession(
        session_request(
            "c1", TERMINATE, 1, [{"rating_group": 10, "used": {"time_s": 90}}], called_party=NATIONAL_MOBILE
        )
    )
    assert t.rating_groups[0].cost_micros > 0
    voice = set(r.hkeys(keys.usage(account))) - {field}
    a = await stubs.charging.ChargeEvent(event("r2", REFUND, t.refund_information, rating_group=10, time_s=90))
    assert (a.result_code, a.cost_micros) == (2001, t.rating_groups[0].cost_micros)
    assert [r.hget(keys.usage(account), f) for f in voice] == ["0,0,2"]
    assert await money(stubs) == headroom - price
    r.close()


@pytest.fixture
async def short_lived(settings: Settings, clock: ManualClock) -> AsyncIterator[Stubs]:
    """A server that remembers event ids (and refund records) for 1 s."""
    application = App(dataclasses.replace(settings, idempotency_ttl_s=1), clock=clock, run_background=False)
    await application.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{application.grpc_port}")
    yield Stubs.on(channel)
    await channel.close()
    await application.stop()


async def test_a_token_expires_with_the_event_id(short_lived: Stubs, redis_url: str) -> None:
    await short_lived.subscriber(balance=1_000_000)
    d = await short_lived.charging.ChargeEvent(event("d1", DEBIT))
    r = redis_client(redis_url)
    assert 0 < r.pttl(keys.event("1", "d1")) <= 1000  # the record is kept with the answer
    r.close()
    await asyncio.sleep(1.2)
    a = await short_lived.charging.ChargeEvent(event("r1", REFUND, d.refund_information))
    assert (a.result_code, a.failed_field) == (5004, "refund_information")
    assert await money(short_lived) == 1_000_000 - SMS


# Conservation over random sequences --------------------------------------------------

# ("debit" or "call", units, 0) | ("refund", debit index, units) | ("expire", 0, 0)
Op = tuple[str, int, int]
OPS = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["debit", "call"]), st.integers(1, 150), st.just(0)),
        st.tuples(st.just("refund"), st.integers(0, 7), st.integers(1, 150)),
        st.tuples(st.just("expire"), st.just(0), st.just(0)),
    ),
    min_size=1,
    max_size=14,
)
numbers = itertools.count(1)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
async def test_random_debits_and_refunds_conserve_money_and_units(
    shop: Stubs, clock: ManualClock, redis_url: str, ops: list[Op]
) -> None:
    # A fresh line per example: national voice (first 60 s, then per second) with a 120 s
    # bundle that event debits and calls draw on first.
    msisdn = f"4917100{next(numbers):05d}"
    await shop.subscriber(msisdn, balance=10_000_000, plan="mobile-prepaid")
    await shop.topup.BuyBundle(
        topup_pb2.BuyBundleRequest(
            subscriber=common_pb2.SubscriberId(msisdn=msisdn),
            bundle_id="voice-2",
            channel=topup_pb2.CHANNEL_APP,
            idempotency_key="k",
        )
    )
    start = await money(shop, msisdn)
    account = (await shop.balance(msisdn)).account_id
    debits: list[tuple[bytes, int]] = []  # token, units not refunded yet

    def voice(action: int, token: bytes = b"", **units: int) -> charging_pb2.EventRequest:
        return event(uuid.uuid4().hex, action, token, 10, msisdn, NATIONAL_MOBILE, **units)

    async def totals() -> tuple[int, int]:
        """Money, and the units in the bucket (expired or not) plus those recorded expired."""
        r = redis_client(redis_url)
        units = int(r.hget(keys.account(account), "expired_1") or 0)
        units += sum(unpack(str(i), str(t)).amount for i, t in r.hgetall(keys.buckets(account)).items())
        r.close()
        return await money(shop, msisdn), units

    for op, a, b in ops:
        if op == "debit":
            d = await shop.charging.ChargeEvent(voice(DEBIT, time_s=a))
            assert d.result_code == 2001
            debits.append((d.refund_information, a))
        elif op == "call":
            sid = uuid.uuid4().hex
            call = [{"rating_group": 10, "requested": {}}]
            await shop.charging.ChargeSession(session_request(sid, INITIAL, 0, call, msisdn, NATIONAL_MOBILE))
            call = [{"rating_group": 10, "used": {"time_s": a}}]
            t = await shop.charging.ChargeSession(session_request(sid, TERMINATE, 1, call, msisdn, NATIONAL_MOBILE))
            assert t.result_code == 2001
            debits.append((t.refund_information, a))
        elif op == "refund" and a < len(debits):
            token, left = debits[a]
            answer = await shop.charging.ChargeEvent(voice(REFUND, token, time_s=b))
            assert answer.result_code == (2001 if b <= left else 5004)
            if b <= left:
                debits[a] = (token, left - b)
        elif op == "expire":
            clock.advance(ms=31 * 86_400_000)
        got_money, got_units = await totals()
        assert got_money <= start and got_units <= 120
    for token, left in debits:
        if left:
            assert (await shop.charging.ChargeEvent(voice(REFUND, token, time_s=left))).result_code == 2001
    # Everything refunded: the money exactly back, every unit back in the bucket or counted
    # as expired with it.
    got_money, got_units = await totals()
    assert (got_money, got_units) == (start, 120)


async def test_the_client_refunds_with_the_token_its_debit_printed(app: App, stubs: Stubs) -> None:
    await stubs.subscriber(balance=1_000_000)
    debit = await cli(app, "event", "--msisdn", MSISDN, "--action", "debit", "--event-id", "sms-1")
    token = json.loads(debit.out)["refund_information"]
    assert base64.b64decode(token) == event_token("sms-1")
    refund = ("event", "--msisdn", MSISDN, "--action", "refund")
    run = await cli(app, *refund)
    assert (run.code, json.loads(run.out)["failed_field"]) == (1, "refund_information")
    run = await cli(app, *refund, "--refund-token", "not base64!")
    assert run.code == 2 and "--refund-token" in run.err
    run = await cli(app, *refund, "--refund-token", token)
    assert (run.code, json.loads(run.out)["cost_micros"]) == (0, str(SMS))
    assert await money(stubs) == 1_000_000


async def test_a_refund_after_its_period_was_invoiced_credits_the_next_invoice(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock, redis_url: str
) -> None:
    b, _book = postpaid_billing
    account = await enrol(stubs, b, "2", MSISDN)
    d = await stubs.charging.ChargeEvent(event("d1", DEBIT, service_specific_units=3))
    price = d.cost_micros // 3
    clock.advance(ms=31 * 86_400_000)
    assert (await b.runs.run()).issued == 1
    assert len(await b.invoices_of("C2")) == 1
    a = await stubs.charging.ChargeEvent(event("r1", REFUND, d.refund_information, service_specific_units=2))
    assert (a.result_code, a.cost_micros) == (2001, 2 * price)
    r = redis_client(redis_url)
    (field,) = r.hkeys(keys.usage(account))
    assert field.startswith("2026-02|") and r.hget(keys.usage(account), field) == f"-2,{-2 * price},1"
    r.close()
    clock.advance(ms=31 * 86_400_000)
    assert (await b.runs.run()).issued == 1
    february = await b.invoice((await b.invoices_of("C2"))[-1])
    # Invoices are in cents: the refund is a negative usage line on the next invoice.
    assert [c.amount for c in february.sections[0].charges if c.kind == "USAGE"] == [-2 * price // 10_000]


async def test_a_refund_of_usage_past_the_overrun_floor_gives_back_only_what_was_billed(stubs: Stubs) -> None:
    await stubs.subscriber(balance=0)
    answers = []
    for n in range(10):
        await stubs.charging.ChargeSession(session_request(f"h{n}", INITIAL, 0, []))
        answers.append(await stubs.charging.ChargeSession(used_money(f"h{n}", 1, 10**9)))
    last = answers[-1]
    billed = last.rating_groups[0].cost_micros
    assert billed == FLOOR - 9 * 10**9 and 0 < billed < 10**9  # the rest went unbilled
    token = last.refund_information

    def refund(event_id: str, micros: int) -> charging_pb2.EventRequest:
        return event(event_id, REFUND, token, rating_group=CONTENT, money_micros=micros)

    a = await stubs.charging.ChargeEvent(refund("r1", 10**9 - billed))
    assert (a.result_code, a.cost_micros) == (2001, 0)  # the unbilled units first: nothing
    a = await stubs.charging.ChargeEvent(refund("r2", billed))
    assert (a.result_code, a.cost_micros) == (2001, billed)
    assert (await stubs.charging.ChargeEvent(refund("r3", 1))).result_code == 5004
    assert await money(stubs) == -9 * 10**9
