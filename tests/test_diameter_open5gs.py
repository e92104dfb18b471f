"""Open5GS's SMF/PGW as it is: a CCR-I/U/T sequence shaped exactly as its Gy client
builds it, replayed against the door, checking the answers it reads and the balance.

The shapes follow open5gs/open5gs at commit 8f25f3beaf131a5e979534dfda4a27765321dfd0
(2026-08-07), ``src/smf/gy-path.c`` ``smf_gy_send_ccr`` and its fill_* helpers, and
``src/smf/fd-path.c`` ``smf_fd_msg_avp_add_3gpp_uli``:

* the AVP order of ``smf_gy_send_ccr``: Session-Id, Origin-Host, Origin-Realm,
  Destination-Realm, Auth-Application-Id 4, Service-Context-Id 32251@3gpp.org,
  CC-Request-Type, CC-Request-Number (0 on INITIAL, then +1), Destination-Host (once it
  has an answer), Event-Timestamp (4 octets, NTP), Subscription-Id IMSI then
  Subscription-Id E.164, Termination-Cause LOGOUT (TERMINATE only), Requested-Action
  DIRECT_DEBITING on every request, AoC-Request-Type AoC_FULL, Multiple-Services-Indicator
  NOT_SUPPORTED (INITIAL only), one MSCC, Service-Information;
* the MSCC (``fill_multiple_services_credit_control_ccr``): no Rating-Group, no
  Service-Identifier; Requested-Service-Unit with CC-Total-Octets 1,000,000 (INITIAL and
  UPDATE); Used-Service-Unit with Reporting-Reason THRESHOLD/QUOTA_EXHAUSTED inside it,
  CC-Time, CC-Input-Octets and CC-Output-Octets as deltas (UPDATE and TERMINATE);
  Reporting-Reason FINAL/VALIDITY_TIME at MSCC level; QoS-Information;
* PS-Information (``fill_ps_information``): 3GPP-Charging-Id, 3GPP-PDP-Type (INITIAL),
  PDP-Address, SGSN-Address, GGSN-Address, Called-Station-Id, 3GPP-Selection-Mode,
  3GPP-Charging-Characteristics, 3GPP-SGSN-MCC-MNC, 3GPP-NSAPI, 3GPP-MS-TimeZone,
  3GPP-User-Location-Info (TAI and ECGI), 3GPP-RAT-Type.

What its ``smf_gy_cca_cb`` reads back: CC-Request-Number, Result-Code (or
Experimental-Result), Origin-Host, Origin-Realm, CC-Request-Type, and per MSCC
Result-Code, Granted-Service-Unit, Validity-Time, Time- and Volume-Quota-Threshold and
Final-Unit-Indication. AVP flags are those of python-diameter's dictionary.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from diameter.message import Message, MessageHeader
from diameter.message import constants as c
from diameter.message.avp import Avp

from charging.server import App
from charging.settings import Settings
from tests.conftest import Stubs
from tests.diameter_client import Client, find, granted, msccs, result_code

TGPP = c.VENDOR_TGPP
IMSI = "999700000000001"
MSISDN = "491700000001"
INITIAL, UPDATE, TERMINATE = 1, 2, 3
THRESHOLD, FINAL, QUOTA_EXHAUSTED, VALIDITY_TIME = 1, 2, 3, 4


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, diameter_address="127.0.0.1:0")


@pytest.fixture
async def smf(app: App) -> AsyncIterator[Client]:
    assert app.diameter is not None
    client = await Client.connect(app.diameter.port, origin_host="smf.localdomain", origin_realm="localdomain")
    assert result_code(await client.cer()) == 2001
    yield client
    await client.close()


def avp(code: int, value: object, vendor: int = 0) -> Avp:
    return Avp.new(code, vendor, value=value)


def qos_information() -> Avp:
    return avp(
        c.AVP_TGPP_QOS_INFORMATION,
        [
            avp(c.AVP_TGPP_QOS_CLASS_IDENTIFIER, 9, TGPP),
            avp(
                c.AVP_TGPP_ALLOCATION_RETENTION_PRIORITY,
                [
                    avp(c.AVP_TGPP_PRIORITY_LEVEL, 8, TGPP),
                    avp(c.AVP_TGPP_PRE_EMPTION_CAPABILITY, 1, TGPP),
                    avp(c.AVP_TGPP_PRE_EMPTION_VULNERABILITY, 1, TGPP),
                ],
                TGPP,
            ),
            avp(c.AVP_TGPP_APN_AGGREGATE_MAX_BITRATE_UL, 1_000_000_000, TGPP),
            avp(c.AVP_TGPP_APN_AGGREGATE_MAX_BITRATE_DL, 1_000_000_000, TGPP),
        ],
        TGPP,
    )


def service_information(request_type: int) -> Avp:
    ps = [avp(c.AVP_TGPP_3GPP_CHARGING_ID, struct.pack("!I", 0x0A2D0001), TGPP)]
    if request_type == INITIAL:
        ps.append(avp(c.AVP_TGPP_3GPP_PDP_TYPE, 0, TGPP))  # IPv4
    ps += [
        avp(c.AVP_TGPP_PDP_ADDRESS, "10.45.0.2", TGPP),
        avp(c.AVP_TGPP_SGSN_ADDRESS, "127.0.0.3", TGPP),
        avp(c.AVP_TGPP_GGSN_ADDRESS, "127.0.0.4", TGPP),
        avp(c.AVP_CALLED_STATION_ID, "internet"),
        avp(c.AVP_TGPP_3GPP_SELECTION_MODE, "0", TGPP),
        avp(c.AVP_TGPP_3GPP_CHARGING_CHARACTERISTICS, "0800", TGPP),
        avp(c.AVP_TGPP_3GPP_SGSN_MCC_MNC, "26201", TGPP),
        avp(c.AVP_TGPP_3GPP_NSAPI, bytes([5]), TGPP),  # the default bearer's EBI
        avp(c.AVP_TGPP_3GPP_MS_TIMEZONE, bytes([0x40, 0x00]), TGPP),
        # Type 130 (TAI and ECGI): TAI (PLMN 262-01, TAC 1), ECGI (PLMN, cell 0x19b).
        avp(c.AVP_TGPP_3GPP_USER_LOCATION_INFO, bytes.fromhex("82" + "62f210" + "0001" + "62f210" + "0000019b"), TGPP),
        avp(c.AVP_TGPP_3GPP_RAT_TYPE, bytes([6]), TGPP),  # EUTRAN
    ]
    return avp(c.AVP_TGPP_SERVICE_INFORMATION, [avp(c.AVP_TGPP_PS_INFORMATION, ps, TGPP)], TGPP)


def ccr(
    smf: Client,
    request_type: int,
    number: int,
    *,
    used: tuple[int, int, int] | None = None,
    usu_reason: int = 0,
    mscc_reason: int = 0,
    peer_host: str = "",
) -> Message:
    """One CCR as ``smf_gy_send_ccr`` builds it; ``used`` = (seconds, uplink, downlink) deltas."""
    avps = [
        avp(c.AVP_SESSION_ID, "smf.localdomain;1732968000;1;app_gy"),
        avp(c.AVP_ORIGIN_HOST, b"smf.localdomain"),
        avp(c.AVP_ORIGIN_REALM, b"localdomain"),
        avp(c.AVP_DESTINATION_REALM, b"localdomain"),
        avp(c.AVP_AUTH_APPLICATION_ID, 4),
        avp(c.AVP_SERVICE_CONTEXT_ID, "32251@3gpp.org"),
        avp(c.AVP_CC_REQUEST_TYPE, request_type),
        avp(c.AVP_CC_REQUEST_NUMBER, number),
    ]
    if peer_host:
        avps.append(avp(c.AVP_DESTINATION_HOST, peer_host.encode()))
    avps += [
        avp(c.AVP_EVENT_TIMESTAMP, datetime(2026, 11, 30, 12, 0, tzinfo=UTC)),
        avp(c.AVP_SUBSCRIPTION_ID, [avp(c.AVP_SUBSCRIPTION_ID_TYPE, 1), avp(c.AVP_SUBSCRIPTION_ID_DATA, IMSI)]),
        avp(c.AVP_SUBSCRIPTION_ID, [avp(c.AVP_SUBSCRIPTION_ID_TYPE, 0), avp(c.AVP_SUBSCRIPTION_ID_DATA, MSISDN)]),
    ]
    if request_type == TERMINATE:
        avps.append(avp(c.AVP_TERMINATION_CAUSE, 1))  # DIAMETER_LOGOUT
    avps += [avp(c.AVP_REQUESTED_ACTION, 0), avp(c.AVP_TGPP_AOC_REQUEST_TYPE, 1, TGPP)]  # DIRECT_DEBITING, AoC_FULL
    if request_type == INITIAL:
        avps.append(avp(c.AVP_MULTIPLE_SERVICES_INDICATOR, 0))  # MULTIPLE_SERVICES_NOT_SUPPORTED
    mscc: list[Avp] = []
    if request_type in (INITIAL, UPDATE):
        mscc.append(avp(c.AVP_REQUESTED_SERVICE_UNIT, [avp(c.AVP_CC_TOTAL_OCTETS, 1_000_000)]))
    if request_type in (UPDATE, TERMINATE):
        assert used is not None
        usu = [avp(c.AVP_TGPP_3GPP_REPORTING_REASON, usu_reason, TGPP)] if usu_reason else []
        usu += [
            avp(c.AVP_CC_TIME, used[0]),
            avp(c.AVP_CC_INPUT_OCTETS, used[1]),
            avp(c.AVP_CC_OUTPUT_OCTETS, used[2]),
        ]
        mscc.append(avp(c.AVP_USED_SERVICE_UNIT, usu))
        if mscc_reason:
            mscc.append(avp(c.AVP_TGPP_3GPP_REPORTING_REASON, mscc_reason, TGPP))
    mscc.append(qos_information())
    avps += [avp(c.AVP_MULTIPLE_SERVICES_CREDIT_CONTROL, mscc), service_information(request_type)]
    header = MessageHeader(command_code=c.CMD_CREDIT_CONTROL, application_id=4)
    header.is_request = True
    header.is_proxyable = True
    return Message(header, avps)


def check_answer(cca: Message, request_type: int, number: int) -> list[Avp]:
    """What ``smf_gy_cca_cb`` needs, and the one MSCC, answered without Rating-Group."""
    assert result_code(cca) == 2001
    assert find(cca.avps, c.AVP_CC_REQUEST_TYPE).value == request_type  # type: ignore[union-attr]
    assert find(cca.avps, c.AVP_CC_REQUEST_NUMBER).value == number  # type: ignore[union-attr]
    assert find(cca.avps, c.AVP_ORIGIN_HOST) is not None and find(cca.avps, c.AVP_ORIGIN_REALM) is not None
    (mscc,) = msccs(cca)
    assert find(mscc, c.AVP_RATING_GROUP) is None and find(mscc, c.AVP_SERVICE_IDENTIFIER) is None
    assert find(mscc, c.AVP_RESULT_CODE).value == 2001  # type: ignore[union-attr]
    return mscc


async def test_an_open5gs_data_session_is_granted_in_total_octets_and_charged_per_started_kb(
    stubs: Stubs, smf: Client
) -> None:
    await stubs.subscriber(MSISDN, balance=1_000_000)  # known by MSISDN; Open5GS sends its IMSI first
    ocs = "ocs.charging.localdomain"

    cca = await smf.send(ccr(smf, INITIAL, 0), application=4)
    mscc = check_answer(cca, INITIAL, 0)
    assert granted(mscc) == {"CC-Total-Octets": 1_000_448}  # 1,000,000 in whole KB
    assert find(mscc, c.AVP_VALIDITY_TIME).value == 3600  # type: ignore[union-attr]
    assert find(mscc, c.AVP_TGPP_VOLUME_QUOTA_THRESHOLD, TGPP).value == 200_089  # type: ignore[union-attr]
    assert (await stubs.balance(MSISDN)).reserved_micros == 9_770  # 977 KB at 10 micros

    used = (60, 300_000, 200_000)  # 500,000 bytes: 489 started KB
    cca = await smf.send(ccr(smf, UPDATE, 1, used=used, usu_reason=THRESHOLD, peer_host=ocs), application=4)
    mscc = check_answer(cca, UPDATE, 1)
    assert granted(mscc) == {"CC-Total-Octets": 1_000_448}
    assert (await stubs.balance(MSISDN)).balance_micros == 1_000_000 - 4_890

    used = (60, 400_000, 100_000)  # 1,000,000 bytes in all: 977 KB
    cca = await smf.send(ccr(smf, UPDATE, 2, used=used, mscc_reason=VALIDITY_TIME, peer_host=ocs), application=4)
    check_answer(cca, UPDATE, 2)
    assert (await stubs.balance(MSISDN)).balance_micros == 1_000_000 - 9_770

    used = (30, 20_000, 4_000)  # 1,024,000 bytes in all: exactly 1,000 KB
    cca = await smf.send(ccr(smf, TERMINATE, 3, used=used, mscc_reason=FINAL, peer_host=ocs), application=4)
    assert result_code(cca) == 2001
    assert find(cca.avps, c.AVP_CC_REQUEST_NUMBER).value == 3  # type: ignore[union-attr]
    account = await stubs.balance(MSISDN)
    assert (account.balance_micros, account.reserved_micros) == (1_000_000 - 10_000, 0)


async def test_open5gs_running_out_of_money_gets_a_smaller_grant_with_a_redirect(stubs: Stubs, smf: Client) -> None:
    await stubs.subscriber(MSISDN, balance=5_000)  # 500 KB at 10 micros
    cca = await smf.send(ccr(smf, INITIAL, 0), application=4)
    mscc = check_answer(cca, INITIAL, 0)
    assert granted(mscc) == {"CC-Total-Octets": 512_000}
    fui = find(mscc, c.AVP_FINAL_UNIT_INDICATION)
    assert fui is not None
    assert find(fui.value, c.AVP_FINAL_UNIT_ACTION).value == c.E_FINAL_UNIT_ACTION_REDIRECT  # type: ignore[union-attr]
    server = find(fui.value, c.AVP_REDIRECT_SERVER)
    assert server is not None
    assert find(server.value, c.AVP_REDIRECT_ADDRESS_TYPE).value == c.E_REDIRECT_ADDRESS_TYPE_URL  # type: ignore[union-attr]
    assert find(server.value, c.AVP_REDIRECT_SERVER_ADDRESS).value == "http://topup.invalid/"  # type: ignore[union-attr]


async def test_an_open5gs_subscriber_nobody_has_is_5030_at_command_level(stubs: Stubs, smf: Client) -> None:
    cca = await smf.send(ccr(smf, INITIAL, 0), application=4)
    assert result_code(cca) == 5030  # Open5GS fails the PDN session on any non-2001 CCA-I
    assert msccs(cca) == []
