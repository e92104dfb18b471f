"""Event-based charging through gRPC on a real Redis."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from charging.v1 import charging_pb2, common_pb2
from tests.conftest import Stubs

SMS = 50_000


def event(
    event_id: str, action: int, rating_group: int = 20, msisdn: str = "491700000001", **units: int
) -> charging_pb2.EventRequest:
    req = charging_pb2.EventRequest(
        event_id=event_id, action=action, subscriber=common_pb2.SubscriberId(msisdn=msisdn), rating_group=rating_group
    )
    for k, v in (units or {"service_specific_units": 1}).items():
        setattr(req.requested, k, v)
    return req


DEBIT = charging_pb2.REQUESTED_ACTION_DIRECT_DEBITING
REFUND = charging_pb2.REQUESTED_ACTION_REFUND_ACCOUNT
CHECK = charging_pb2.REQUESTED_ACTION_CHECK_BALANCE
PRICE = charging_pb2.REQUESTED_ACTION_PRICE_ENQUIRY


async def test_direct_debit_is_all_or_nothing(stubs: Stubs) -> None:
    await stubs.subscriber(balance=120_000)
    a = await stubs.charging.ChargeEvent(event("e1", DEBIT, service_specific_units=2))
    assert (a.result_code, a.cost_micros, a.balance_micros, a.granted.service_specific_units) == (
        2001,
        100_000,
        20_000,
        2,
    )
    a = await stubs.charging.ChargeEvent(event("e2", DEBIT))
    assert a.result_code == 4012
    assert not a.HasField("granted")
    assert (await stubs.balance()).balance_micros == 20_000


async def test_each_event_id_is_applied_once(stubs: Stubs) -> None:
    await stubs.subscriber(balance=1_000_000)
    req = event("once", DEBIT)
    answers = await asyncio.gather(*(stubs.charging.ChargeEvent(req) for _ in range(8)))
    assert len({a.SerializeToString() for a in answers}) == 1
    assert (await stubs.balance()).balance_micros == 1_000_000 - SMS
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.charging.ChargeEvent(event("once", DEBIT, service_specific_units=3))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert (await stubs.balance()).balance_micros == 1_000_000 - SMS


async def test_a_refund_credits_what_its_debit_took_once(stubs: Stubs) -> None:
    await stubs.subscriber(balance=3 * SMS)
    d = await stubs.charging.ChargeEvent(event("d1", DEBIT, service_specific_units=3))
    req = event("r1", REFUND, service_specific_units=3)
    req.refund_information = d.refund_information
    a = await stubs.charging.ChargeEvent(req)
    assert (a.result_code, a.balance_micros) == (2001, 3 * SMS)
    await stubs.charging.ChargeEvent(req)
    assert (await stubs.balance()).balance_micros == 3 * SMS


async def test_check_balance_and_price_enquiry_change_nothing(stubs: Stubs) -> None:
    await stubs.subscriber(balance=70_000)
    a = await stubs.charging.ChargeEvent(event("", CHECK))
    assert (a.result_code, a.check_balance_result) == (2001, charging_pb2.CHECK_BALANCE_RESULT_ENOUGH_CREDIT)
    a = await stubs.charging.ChargeEvent(event("", CHECK, service_specific_units=2))
    assert a.check_balance_result == charging_pb2.CHECK_BALANCE_RESULT_NO_CREDIT
    a = await stubs.charging.ChargeEvent(event("", PRICE, rating_group=10, time_s=61))
    assert (a.result_code, a.cost_micros) == (2001, 200_000)
    a = await stubs.charging.ChargeEvent(event("", PRICE, rating_group=30, total_octets=1025))
    assert a.cost_micros == 20
    b = await stubs.balance()
    assert (b.balance_micros, b.reserved_micros) == (70_000, 0)


async def test_event_errors_are_answered_or_rejected_by_field(stubs: Stubs) -> None:
    await stubs.subscriber(balance=1_000_000)
    a = await stubs.charging.ChargeEvent(event("x1", DEBIT, rating_group=99))
    assert (a.result_code, a.failed_field) == (5031, "rating_group")
    a = await stubs.charging.ChargeEvent(event("x2", DEBIT, rating_group=10, total_octets=5))
    assert (a.result_code, a.failed_field) == (5005, "requested.time_s")
    a = await stubs.charging.ChargeEvent(event("x3", DEBIT, rating_group=40, time_s=5))
    assert a.result_code == 4011
    a = await stubs.charging.ChargeEvent(event("x4", DEBIT, msisdn="491799999999"))
    assert a.result_code == 5030
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.charging.ChargeEvent(event("", DEBIT))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "event_id" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.charging.ChargeEvent(event("x5", 0))
    assert "action" in (err.value.details() or "")
    assert (await stubs.balance()).balance_micros == 1_000_000


async def test_a_retransmitted_debit_without_the_cached_plan_is_answered_identically(stubs: Stubs, app) -> None:
    await stubs.subscriber(balance=1_000_000)
    first = await stubs.charging.ChargeEvent(event("cold", DEBIT))
    app.events.ctx.directory._plans.clear()
    again = await stubs.charging.ChargeEvent(event("cold", DEBIT))
    assert again.SerializeToString() == first.SerializeToString()
    assert (await stubs.balance()).balance_micros == 1_000_000 - SMS
