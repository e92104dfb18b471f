"""The Diameter door under the process's in-flight limit (CHARGING_MAX_IN_FLIGHT, the slots
gRPC and Nchf draw on, charging/admission.py): beyond it a CCR is answered 3004
DIAMETER_TOO_BUSY (E bit) at once, having changed nothing, while DWR is still answered;
a gRPC call meets the same bound while CCRs hold the slots. Requests are held in flight
without sleeping: ``CLIENT PAUSE ... WRITE`` holds their scripts in Redis until the test
says ``CLIENT UNPAUSE`` (as tests/test_admission.py)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import grpc
import pytest
import redis
from diameter.message import Message
from diameter.message import constants as c
from diameter.message.commands.credit_control import RequestedServiceUnit

from charging.clock import ManualClock
from charging.server import App
from charging.settings import Settings
from tests.conftest import Stubs, sms_request
from tests.diameter_client import Client, result_code
from tests.test_admission import in_flight, rejections

MSISDN = "491700000001"


@pytest.fixture
async def small(settings: Settings, clock: ManualClock) -> AsyncIterator[App]:
    """A server that works on at most 2 requests at once, with a Diameter door."""
    changed = dataclasses.replace(settings, diameter_address="127.0.0.1:0", max_in_flight=2)
    application = App(changed, clock=clock, run_background=False)
    await application.start()
    yield application
    await application.stop()


def initial(pgw: Client, n: int) -> Message:
    ccr = pgw.ccr(f"pgw.test.example;{n};data", 1, 0)
    ccr.add_subscription_id(subscription_id_type=c.E_SUBSCRIPTION_ID_TYPE_END_USER_E164, subscription_id_data=MSISDN)
    ccr.add_multiple_services_credit_control(
        requested_service_unit=RequestedServiceUnit(cc_total_octets=1_000_000), rating_group=30
    )
    return ccr


async def test_ccrs_beyond_the_shared_limit_get_3004_and_change_nothing(small: App, r: redis.Redis) -> None:
    assert small.diameter is not None and small.admission is not None
    assert small.diameter.admission is small.admission  # one set of slots per process
    pgw = await Client.connect(small.diameter.port)
    try:
        assert result_code(await pgw.cer()) == 2001
        async with grpc.aio.insecure_channel(f"127.0.0.1:{small.grpc_port}") as channel:
            stubs = Stubs.on(channel)
            await stubs.subscriber(MSISDN, balance=1_000_000)
            refused_before = rejections("Diameter.CCR-I", "in_flight")

            r.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
            try:
                held = [asyncio.ensure_future(pgw.send(initial(pgw, n), application=4)) for n in (1, 2)]
                await in_flight(small, 2)
                busy = await pgw.send(initial(pgw, 3), application=4)
                assert result_code(busy) == 3004
                assert busy.header.is_error  # a protocol error: the E bit (RFC 6733 7.1.3)
                assert result_code(await pgw.dwr()) == 2001  # the base protocol is never refused
                # The slots are the process's: a gRPC call meets the same bound.
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stubs.charging.ChargeEvent(sms_request("sms-1"))
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            finally:
                r.execute_command("CLIENT", "UNPAUSE")

            assert [result_code(answer) for answer in await asyncio.gather(*held)] == [2001, 2001]
            assert rejections("Diameter.CCR-I", "in_flight") == refused_before + 1
            reserved = (await stubs.balance(MSISDN)).reserved_micros
            assert reserved > 0
            # The refused CCR-I left no trace: sent again, it opens its session.
            again = await pgw.send(initial(pgw, 3), application=4)
            assert result_code(again) == 2001
            assert (await stubs.balance(MSISDN)).reserved_micros == reserved * 3 // 2
            assert small.admission.in_flight == 0
    finally:
        await pgw.close()
