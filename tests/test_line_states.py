"""Charging honours the line's state: barred outgoing keeps incoming and emergency,
suspended keeps only emergency."""

from __future__ import annotations

import pytest

from charging.v1 import admin_pb2, charging_pb2, common_pb2
from tests.conftest import INITIAL, Stubs, session_request, sms_request

MSISDN = "491700000001"
WHO = common_pb2.SubscriberId(msisdn=MSISDN)
MO, MT = charging_pb2.DIRECTION_ORIGINATING, charging_pb2.DIRECTION_TERMINATING


async def set_status(stubs: Stubs, status: int) -> None:
    await stubs.admin.SetSubscriberStatus(admin_pb2.SetStatusRequest(subscriber=WHO, status=status))


async def call(
    stubs: Stubs, sid: str, called: str, direction: int, rating_group: int = 10
) -> charging_pb2.SessionAnswer:
    req = session_request(sid, INITIAL, 0, [{"rating_group": rating_group, "requested": {}}], called_party=called)
    req.direction = direction  # type: ignore[assignment]
    return await stubs.charging.ChargeSession(req)


async def sms(stubs: Stubs, event_id: str, direction: int) -> charging_pb2.EventAnswer:
    return await stubs.charging.ChargeEvent(sms_request(event_id, direction=direction))


@pytest.mark.parametrize(
    ("status", "outgoing", "incoming"),
    [
        (admin_pb2.SUBSCRIBER_STATUS_ACTIVE, 2001, 2001),
        (admin_pb2.SUBSCRIBER_STATUS_BARRED_OUTGOING, 4010, 2001),
        (admin_pb2.SUBSCRIBER_STATUS_SUSPENDED, 4010, 4010),
        (admin_pb2.SUBSCRIBER_STATUS_BARRED, 4010, 4010),
    ],
)
async def test_line_states(stubs: Stubs, status: int, outgoing: int, incoming: int) -> None:
    await stubs.subscriber(MSISDN, balance=10_000_000, plan="mobile-prepaid")
    await set_status(stubs, status)
    assert (await call(stubs, "mo", "491711234567", MO)).result_code == outgoing
    assert (await call(stubs, "mt", "491711234567", MT)).result_code == incoming
    assert (await call(stubs, "data", "", MO, rating_group=30)).result_code == outgoing
    assert (await sms(stubs, "s-mo", MO)).result_code == outgoing
    assert (await sms(stubs, "s-mt", MT)).result_code == incoming
    emergency = await call(stubs, "112", "112", MO)
    assert (emergency.result_code, emergency.rating_groups[0].result_code) == (4011, 4011)
    sub = await stubs.balance(MSISDN)
    assert sub.status == status
    if outgoing == 4010 and incoming == 4010:
        assert sub.reserved_micros == 0
