"""Subscribers and tariffs through the admin service."""

from __future__ import annotations

import grpc
import pytest

from charging.v1 import admin_pb2, common_pb2
from tests.conftest import INITIAL, Stubs, session_request


def tariff(tariff_id: str = "cheap", price: int = 1_000) -> admin_pb2.Tariff:
    t = admin_pb2.Tariff(id=tariff_id, currency="KES")
    t.rates.add(
        rating_group=10,
        name="voice",
        unit=common_pb2.UNIT_KIND_TIME,
        increment=1,
        price_micros=price,
        default_quota=60,
        validity_time_s=300,
    )
    return t


async def test_tariffs_are_stored_immutable_and_used_for_rating(stubs: Stubs) -> None:
    stored = await stubs.admin.PutTariff(tariff())
    assert stored.rates[0].price_micros == 1_000
    assert await stubs.admin.PutTariff(tariff()) == stored  # the same document again is fine
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.admin.PutTariff(tariff(price=2_000))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert (await stubs.admin.GetTariff(admin_pb2.TariffRef(id="cheap"))) == stored

    sub = await stubs.subscriber(balance=100_000, tariff="cheap")
    assert (sub.currency, sub.tariff_id) == ("KES", "cheap")
    a = await stubs.charging.ChargeSession(session_request("t", INITIAL, 0, [{"rating_group": 10, "requested": {}}]))
    assert (a.rating_groups[0].granted.time_s, a.rating_groups[0].validity_time_s) == (60, 300)
    assert (await stubs.balance()).reserved_micros == 60_000


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda t: setattr(t, "currency", "kes"), "currency"),
        (lambda t: setattr(t.rates[0], "increment", 0), "rates[0].increment"),
        (lambda t: setattr(t.rates[0], "unit", 0), "rates[0].unit"),
        (lambda t: setattr(t.rates[0], "final_unit_action", 2), "rates[0].redirect_address"),
    ],
)
async def test_bad_tariffs_are_rejected_naming_the_field(stubs: Stubs, mutate, field: str) -> None:
    t = tariff()
    mutate(t)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.admin.PutTariff(t)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.admin.GetTariff(admin_pb2.TariffRef(id="cheap"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_subscriber_identities_are_unique(stubs: Stubs) -> None:
    await stubs.subscriber(msisdn="491700000001", imsi="262010000000001")
    for msisdn, imsi in (("491700000001", ""), ("491700000002", "262010000000001")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.subscriber(msisdn=msisdn, imsi=imsi)
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    # A failed create leaves nothing behind: the free MSISDN is still free.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.balance("491700000002")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    created = await stubs.subscriber(msisdn="491700000002", imsi="262010000000002")
    assert created.imsi == "262010000000002"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"msisdn": "0049"}, "msisdn"),
        ({"imsi": "12"}, "imsi"),
        ({"tariff": "nope"}, "tariff_id"),
        ({"balance": -1}, "initial_balance_micros"),
    ],
)
async def test_bad_subscribers_name_the_field(stubs: Stubs, kwargs, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.subscriber(**kwargs)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (err.value.details() or "")
