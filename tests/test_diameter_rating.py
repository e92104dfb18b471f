"""What Service-Information says reaches rating over Diameter: the called party of an IMS
call (zone and band), a tariff change inside a grant (Tariff-Time-Change out,
Tariff-Change-Usage in), and the visited network of a data session (roaming). The
expected prices are those ``tests/test_plans.py`` holds the gRPC door to."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from diameter.message import Message
from diameter.message import constants as c
from diameter.message.avp import Avp

from charging.clock import ManualClock
from charging.server import App
from charging.settings import Settings
from tests.conftest import Stubs, set_time
from tests.diameter_client import Client, find, granted, msccs, result_code

TGPP = c.VENDOR_TGPP
MSISDN = "491700000001"
BEFORE, AFTER = c.E_TARIFF_CHANGE_USAGE_UNIT_BEFORE_TARIFF_CHANGE, c.E_TARIFF_CHANGE_USAGE_UNIT_AFTER_TARIFF_CHANGE


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, diameter_address="127.0.0.1:0")


@pytest.fixture
async def client(app: App) -> AsyncIterator[Client]:
    assert app.diameter is not None
    cl = await Client.connect(app.diameter.port, origin_host="scscf.ims.example", origin_realm="ims.example")
    assert result_code(await cl.cer()) == 2001
    yield cl
    await cl.close()


def avp(code: int, value: object, vendor: int = 0) -> Avp:
    return Avp.new(code, vendor, value=value)


def ims_call(client: Client, kind: int, number: int, mscc: list[Avp]) -> Message:
    ccr = client.ccr("scscf.ims.example;1;call", kind, number, context="32260@3gpp.org")
    ccr.add_subscription_id(subscription_id_type=c.E_SUBSCRIPTION_ID_TYPE_END_USER_E164, subscription_id_data=MSISDN)
    ccr.append_avp(avp(c.AVP_MULTIPLE_SERVICES_CREDIT_CONTROL, [*mscc, avp(c.AVP_RATING_GROUP, 10)]))
    ims = avp(
        c.AVP_TGPP_IMS_INFORMATION,
        [
            avp(c.AVP_TGPP_ROLE_OF_NODE, c.E_ROLE_OF_NODE_ORIGINATING_ROLE, TGPP),
            avp(c.AVP_TGPP_NODE_FUNCTIONALITY, 0, TGPP),  # S-CSCF
            avp(c.AVP_TGPP_CALLED_PARTY_ADDRESS, "tel:+491711234567", TGPP),
        ],
        TGPP,
    )
    ccr.append_avp(avp(c.AVP_TGPP_SERVICE_INFORMATION, [ims], TGPP))
    return ccr


def used(seconds: int, usage: int) -> Avp:
    return avp(c.AVP_USED_SERVICE_UNIT, [avp(c.AVP_TARIFF_CHANGE_USAGE, usage), avp(c.AVP_CC_TIME, seconds)])


async def test_an_ims_call_across_a_band_change_prices_each_side(
    stubs: Stubs, client: Client, clock: ManualClock
) -> None:
    change = datetime.fromisoformat("2026-11-26T20:00:00+01:00")
    set_time(clock, "2026-11-26T19:58:00+01:00")
    await stubs.subscriber(MSISDN, balance=50_000_000, plan="mobile-prepaid")
    cca = await client.send(ims_call(client, 1, 0, [avp(c.AVP_REQUESTED_SERVICE_UNIT, [])]), application=4)
    assert result_code(cca) == 2001
    (mscc,) = msccs(cca)
    assert granted(mscc) == {"CC-Time": 300}  # the rate's default quota: the RSU was empty
    assert find(mscc, c.AVP_TARIFF_TIME_CHANGE).value == change.astimezone(UTC).replace(tzinfo=None)  # type: ignore[union-attr]
    # sized at the dearer side (peak): 300 s = 90000 + 240 x 1500
    assert (await stubs.balance(MSISDN)).reserved_micros == 90_000 + 240 * 1_500

    set_time(clock, "2026-11-26T20:01:00+01:00")
    update = ims_call(client, 2, 1, [avp(c.AVP_REQUESTED_SERVICE_UNIT, []), used(120, BEFORE), used(60, AFTER)])
    cca = await client.send(update, application=4)
    assert result_code(cca) == 2001
    (mscc,) = msccs(cca)
    assert find(mscc, c.AVP_TARIFF_TIME_CHANGE) is None  # no change within this grant
    account = await stubs.balance(MSISDN)
    # 120 s before 20:00 at peak, then 60 s after at off-peak (750 per second)
    assert account.balance_micros == 50_000_000 - ((90_000 + 60 * 1_500) + 60 * 750)
    assert account.reserved_micros == 300 * 750


async def test_a_data_session_in_a_visited_network_gets_the_roaming_quota(stubs: Stubs, client: Client) -> None:
    await stubs.subscriber(MSISDN, balance=50_000_000, plan="mobile-prepaid")
    ccr = client.ccr("pgw;2;roaming", 1, 0)
    ccr.add_subscription_id(subscription_id_type=c.E_SUBSCRIPTION_ID_TYPE_END_USER_E164, subscription_id_data=MSISDN)
    ccr.append_avp(
        avp(
            c.AVP_MULTIPLE_SERVICES_CREDIT_CONTROL, [avp(c.AVP_REQUESTED_SERVICE_UNIT, []), avp(c.AVP_RATING_GROUP, 30)]
        )
    )
    ps = avp(c.AVP_TGPP_PS_INFORMATION, [avp(c.AVP_TGPP_3GPP_SGSN_MCC_MNC, "20801", TGPP)], TGPP)
    ccr.append_avp(avp(c.AVP_TGPP_SERVICE_INFORMATION, [ps], TGPP))
    cca = await client.send(ccr, application=4)
    assert result_code(cca) == 2001
    assert granted(msccs(cca)[0]) == {"CC-Total-Octets": 1_048_576}  # the roaming quota

    bad = client.ccr("pgw;3;bad-plmn", 1, 0)
    bad.add_subscription_id(subscription_id_type=c.E_SUBSCRIPTION_ID_TYPE_END_USER_E164, subscription_id_data=MSISDN)
    plmn = avp(c.AVP_TGPP_3GPP_SGSN_MCC_MNC, "208-01", TGPP)
    bad.append_avp(avp(c.AVP_TGPP_SERVICE_INFORMATION, [avp(c.AVP_TGPP_PS_INFORMATION, [plmn], TGPP)], TGPP))
    cca = await client.send(bad, application=4)
    assert result_code(cca) == 5004
    assert find(cca.avps, c.AVP_FAILED_AVP).value[0].value == "208-01"  # type: ignore[union-attr]
