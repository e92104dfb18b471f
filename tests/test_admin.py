"""Subscribers through the admin service."""

from __future__ import annotations

import grpc
import pytest

from tests.conftest import Stubs


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
        ({"plan": "nope"}, "plan_id"),
        ({"balance": -1}, "initial_balance_micros"),
    ],
)
async def test_bad_subscribers_name_the_field(stubs: Stubs, kwargs, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.subscriber(**kwargs)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (err.value.details() or "")
