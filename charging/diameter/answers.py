"""The charging core's answers as Credit-Control-Answers (pure).

A CCA repeats Session-Id, CC-Request-Type and CC-Request-Number, carries our
Origin-Host/Realm and Origin-State-Id, and the result in Result-Code: the core's codes
are RFC 8506's own (2001, 4010, 4011, 4012, 5002, 5004, 5005, 5012, 5030, 5031), all
carried in Result-Code; none needs an Experimental-Result. Each service is answered in
the shape it was asked in: an MSCC for an MSCC (with Rating-Group and Service-Identifier
only when the request had them), the command level in single-service mode.

Grants: data as CC-Total-Octets (Open5GS reads no input/output-only grant), time as
CC-Time, events as CC-Service-Specific-Units, money as CC-Money in micros
(Value-Digits x 10^-6); every grant with its Validity-Time and, for volume and time, a
Volume- or Time-Quota-Threshold of ``THRESHOLD_PERCENT`` of the grant, so the client
reports (CCR-U) before the grant is used up.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from diameter.message.avp import Avp

from charging.codes import ResultCode
from charging.diameter import dictionary as d
from charging.diameter.base import Identity
from charging.diameter.codec import grouped, new, placeholder
from charging.diameter.credit_control import EventCall, Head, Service, SessionCall
from charging.events import EventAnswer
from charging.rating import FinalUnitAction, Units
from charging.sessions import FinalUnit, RatingGroupAnswer, SessionAnswer

THRESHOLD_PERCENT = 20
MAX_U32 = 0xFFFFFFFF
MICROS_EXPONENT = -6
# Final-Unit-Action (RFC 8506 8.35) of the core's actions.
FINAL_UNIT_ACTIONS = {FinalUnitAction.TERMINATE: 0, FinalUnitAction.REDIRECT: 1, FinalUnitAction.RESTRICT_ACCESS: 2}
REDIRECT_URL = 2  # Redirect-Address-Type URL
ENOUGH_CREDIT, NO_CREDIT = 0, 1  # Check-Balance-Result
# ISO 4217 numeric codes (Currency-Code) of the currencies plans are priced in.
CURRENCIES = {
    "EUR": 978,
    "USD": 840,
    "GBP": 826,
    "CHF": 756,
    "SEK": 752,
    "NOK": 578,
    "DKK": 208,
    "PLN": 985,
    "CZK": 203,
    "HUF": 348,
    "RON": 946,
    "JPY": 392,
    "INR": 356,
    "BRL": 986,
}
GROUP_FIELD = re.compile(r"^rating_groups\[(\d+)\]\.(requested|used|used_after_tariff_change)")


def head_avps(head: Head, me: Identity, code: int) -> list[Avp]:
    avps = [new(d.SESSION_ID, head.session_id)] if head.session_id else []
    avps += [
        new(d.RESULT_CODE, code),
        *me.origin(),
        new(d.AUTH_APPLICATION_ID, d.CREDIT_CONTROL_APP),
        new(d.CC_REQUEST_TYPE, head.request_type),
        new(d.CC_REQUEST_NUMBER, head.request_number),
        new(d.ORIGIN_STATE_ID, me.state_id),
    ]
    return avps


def refusal(head: Head, me: Identity, code: int, failed: Avp | None, message: str = "") -> list[Avp]:
    """A CCA refusing the whole request: nothing was charged."""
    avps = head_avps(head, me, code)
    if message:
        avps.append(new(d.ERROR_MESSAGE, message))
    if failed is not None:
        avps.append(new(d.FAILED_AVP, [failed]))
    return avps


def session_cca(head: Head, me: Identity, call: SessionCall, answer: SessionAnswer) -> list[Avp]:
    avps = head_avps(head, me, answer.result_code)
    command_level: list[Avp] = []
    for service, group in zip(call.services, answer.rating_groups, strict=False):
        members = service_avps(service, group)
        # The refund token covers the request's usage: every service that reported some
        # carries it (TS 32.299 has Refund-Information in the MSCC).
        refund = [new(d.REFUND_INFORMATION, answer.refund_information)] if answer.refund_information else []
        if service.in_mscc:
            avps.append(grouped(d.MSCC, members + (refund if service.used else [])))
        else:
            command_level += [a for a in members if (a.code, a.vendor_id) != d.RESULT_CODE] + refund
    avps += command_level
    failed = failed_avp(call.services, answer.failed_field)
    if failed is not None:
        avps.append(new(d.FAILED_AVP, [failed]))
    return avps


def service_avps(service: Service, group: RatingGroupAnswer) -> list[Avp]:
    """The answer to one service, in TS 32.299 7.1.9's order."""
    out: list[Avp] = []
    if group.granted is not None:
        out.append(grouped(d.GRANTED_SERVICE_UNIT, unit_avps(group.granted)))
    if service.has_service_identifier:
        out.append(new(d.SERVICE_IDENTIFIER, service.service_identifier))
    if service.has_rating_group:
        out.append(new(d.RATING_GROUP, service.rating_group))
    if group.validity_time_s:
        out.append(new(d.VALIDITY_TIME, group.validity_time_s))
    out.append(new(d.RESULT_CODE, group.result_code))
    if group.final_unit is not None:
        out.append(final_unit_avp(group.final_unit))
    if group.tariff_change_time:
        out.append(new(d.TARIFF_TIME_CHANGE, datetime.fromtimestamp(group.tariff_change_time, UTC)))
    if group.granted is not None:
        if group.granted.time_s:
            out.append(new(d.TIME_QUOTA_THRESHOLD, min(threshold(group.granted.time_s), MAX_U32)))
        if group.granted.total_octets:
            out.append(new(d.VOLUME_QUOTA_THRESHOLD, min(threshold(group.granted.total_octets), MAX_U32)))
    return out


def threshold(granted: int) -> int:
    """Units left when the client should report: ``THRESHOLD_PERCENT`` of the grant."""
    return granted * THRESHOLD_PERCENT // 100


def unit_avps(units: Units) -> list[Avp]:
    out: list[Avp] = []
    if units.time_s:
        out.append(new(d.CC_TIME, units.time_s))
    if units.total_octets:
        out.append(new(d.CC_TOTAL_OCTETS, units.total_octets))
    if units.service_specific_units:
        out.append(new(d.CC_SERVICE_SPECIFIC_UNITS, units.service_specific_units))
    if units.money_micros:
        out.append(grouped(d.CC_MONEY, [money_value(units.money_micros)]))
    return out


def money_value(micros: int) -> Avp:
    """Unit-Value of an amount of micros: Value-Digits x 10^-6."""
    return grouped(d.UNIT_VALUE, [new(d.VALUE_DIGITS, micros), new(d.EXPONENT, MICROS_EXPONENT)])


def final_unit_avp(final: FinalUnit) -> Avp:
    members = [new(d.FINAL_UNIT_ACTION, FINAL_UNIT_ACTIONS[final.action])]
    for rule in final.restriction_filter_rules:
        members.append(new(d.RESTRICTION_FILTER_RULE, rule.encode()))
    if final.redirect_address:
        members.append(
            grouped(
                d.REDIRECT_SERVER,
                [new(d.REDIRECT_ADDRESS_TYPE, REDIRECT_URL), new(d.REDIRECT_SERVER_ADDRESS, final.redirect_address)],
            )
        )
    return grouped(d.FINAL_UNIT_INDICATION, members)


def failed_avp(services: tuple[Service, ...], field: str) -> Avp | None:
    """The request's AVP behind the core's ``failed_field`` (``rating_groups[1].used...``):
    that service's Requested- or Used-Service-Unit, else its MSCC."""
    match = GROUP_FIELD.match(field)
    if match is None:
        return None
    index = int(match.group(1))
    if index >= len(services):
        return None
    service = services[index]
    if match.group(2) == "requested" and service.requested is not None:
        return service.requested
    if match.group(2) != "requested" and service.used:
        return service.used[0]
    return service.mscc


def event_cca(head: Head, me: Identity, call: EventCall, answer: EventAnswer, currency: str) -> list[Avp]:
    """Direct debit: the grant and the refund token. Refund: what was given back.
    Balance check: Check-Balance-Result. Price enquiry: Cost-Information."""
    avps = head_avps(head, me, answer.result_code)
    action = call.request.action
    service = call.service
    members: list[Avp] = []
    if answer.granted is not None and action in ("D", "R"):
        members.append(grouped(d.GRANTED_SERVICE_UNIT, unit_avps(answer.granted)))
    if service.has_service_identifier:
        members.append(new(d.SERVICE_IDENTIFIER, service.service_identifier))
    if service.has_rating_group:
        members.append(new(d.RATING_GROUP, service.rating_group))
    if answer.refund_information:
        members.append(new(d.REFUND_INFORMATION, answer.refund_information))
    if service.in_mscc:
        avps.append(grouped(d.MSCC, [*members, new(d.RESULT_CODE, answer.result_code)]))
    else:
        avps += members
    code = currency_code(currency)
    if action == "P" and answer.result_code == ResultCode.SUCCESS and code:
        avps.append(grouped(d.COST_INFORMATION, [money_value(answer.cost_micros), new(d.CURRENCY_CODE, code)]))
    if answer.enough_credit is not None:
        avps.append(new(d.CHECK_BALANCE_RESULT, ENOUGH_CREDIT if answer.enough_credit else NO_CREDIT))
    failed = event_failed_avp(call, answer.failed_field)
    if failed is not None:
        avps.append(new(d.FAILED_AVP, [failed]))
    return avps


def event_failed_avp(call: EventCall, field: str) -> Avp | None:
    if not field:
        return None
    if field == "refund_information":
        return call.refund_avp or placeholder(d.REFUND_INFORMATION)
    if field.startswith("requested"):
        return call.service.requested or placeholder(d.REQUESTED_SERVICE_UNIT)
    if field in ("rating_group", "service_identifier"):
        return call.service.mscc or placeholder(d.RATING_GROUP)
    return None


def currency_code(currency: str) -> int:
    """ISO 4217 numeric code of a currency (0: unknown: Cost-Information is left out)."""
    return CURRENCIES.get(currency.upper(), 0)
