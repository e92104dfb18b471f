"""Rates and the pure arithmetic of rating: no I/O, no clock.

A rate prices one rating group in one unit (seconds, bytes, service-specific units or
money): a ``connect_fee`` once, ``first_price`` for the first ``first_increment``
units, then ``price_micros`` per started ``increment`` (60/60, 60/1, 1/1, per KB), with
an optional ``min_charge`` and ``max_session_cost``.

Rounding rule (the only one): usage is rounded *up* to whole increments and every
started increment costs its full price; money is whole micros, so no money rounding
is needed. Within a session the rule applies to the cumulative usage of a rating
group: the cost of a report is ``session_cost(before + used) - session_cost(before)``,
so reporting 30 s twice on a 60/60 rate costs one increment, not two, and the minimum
charge and the session cap apply to the session's total.

Unit buckets give up whole increments too: ``billable_units`` is the usage rounded up
to the rate's increments, what a bucket pays for it (``consumption.py``).

The ledger scripts (``session.lua``, ``event.lua``) evaluate ``session_cost``,
``billable_units`` and ``affordable_units`` inside Redis so a request costs one round
trip; the functions here are the reference that the tests hold the scripts to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum
from functools import cached_property

from charging.errors import InvalidRequest
from charging.money import MAX_AMOUNT, MAX_UNITS


class UnitKind(IntEnum):
    TIME = 1
    VOLUME = 2
    SERVICE_SPECIFIC = 3
    MONEY = 4


class FinalUnitAction(IntEnum):
    TERMINATE = 1
    REDIRECT = 2
    RESTRICT_ACCESS = 3


@dataclass(frozen=True)
class Units:
    """Service units as carried in a request (RFC 8506 *-Service-Unit)."""

    time_s: int = 0
    total_octets: int = 0
    input_octets: int = 0
    output_octets: int = 0
    service_specific_units: int = 0
    money_micros: int = 0

    def count(self, unit: UnitKind) -> int:
        """The amount in ``unit``; volume falls back to input + output when total is 0."""
        if unit is UnitKind.TIME:
            return self.time_s
        if unit is UnitKind.VOLUME:
            return self.total_octets or self.input_octets + self.output_octets
        if unit is UnitKind.SERVICE_SPECIFIC:
            return self.service_specific_units
        return self.money_micros

    @staticmethod
    def of(unit: UnitKind, amount: int) -> Units:
        if unit is UnitKind.TIME:
            return Units(time_s=amount)
        if unit is UnitKind.VOLUME:
            return Units(total_octets=amount)
        if unit is UnitKind.SERVICE_SPECIFIC:
            return Units(service_specific_units=amount)
        return Units(money_micros=amount)


UNIT_FIELD = {
    UnitKind.TIME: "time_s",
    UnitKind.VOLUME: "total_octets",
    UnitKind.SERVICE_SPECIFIC: "service_specific_units",
    UnitKind.MONEY: "money_micros",
}


@dataclass(frozen=True)
class Rate:
    rating_group: int
    unit: UnitKind
    # Price of each started increment after the first one.
    increment: int
    price_micros: int
    default_quota: int
    validity_time_s: int
    name: str = ""
    free: bool = False
    final_unit_action: FinalUnitAction = FinalUnitAction.TERMINATE
    redirect_address: str = ""
    restriction_filter_rules: tuple[str, ...] = ()
    connect_fee: int = 0
    # The first increment and its price; first_increment 0 means "like the following ones".
    first_increment: int = 0
    first_price: int = 0
    min_charge: int = 0
    # 0: no cap.
    max_session_cost: int = 0

    @property
    def first(self) -> int:
        return self.first_increment or self.increment

    @property
    def first_cost(self) -> int:
        return self.first_price if self.first_increment else self.price_micros

    @cached_property
    def packed(self) -> str:
        """The rate as the ledger scripts read it (see ledger_lib.lua)."""
        return (
            f"{self.increment},{self.price_micros},{self.connect_fee},{self.first},"
            f"{self.first_cost},{self.min_charge},{self.max_session_cost}"
        )


def ceil_div(a: int, b: int) -> int:
    """Smallest integer q with q * b >= a (for b > 0)."""
    return -(-a // b)


def step_cost(rate: Rate, units: int) -> int:
    """Price of ``units`` from the start of a session, before minimum and cap."""
    if units <= 0:
        return 0
    rest = max(units - rate.first, 0)
    return rate.connect_fee + rate.first_cost + ceil_div(rest, rate.increment) * rate.price_micros


def billable_units(rate: Rate, units: int) -> int:
    """``units`` rounded up to whole increments: the first increment, then the following
    ones (60/1: 61 s -> 61, 5 s -> 60; per KB: 1 byte -> 1024). Within a session, a
    report of ``used`` more units bills ``billable_units(before + used) -
    billable_units(before)``."""
    if units <= 0:
        return 0
    return rate.first + ceil_div(max(units - rate.first, 0), rate.increment) * rate.increment


def session_cost(rate: Rate, units: int) -> int:
    """What ``units`` cost in total within one session: the step price, at least the
    minimum charge, at most the session cap."""
    if units <= 0:
        return 0
    total = max(step_cost(rate, units), rate.min_charge)
    return min(total, rate.max_session_cost) if rate.max_session_cost else total


def cost(rate: Rate, units: int) -> int:
    """Price of ``units`` on their own (an event, a price enquiry)."""
    return session_cost(rate, units)


def incremental_cost(rate: Rate, used_before: int, used: int) -> int:
    """Price of ``used`` more units after ``used_before`` units of the same session."""
    return session_cost(rate, used_before + used) - session_cost(rate, used_before)


def quota(rate: Rate, requested: int) -> int:
    """Units to reserve for a request: the requested amount (or the default quota when
    none is given), rounded up to whole increments."""
    wanted = requested if requested > 0 else rate.default_quota
    return ceil_div(wanted, rate.increment) * rate.increment


def affordable_units(rate: Rate, used_before: int, available: int, wanted: int) -> int:
    """The most units up to ``wanted`` whose incremental cost fits in ``available``.

    Solves ``session_cost(before + g) <= session_cost(before) + available`` in closed
    form: the unused rest of a paid increment is free, then whole increments.
    """
    budget = session_cost(rate, used_before) + max(available, 0)
    if rate.max_session_cost and rate.max_session_cost <= budget:
        return wanted
    if used_before == 0 and budget < max(rate.connect_fee + rate.first_cost, rate.min_charge):
        return 0
    if rate.price_micros == 0:
        return wanted
    steps = (budget - rate.connect_fee - rate.first_cost) // rate.price_micros
    reach = rate.first + steps * rate.increment
    return max(min(wanted, reach - used_before), 0)


def worst_case_cost(rate: Rate, units: int) -> int:
    """Upper bound of ``incremental_cost`` for ``units``, whatever came before."""
    fixed = rate.connect_fee + rate.first_cost + rate.min_charge
    return fixed + (ceil_div(units, rate.increment) + 1) * rate.price_micros


def check_units(rate: Rate, units: int, where: str) -> None:
    """Reject unit counts whose price could leave the exact integer range of the ledger."""
    if units > MAX_UNITS or worst_case_cost(rate, units) > MAX_AMOUNT:
        raise InvalidRequest(where, f"{units} units is beyond the supported maximum")


CURRENCY = re.compile(r"^[A-Z]{3}$")
# What the ledger scripts get where no rate applies (a preset result code).
NO_RATE = "1,0,0,1,0,0,0"
