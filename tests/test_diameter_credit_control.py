"""Credit-Control over Diameter against a real server: sessions with several MSCCs,
events, retransmissions with the T flag, and refusals, driven by a client built from
python-diameter. Balances are read through the gRPC API; where a price is not spelled
out, the same usage charged over gRPC is the reference."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from diameter.message import Message
from diameter.message import constants as c
from diameter.message.avp import Avp
from diameter.message.commands.credit_control import RequestedServiceUnit, UsedServiceUnit
from prometheus_client import REGISTRY

from charging.server import App
from charging.settings import Settings
from charging.v1 import charging_pb2, common_pb2
from tests.conftest import Stubs
from tests.diameter_client import Client, find, find_all, granted, msccs, result_code

TGPP = c.VENDOR_TGPP
INITIAL, UPDATE, TERMINATE, EVENT = 1, 2, 3, 4
MSISDN = "491700000001"
IMSI = "262011234567890"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, diameter_address="127.0.0.1:0")


@pytest.fixture
async def client(app: App) -> AsyncIterator[Client]:
    assert app.diameter is not None
    cl = await Client.connect(app.diameter.port)
    assert result_code(await cl.cer()) == 2001
    yield cl
    await cl.close()


async def balance(stubs: Stubs, msisdn: str = MSISDN) -> int:
    return int((await stubs.balance(msisdn)).balance_micros)


def subscriber(ccr: Message, msisdn: str = MSISDN) -> Message:
    ccr.add_subscription_id(subscription_id_type=c.E_SUBSCRIPTION_ID_TYPE_END_USER_E164, subscription_id_data=msisdn)
    return ccr


def reason(value: int) -> Avp:
    return Avp.new(c.AVP_TGPP_3GPP_REPORTING_REASON, TGPP, value=value)


def by_rating_group(cca: Message) -> dict[int, list[Avp]]:
    return {find(m, c.AVP_RATING_GROUP).value: m for m in msccs(cca)}  # type: ignore[union-attr]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_voice_and_data_session_with_two_mscc_is_granted_and_charged_like_grpc(
    stubs: Stubs, client: Client
) -> None:
    await stubs.subscriber(MSISDN, balance=5_000_000)
    sid = "pgw.test.example;1;voice-and-data"
    ccr = subscriber(client.ccr(sid, INITIAL, 0))
    ccr.add_multiple_services_credit_control(requested_service_unit=RequestedServiceUnit(cc_time=300), rating_group=10)
    ccr.add_multiple_services_credit_control(
        requested_service_unit=RequestedServiceUnit(cc_total_octets=1_000_000), rating_group=30
    )
    cca = await client.send(ccr, application=4)
    assert result_code(cca) == 2001
    assert find(cca.avps, c.AVP_SESSION_ID).value == sid  # type: ignore[union-attr]
    assert find(cca.avps, c.AVP_CC_REQUEST_TYPE).value == INITIAL  # type: ignore[union-attr]
    assert find(cca.avps, c.AVP_AUTH_APPLICATION_ID).value == 4  # type: ignore[union-attr]
    groups = by_rating_group(cca)
    assert granted(groups[10]) == {"CC-Time": 300}
    assert granted(groups[30]) == {"CC-Total-Octets": 1_000_448}  # whole KB
    assert find(groups[10], c.AVP_VALIDITY_TIME).value == 900  # type: ignore[union-attr]
    assert find(groups[30], c.AVP_VALIDITY_TIME).value == 3600  # type: ignore[union-attr]
    assert find(groups[10], c.AVP_TGPP_TIME_QUOTA_THRESHOLD, TGPP).value == 60  # type: ignore[union-attr]
    assert find(groups[30], c.AVP_TGPP_VOLUME_QUOTA_THRESHOLD, TGPP).value == 200_089  # type: ignore[union-attr]
    assert [find(m, c.AVP_RESULT_CODE).value for m in groups.values()] == [2001, 2001]  # type: ignore[union-attr]

    ccr = subscriber(client.ccr(sid, UPDATE, 1))
    ccr.add_multiple_services_credit_control(
        requested_service_unit=RequestedServiceUnit(cc_time=300),
        used_service_unit=UsedServiceUnit(cc_time=45),
        rating_group=10,
    )
    ccr.add_multiple_services_credit_control(
        requested_service_unit=RequestedServiceUnit(cc_total_octets=1_000_000),
        used_service_unit=UsedServiceUnit(cc_input_octets=500_000, cc_output_octets=300_000),
        rating_group=30,
    )
    cca = await client.send(ccr, application=4)
    assert result_code(cca) == 2001
    refund = find(by_rating_group(cca)[10], c.AVP_TGPP_REFUND_INFORMATION, TGPP)
    assert refund is not None and refund.value

    ccr = subscriber(client.ccr(sid, TERMINATE, 2))
    ccr.termination_cause = c.E_TERMINATION_CAUSE_DIAMETER_LOGOUT
    ccr.add_multiple_services_credit_control(used_service_unit=UsedServiceUnit(cc_time=90), rating_group=10)
    ccr.add_multiple_services_credit_control(
        used_service_unit=UsedServiceUnit(cc_total_octets=200_000), rating_group=30
    )
    cca = await client.send(ccr, application=4)
    assert result_code(cca) == 2001
    # Voice: 45 + 90 s = 3 started minutes at 0.10 EUR; data: 1,000,000 bytes = 977 KB at 10 micros.
    assert await balance(stubs) == 5_000_000 - 300_000 - 9_770
    assert (await stubs.balance(MSISDN)).reserved_micros == 0

    # The same usage over gRPC costs the same.
    await stubs.subscriber("491700000002", balance=5_000_000)
    who = common_pb2.SubscriberId(msisdn="491700000002")

    def group(rg: int, requested: int = 0, **used: int) -> charging_pb2.RatingGroupRequest:
        g = charging_pb2.RatingGroupRequest(rating_group=rg)
        if requested:
            g.requested.CopyFrom(
                common_pb2.ServiceUnits(**({"time_s": requested} if rg == 10 else {"total_octets": requested}))
            )
        if used:
            g.used.CopyFrom(common_pb2.ServiceUnits(**used))
        return g

    for kind, number, groups_ in (
        (charging_pb2.REQUEST_TYPE_INITIAL, 0, [group(10, 300), group(30, 1_000_000)]),
        (charging_pb2.REQUEST_TYPE_UPDATE, 1, [group(10, 300, time_s=45), group(30, 1_000_000, total_octets=800_000)]),
        (charging_pb2.REQUEST_TYPE_TERMINATE, 2, [group(10, time_s=90), group(30, total_octets=200_000)]),
    ):
        answer = await stubs.charging.ChargeSession(
            charging_pb2.SessionRequest(
                session_id="grpc-reference",
                request_type=kind,
                request_number=number,
                subscriber=who,
                rating_groups=groups_,
            )
        )
        assert answer.result_code == 2001
    assert await balance(stubs, "491700000002") == await balance(stubs)


async def test_a_retransmission_with_the_t_flag_gets_the_identical_answer_and_is_charged_once(
    stubs: Stubs, client: Client
) -> None:
    await stubs.subscriber(MSISDN, balance=1_000_000)
    sid = "pgw.test.example;2;retransmitted"
    ccr = subscriber(client.ccr(sid, INITIAL, 0))
    ccr.add_multiple_services_credit_control(requested_service_unit=RequestedServiceUnit(cc_time=120), rating_group=10)
    assert result_code(await client.send(ccr, application=4)) == 2001
    update = subscriber(client.ccr(sid, UPDATE, 1))
    update.add_multiple_services_credit_control(
        requested_service_unit=RequestedServiceUnit(cc_time=120),
        used_service_unit=UsedServiceUnit(cc_time=61),
        rating_group=10,
    )
    raw = client.encode(update, application=4)
    first = await client.send_raw(raw)
    after_first = await balance(stubs)
    before = sample("charging_diameter_retransmissions_total")
    again = await client.retransmit(raw)
    assert again.header.hop_by_hop_identifier != first.header.hop_by_hop_identifier
    assert [a.as_bytes() for a in again.avps] == [a.as_bytes() for a in first.avps]
    assert await balance(stubs) == after_first == 1_000_000 - 200_000
    assert sample("charging_diameter_retransmissions_total") == before + 1

    # The same request number with another payload changes nothing and names the number.
    other = subscriber(client.ccr(sid, UPDATE, 1))
    other.add_multiple_services_credit_control(used_service_unit=UsedServiceUnit(cc_time=600), rating_group=10)
    refused = await client.send(other, application=4)
    assert result_code(refused) == 5004
    failed = find(refused.avps, c.AVP_FAILED_AVP)
    assert failed is not None and failed.value[0].code == c.AVP_CC_REQUEST_NUMBER
    assert await balance(stubs) == after_first


async def test_an_unknown_avp_with_the_m_bit_is_5001_naming_it_and_changes_nothing(
    stubs: Stubs, client: Client
) -> None:
    await stubs.subscriber(MSISDN, balance=1_000_000)
    ccr = subscriber(client.ccr("pgw.test.example;3;m-bit", INITIAL, 0))
    unknown = Avp(code=99_999, vendor_id=0, payload=b"\x00\x00\x00\x01")
    unknown.is_mandatory = True
    ccr.add_multiple_services_credit_control(
        requested_service_unit=RequestedServiceUnit(cc_time=60), rating_group=10, avp=[unknown]
    )
    cca = await client.send(ccr, application=4)
    assert result_code(cca) == 5001
    failed = find(cca.avps, c.AVP_FAILED_AVP)
    assert failed is not None and failed.value[0].code == 99_999
    assert (await stubs.balance(MSISDN)).reserved_micros == 0
    # Without the M bit the same AVP is read past.
    ccr = subscriber(client.ccr("pgw.test.example;3;no-m-bit", INITIAL, 0))
    ccr.add_multiple_services_credit_control(
        requested_service_unit=RequestedServiceUnit(cc_time=60), rating_group=10, avp=[Avp(99_999, 0, b"\0\0\0\1")]
    )
    assert result_code(await client.send(ccr, application=4)) == 2001


async def test_refusals_name_the_avp_in_failed_avp(stubs: Stubs, client: Client) -> None:
    await stubs.subscriber(MSISDN, balance=1_000_000)
    no_subscriber = client.ccr("pgw.test.example;4;nobody", INITIAL, 0)
    cca = await client.send(no_subscriber, application=4)
    assert result_code(cca) == 5005
    assert find(cca.avps, c.AVP_FAILED_AVP).value[0].code == c.AVP_SUBSCRIPTION_ID  # type: ignore[union-attr]
    assert find(cca.avps, c.AVP_CC_REQUEST_NUMBER).value == 0  # type: ignore[union-attr]

    unknown = subscriber(client.ccr("pgw.test.example;4;unknown", INITIAL, 0), "491709999999")
    unknown.add_multiple_services_credit_control(
        requested_service_unit=RequestedServiceUnit(cc_time=60), rating_group=10
    )
    assert result_code(await client.send(unknown, application=4)) == 5030

    bad = client.ccr("pgw.test.example;4;bad-type", INITIAL, 0)
    bad.cc_request_type = 9
    cca = await client.send(subscriber(bad), application=4)
    assert result_code(cca) == 5004
    assert find(cca.avps, c.AVP_FAILED_AVP).value[0].code == c.AVP_CC_REQUEST_TYPE  # type: ignore[union-attr]

    wrong_app = subscriber(client.ccr("pgw.test.example;4;gx", INITIAL, 0))
    cca = await client.send(wrong_app, application=c.APP_3GPP_GX)
    assert result_code(cca) == 3007 and cca.header.is_error

    # An AVP whose length runs past the message: 5014, the connection goes on.
    raw = bytearray(client.encode(subscriber(client.ccr("pgw.test.example;4;length", INITIAL, 0)), application=4))
    raw[20 + 5 : 20 + 8] = (0xFFFF).to_bytes(3, "big")  # Session-Id's length
    cca = await client.send_raw(bytes(raw))
    assert result_code(cca) == 5014
    assert result_code(await client.dwr()) == 2001
    assert (await stubs.balance(MSISDN)).balance_micros == 1_000_000


async def test_imsi_first_then_msisdn_charges_whichever_the_subscriber_has(stubs: Stubs, client: Client) -> None:
    await stubs.subscriber(MSISDN, balance=1_000_000)  # known by its MSISDN only
    ccr = client.ccr("pgw.test.example;5;imsi-first", INITIAL, 0)
    ccr.add_subscription_id(subscription_id_type=c.E_SUBSCRIPTION_ID_TYPE_END_USER_IMSI, subscription_id_data=IMSI)
    ccr.add_subscription_id(subscription_id_type=c.E_SUBSCRIPTION_ID_TYPE_END_USER_E164, subscription_id_data=MSISDN)
    ccr.add_multiple_services_credit_control(requested_service_unit=RequestedServiceUnit(cc_time=60), rating_group=10)
    assert result_code(await client.send(ccr, application=4)) == 2001
    assert (await stubs.balance(MSISDN)).reserved_micros == 100_000


async def test_events_debit_refund_check_balance_and_price_enquiry(stubs: Stubs, client: Client) -> None:
    await stubs.subscriber(MSISDN, balance=1_000_000)

    def event(sid: str, action: int, units: int = 1, rating_group: int = 20) -> Message:
        ccr = subscriber(client.ccr(sid, EVENT, 0, context="32274@3gpp.org"))
        ccr.requested_action = action
        ccr.add_multiple_services_credit_control(
            requested_service_unit=RequestedServiceUnit(cc_service_specific_units=units), rating_group=rating_group
        )
        return ccr

    debit = await client.send(event("smsc;1;sms", c.E_REQUESTED_ACTION_DIRECT_DEBITING), application=4)
    assert result_code(debit) == 2001
    (mscc,) = msccs(debit)
    assert granted(mscc) == {"CC-Service-Specific-Units": 1}
    token = find(mscc, c.AVP_TGPP_REFUND_INFORMATION, TGPP)
    assert token is not None
    assert await balance(stubs) == 950_000
    # The same event again (a retransmission): charged once.
    assert (
        result_code(await client.send(event("smsc;1;sms", c.E_REQUESTED_ACTION_DIRECT_DEBITING), application=4)) == 2001
    )
    assert await balance(stubs) == 950_000

    refund = event("smsc;2;sms-refund", c.E_REQUESTED_ACTION_REFUND_ACCOUNT)
    refund.multiple_services_credit_control[0].refund_information = token.value
    answer = await client.send(refund, application=4)
    assert result_code(answer) == 2001
    assert await balance(stubs) == 1_000_000

    unknown_token = event("smsc;3;sms-refund", c.E_REQUESTED_ACTION_REFUND_ACCOUNT)
    unknown_token.multiple_services_credit_control[0].refund_information = b"not a token"
    answer = await client.send(unknown_token, application=4)
    assert result_code(answer) == 5004
    assert find(answer.avps, c.AVP_FAILED_AVP).value[0].code == c.AVP_TGPP_REFUND_INFORMATION  # type: ignore[union-attr]

    check = await client.send(event("smsc;4;check", c.E_REQUESTED_ACTION_CHECK_BALANCE, units=5), application=4)
    assert result_code(check) == 2001
    assert find(check.avps, c.AVP_CHECK_BALANCE_RESULT).value == c.E_CHECK_BALANCE_RESULT_ENOUGH_CREDIT  # type: ignore[union-attr]
    check = await client.send(event("smsc;5;check", c.E_REQUESTED_ACTION_CHECK_BALANCE, units=21), application=4)
    assert find(check.avps, c.AVP_CHECK_BALANCE_RESULT).value == c.E_CHECK_BALANCE_RESULT_NO_CREDIT  # type: ignore[union-attr]

    price = await client.send(event("smsc;6;price", c.E_REQUESTED_ACTION_PRICE_ENQUIRY, units=3), application=4)
    assert result_code(price) == 2001
    cost = find(price.avps, c.AVP_COST_INFORMATION)
    assert cost is not None
    unit_value = find(cost.value, c.AVP_UNIT_VALUE)
    assert unit_value is not None
    digits = find(unit_value.value, c.AVP_VALUE_DIGITS).value  # type: ignore[union-attr]
    exponent = find(unit_value.value, c.AVP_EXPONENT).value  # type: ignore[union-attr]
    assert (digits, exponent) == (150_000, -6)
    assert find(cost.value, c.AVP_CURRENCY_CODE).value == 978  # type: ignore[union-attr]
    assert await balance(stubs) == 1_000_000

    no_action = subscriber(client.ccr("smsc;7;no-action", EVENT, 0, context="32274@3gpp.org"))
    answer = await client.send(no_action, application=4)
    assert result_code(answer) == 5005
    assert find(answer.avps, c.AVP_FAILED_AVP).value[0].code == c.AVP_REQUESTED_ACTION  # type: ignore[union-attr]


async def test_money_units_and_single_service_mode(stubs: Stubs, client: Client) -> None:
    await stubs.subscriber(MSISDN, balance=5_000_000)
    # Single-service mode: RSU and Service-Identifier at command level, no MSCC.
    ccr = subscriber(client.ccr("pgw.test.example;8;single", INITIAL, 0))
    ccr.multiple_services_indicator = c.E_MULTIPLE_SERVICES_INDICATOR_MULTIPLE_SERVICES_NOT_SUPPORTED
    ccr.service_identifier = 1000  # voice
    ccr.requested_service_unit = RequestedServiceUnit(cc_time=120)
    cca = await client.send(ccr, application=4)
    assert result_code(cca) == 2001
    assert msccs(cca) == []
    gsu = find(cca.avps, c.AVP_GRANTED_SERVICE_UNIT)
    assert gsu is not None and find(gsu.value, c.AVP_CC_TIME).value == 120  # type: ignore[union-attr]
    assert find(cca.avps, c.AVP_SERVICE_IDENTIFIER).value == 1000  # type: ignore[union-attr]

    # CC-Money: 0.25 EUR of content (rating group 50) as 25 x 10^-2.
    money = Avp.new(
        c.AVP_CC_MONEY,
        value=[
            Avp.new(c.AVP_UNIT_VALUE, value=[Avp.new(c.AVP_VALUE_DIGITS, value=25), Avp.new(c.AVP_EXPONENT, value=-2)])
        ],
    )
    ccr = subscriber(client.ccr("pgw.test.example;9;money", INITIAL, 0))
    rsu = Avp.new(c.AVP_REQUESTED_SERVICE_UNIT, value=[money])
    ccr.add_multiple_services_credit_control(rating_group=50, avp=[rsu])
    cca = await client.send(ccr, application=4)
    assert result_code(cca) == 2001
    (mscc,) = msccs(cca)
    gsu = find(mscc, c.AVP_GRANTED_SERVICE_UNIT)
    assert gsu is not None
    unit_value = find(find(gsu.value, c.AVP_CC_MONEY).value, c.AVP_UNIT_VALUE)  # type: ignore[union-attr]
    digits = find(unit_value.value, c.AVP_VALUE_DIGITS).value  # type: ignore[union-attr]
    assert (digits, find(unit_value.value, c.AVP_EXPONENT).value) == (250_000, -6)  # type: ignore[union-attr]
    assert find_all(cca.avps, c.AVP_FAILED_AVP) == []
