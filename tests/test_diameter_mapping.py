"""The Diameter door's pure rules, without a server: AVP framing, the M-bit rule, money
and address values, identities, default rating groups and the answer's thresholds."""

from __future__ import annotations

import pytest
from diameter.message import constants as c
from diameter.message.avp import Avp

from charging.catalog import Usage
from charging.diameter import answers, codec, credit_control, service_information, service_units
from charging.diameter import dictionary as d
from charging.diameter.codec import Refused
from charging.diameter.credit_control import Head
from charging.subscribers import Identity


def avp(code: int, value: object, vendor: int = 0) -> Avp:
    return Avp.new(code, vendor, value=value)


def money(digits: int, exponent: int | None) -> Avp:
    unit = [avp(c.AVP_VALUE_DIGITS, digits)] + ([avp(c.AVP_EXPONENT, exponent)] if exponent is not None else [])
    return avp(c.AVP_CC_MONEY, [avp(c.AVP_UNIT_VALUE, unit)])


@pytest.mark.parametrize(
    ("digits", "exponent", "micros"),
    [(25, -2, 250_000), (1, None, 1_000_000), (1500, -6, 1500), (3, 2, 300_000_000), (15, -7, None), (-1, 0, None)],
)
def test_cc_money_in_micros(digits: int, exponent: int | None, micros: int | None) -> None:
    if micros is None:
        with pytest.raises(Refused) as refused:
            service_units.micros_of(money(digits, exponent))
        assert refused.value.code == 5004
    else:
        assert service_units.micros_of(money(digits, exponent)) == micros


@pytest.mark.parametrize(
    ("address", "digits"),
    [
        ("tel:+491711234567", "491711234567"),
        ("sip:+33123456789@ims.example;user=phone", "33123456789"),
        ("112", "112"),
        ("sip:alice@ims.example", None),
    ],
)
def test_called_party_addresses(address: str, digits: str | None) -> None:
    called = avp(c.AVP_TGPP_CALLED_PARTY_ADDRESS, address, c.VENDOR_TGPP)
    if digits is None:
        with pytest.raises(Refused):
            service_information.number_of(called)
    else:
        assert service_information.number_of(called) == digits


def subscription(kind: int, data: str) -> Avp:
    return avp(c.AVP_SUBSCRIPTION_ID, [avp(c.AVP_SUBSCRIPTION_ID_TYPE, kind), avp(c.AVP_SUBSCRIPTION_ID_DATA, data)])


def test_identities_keep_their_order_and_skip_other_types() -> None:
    avps = [
        subscription(2, "sip:alice@ims.example"),
        subscription(1, "262011234567890"),
        subscription(0, "+491700000001"),
    ]
    assert credit_control.identities_of(avps) == (
        Identity("imsi", "262011234567890"),
        Identity("msisdn", "491700000001"),
    )
    with pytest.raises(Refused) as refused:
        credit_control.identities_of([subscription(0, "12")])
    assert refused.value.code == 5004
    with pytest.raises(Refused) as refused:
        credit_control.identities_of([subscription(3, "alice@nai.example")])
    assert refused.value.code == 5030
    with pytest.raises(Refused) as refused:
        credit_control.identities_of([])
    assert refused.value.code == 5005 and refused.value.failed is not None
    assert refused.value.failed.code == c.AVP_SUBSCRIPTION_ID


def test_a_service_without_rating_group_takes_its_contexts_default() -> None:
    head = Head("s", 1, 0, "32251@3gpp.org")
    mscc = [avp(c.AVP_REQUESTED_SERVICE_UNIT, [avp(c.AVP_CC_TOTAL_OCTETS, 1_000_000)])]
    service = credit_control.service_of(head, mscc, {"32251@3gpp.org": 30}, None)
    assert (service.rating_group, service.has_rating_group, service.has_service_identifier) == (30, False, False)
    with pytest.raises(Refused) as refused:
        credit_control.service_of(replace_context(head, "32274@3gpp.org"), mscc, {"32251@3gpp.org": 30}, None)
    assert refused.value.code == 5005


def replace_context(head: Head, context: str) -> Head:
    return Head(head.session_id, head.request_type, head.request_number, context)


def test_an_unknown_mandatory_avp_is_found_at_any_depth() -> None:
    unknown = Avp(99_999, 0, b"\0\0\0\1")
    unknown.is_mandatory = True
    optional = Avp(99_998, 0, b"\0\0\0\1")
    nested = avp(c.AVP_MULTIPLE_SERVICES_CREDIT_CONTROL, [avp(c.AVP_RATING_GROUP, 1), optional, unknown])
    assert d.unsupported_mandatory([avp(c.AVP_SESSION_ID, "s"), nested]) is unknown
    assert d.unsupported_mandatory([avp(c.AVP_SESSION_ID, "s"), optional]) is None


def frame(avps: bytes) -> bytes:
    length = 20 + len(avps)
    return bytes([1]) + length.to_bytes(3, "big") + bytes([0x80]) + (272).to_bytes(3, "big") + bytes(12) + avps


def test_avp_lengths_are_checked_before_decoding() -> None:
    good = avp(c.AVP_SESSION_ID, "abc").as_bytes()  # padded to 4 by the encoder
    header, avps = codec.decode(frame(good))
    assert header.command_code == 272 and avps[0].value == "abc"
    for bad in (
        (263).to_bytes(4, "big") + bytes([0x40]) + (4).to_bytes(3, "big") + bytes(4),  # shorter than its header
        (263).to_bytes(4, "big") + bytes([0x40]) + (64).to_bytes(3, "big") + bytes(4),  # past the message
        bytes(4),  # a partial AVP header
    ):
        with pytest.raises(Refused) as refused:
            codec.decode(frame(bad))
        assert refused.value.code == 5014
    inner = (268).to_bytes(4, "big") + bytes([0x40]) + (40).to_bytes(3, "big") + bytes(4)
    grouped = (456).to_bytes(4, "big") + bytes([0x40]) + (8 + len(inner)).to_bytes(3, "big") + inner
    with pytest.raises(Refused) as refused:
        codec.decode(frame(grouped))
    assert refused.value.code == 5014 and refused.value.failed is not None and refused.value.failed.code == 268


@pytest.mark.parametrize(("granted", "threshold"), [(300, 60), (1_000_448, 200_089), (4, 0)])
def test_quota_thresholds_are_a_fifth_of_the_grant(granted: int, threshold: int) -> None:
    assert answers.threshold(granted) == threshold


def test_event_ids_are_the_session_and_number_or_their_hash() -> None:
    assert credit_control.event_id(Head("smsc;1;x", 4, 0)) == "smsc;1;x/0"
    long = credit_control.event_id(Head("s" * 300, 4, 7))
    assert long.startswith("dia-") and len(long) == 36


def test_service_information_gives_destination_direction_and_visited_network() -> None:
    tgpp = c.VENDOR_TGPP
    recipient = avp(
        c.AVP_TGPP_RECIPIENT_INFO,
        [avp(c.AVP_TGPP_RECIPIENT_ADDRESS, [avp(c.AVP_TGPP_ADDRESS_DATA, "+33612345678", tgpp)], tgpp)],
        tgpp,
    )
    sms = avp(c.AVP_TGPP_SMS_INFORMATION, [recipient], tgpp)
    ps = avp(c.AVP_TGPP_PS_INFORMATION, [avp(c.AVP_TGPP_3GPP_SGSN_MCC_MNC, "20801", tgpp)], tgpp)
    usage, terminating = service_information.usage_of([avp(c.AVP_TGPP_SERVICE_INFORMATION, [sms, ps], tgpp)])
    assert (usage.destination, usage.visited_network, terminating) == ("33612345678", "20801", False)
    ims = avp(
        c.AVP_TGPP_IMS_INFORMATION,
        [
            avp(c.AVP_TGPP_ROLE_OF_NODE, c.E_ROLE_OF_NODE_TERMINATING_ROLE, tgpp),
            avp(c.AVP_TGPP_CALLED_PARTY_ADDRESS, "tel:+491700000001", tgpp),
        ],
        tgpp,
    )
    usage, terminating = service_information.usage_of([avp(c.AVP_TGPP_SERVICE_INFORMATION, [ims], tgpp)])
    assert (usage.destination, terminating) == ("491700000001", True)
    assert service_information.usage_of([]) == (Usage(), False)
