"""The Nchf door under the process's in-flight limit (CHARGING_MAX_IN_FLIGHT, the gRPC
API's admission slots): beyond it a request is answered 503 NF_CONGESTION with
Retry-After in a problem+json, having changed nothing, and gRPC calls meet the same
bound. Requests are held in flight without sleeping: ``CLIENT PAUSE ... WRITE`` holds
their scripts in Redis until the test says ``CLIENT UNPAUSE`` (as tests/test_admission.py)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
import redis

from charging.clock import ManualClock
from charging.server import App
from charging.settings import Settings
from tests.conftest import Stubs, sms_request
from tests.test_admission import in_flight, rejections
from tests.test_nchf import IMSI, KB, MSISDN, ROOT, request


@pytest.fixture
async def small(settings: Settings, clock: ManualClock) -> AsyncIterator[App]:
    """A CHF that works on at most 2 requests at once."""
    changed = dataclasses.replace(settings, nchf_address="127.0.0.1:0", max_in_flight=2)
    application = App(changed, clock=clock, run_background=False)
    await application.start()
    yield application
    await application.stop()


def create(charging_id: int) -> dict[str, Any]:
    body = request(0, [{"ratingGroup": 30, "requestedUnit": {}}])
    body["pDUSessionChargingInformation"]["chargingId"] = charging_id
    return body


async def test_requests_beyond_the_limit_get_503_with_retry_after_and_change_nothing(
    small: App, r: redis.Redis
) -> None:
    assert small.nchf is not None
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{small.grpc_port}") as channel,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{small.nchf.port}", http1=False, http2=True) as http,
    ):
        stubs = Stubs.on(channel)
        await stubs.subscriber(MSISDN, balance=1_000_000, imsi=IMSI)
        refused_before = rejections("Nchf.create", "in_flight")

        r.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
        try:
            held = [asyncio.ensure_future(http.post(ROOT, json=create(n))) for n in (1, 2)]
            await in_flight(small, 2)
            busy = await http.post(ROOT, json=create(3))
            assert busy.status_code == 503
            assert busy.headers["content-type"] == "application/problem+json"
            assert busy.headers["retry-after"] == "1"
            assert busy.json() == {"title": "server overloaded: retry later", "status": 503, "cause": "NF_CONGESTION"}
            # The slots are the process's: a gRPC call meets the same bound.
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stubs.charging.ChargeEvent(sms_request("sms-1"))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            r.execute_command("CLIENT", "UNPAUSE")

        assert [answer.status_code for answer in await asyncio.gather(*held)] == [201, 201]
        assert rejections("Nchf.create", "in_flight") == refused_before + 1
        quota = 10 * 1024 * KB  # the default quota, 10 MiB, held per session
        assert (await stubs.balance(MSISDN)).reserved_micros == 2 * quota
        # The refused create left no trace: sent again, it opens its session.
        again = await http.post(ROOT, json=create(3))
        assert again.status_code == 201, again.text
        assert (await stubs.balance(MSISDN)).reserved_micros == 3 * quota
        assert small.admission is not None and small.admission.in_flight == 0
