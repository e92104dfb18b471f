"""Recharges and balance queries through gRPC on a real Redis."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from charging.money import MAX_BALANCE
from charging.v1 import common_pb2, topup_pb2
from tests.conftest import Stubs


def recharge(amount: int, key: str, channel: int = topup_pb2.CHANNEL_RETAIL, msisdn: str = "491700000001"):
    return topup_pb2.RechargeRequest(
        subscriber=common_pb2.SubscriberId(msisdn=msisdn), amount_micros=amount, channel=channel, idempotency_key=key
    )


async def test_recharge_credits_and_returns_the_new_balance(stubs: Stubs) -> None:
    await stubs.subscriber(balance=1_000_000)
    a = await stubs.topup.Recharge(recharge(5_000_000, "k1"))
    assert (a.balance.balance_micros, a.balance.available_micros, a.balance.currency) == (6_000_000, 6_000_000, "EUR")
    assert not a.replayed
    b = await stubs.topup.GetBalance(
        topup_pb2.BalanceRequest(subscriber=common_pb2.SubscriberId(msisdn="491700000001"))
    )
    assert b.balance_micros == 6_000_000


async def test_repeated_key_returns_the_first_answer_and_credits_once(stubs: Stubs) -> None:
    await stubs.subscriber(balance=0)
    answers = await asyncio.gather(*(stubs.topup.Recharge(recharge(2_500_000, "same")) for _ in range(10)))
    assert {a.balance.balance_micros for a in answers} == {2_500_000}
    assert sum(not a.replayed for a in answers) == 1
    assert (await stubs.balance()).balance_micros == 2_500_000
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.topup.Recharge(recharge(9_000_000, "same"))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert (await stubs.balance()).balance_micros == 2_500_000


@pytest.mark.parametrize(
    ("req", "field"),
    [
        (recharge(0, "k"), "amount_micros"),
        (recharge(-5, "k"), "amount_micros"),
        (recharge(1, ""), "idempotency_key"),
        (recharge(1, "k", channel=topup_pb2.CHANNEL_UNSPECIFIED), "channel"),
        (recharge(1, "k", msisdn="12"), "subscriber.msisdn"),
    ],
)
async def test_bad_recharges_name_the_field_and_change_nothing(stubs: Stubs, req, field: str) -> None:
    await stubs.subscriber(balance=100)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.topup.Recharge(req)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (err.value.details() or "")
    assert (await stubs.balance()).balance_micros == 100


async def test_unknown_subscriber_and_balance_ceiling(stubs: Stubs) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.topup.Recharge(recharge(1, "k", msisdn="491799999999"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    await stubs.subscriber(balance=MAX_BALANCE - 10)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.topup.Recharge(recharge(11, "k"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (await stubs.balance()).balance_micros == MAX_BALANCE - 10
