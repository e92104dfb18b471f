"""Requested-, Used- and Granted-Service-Unit contents as the core's ``Units`` (pure).

Money is CC-Money's Unit-Value, Value-Digits x 10^Exponent of the currency unit, turned
into whole micros: a value finer than a micro, or below zero, is 5004 (never rounded).
"""

from __future__ import annotations

from diameter.message.avp import Avp

from charging.diameter import dictionary as d
from charging.diameter.codec import Refused, placeholder, value
from charging.rating import Units


def units_of(members: list[Avp]) -> Units:
    """CC-Time, CC-Total/Input/Output-Octets, CC-Service-Specific-Units and CC-Money."""

    def count(key: tuple[int, int]) -> int:
        avp = d.find(members, key)
        return int(value(avp)) if avp is not None else 0

    money = d.find(members, d.CC_MONEY)
    return Units(
        time_s=count(d.CC_TIME),
        total_octets=count(d.CC_TOTAL_OCTETS),
        input_octets=count(d.CC_INPUT_OCTETS),
        output_octets=count(d.CC_OUTPUT_OCTETS),
        service_specific_units=count(d.CC_SERVICE_SPECIFIC_UNITS),
        money_micros=micros_of(money) if money is not None else 0,
    )


def micros_of(money: Avp) -> int:
    """CC-Money's Unit-Value (Value-Digits x 10^Exponent) in micros; a value finer than a
    micro or below zero is 5004."""
    unit_value = d.find(value(money), d.UNIT_VALUE)
    if unit_value is None:
        raise Refused(d.Code.MISSING_AVP, placeholder(d.UNIT_VALUE))
    members = value(unit_value)
    digits_avp, exponent_avp = d.find(members, d.VALUE_DIGITS), d.find(members, d.EXPONENT)
    if digits_avp is None:
        raise Refused(d.Code.MISSING_AVP, placeholder(d.VALUE_DIGITS))
    digits = int(value(digits_avp))
    shift = (int(value(exponent_avp)) if exponent_avp is not None else 0) + 6
    if digits < 0 or not -18 <= shift <= 18:
        raise Refused(d.Code.INVALID_AVP_VALUE, unit_value)
    if shift >= 0:
        return int(digits * 10**shift)
    if digits % 10**-shift:
        raise Refused(d.Code.INVALID_AVP_VALUE, unit_value)
    return int(digits // 10**-shift)


def add(a: Units, b: Units) -> Units:
    return Units(
        a.time_s + b.time_s,
        a.total_octets + b.total_octets,
        a.input_octets + b.input_octets,
        a.output_octets + b.output_octets,
        a.service_specific_units + b.service_specific_units,
        a.money_micros + b.money_micros,
    )
