"""Recurring rentals of a line over a bill period, prorated by day. Pure.

The rule, per local day of the period: a day is charged at the plan and state the line is
in at the end of that day, except that the day a line terminates is charged at what it
was before (the customer had the line that day). Days in PENDING_ACTIVATION or
TERMINATED are free; SUSPENDED days are charged at ``suspended_bp`` basis points of the
rental (a stated billing setting: 10,000 = full rental, 0 = free while suspended). A plan
with monthly rental R charged for k of the period's N days costs ``share(R, k, N)`` micros
per stretch, then rounded once to minor units (``charging.money.to_minor``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from charging.money import share, to_minor
from postpaid.invoices import RENTAL, Charge
from postpaid.periods import Period

FREE_STATES = ("pending_activation", "terminated")


@dataclass(frozen=True)
class Change:
    """From ``at_s`` on, the line is in ``state`` with product ``plan_id``."""

    at_s: int
    state: str
    plan_id: str


def state_at(history: list[Change], at_s: int) -> Change | None:
    current = None
    for c in history:
        if c.at_s <= at_s:
            current = c
    return current


@functools.lru_cache(maxsize=64)
def _days(start: date, end: date, tz_name: str) -> tuple[tuple[int, int], ...]:
    """(start, end) instants of each local day from ``start`` to ``end`` (exclusive)."""
    tz = ZoneInfo(tz_name)
    out, day = [], start
    while day < end:
        nxt = day + timedelta(days=1)
        out.append(
            (
                int(datetime(day.year, day.month, day.day, tzinfo=tz).timestamp()),
                int(datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz).timestamp()),
            )
        )
        day = nxt
    return tuple(out)


def charged_days(history: list[Change], period: Period, tz_name: str) -> dict[tuple[str, str], int]:
    """Days of the period charged per (plan, state)."""
    ordered = sorted(history, key=lambda c: c.at_s)
    if ordered and ordered[-1].at_s <= period.start_s:
        # Nothing changed during the period (most lines): every day alike.
        last = ordered[-1]
        return {} if last.state in FREE_STATES else {(last.plan_id, last.state): period.days}
    out: dict[tuple[str, str], int] = {}
    for start_s, end_s in _days(period.start, period.end, tz_name):
        c = state_at(ordered, end_s - 1)
        if c is not None and c.state == "terminated" and c.at_s >= start_s:
            c = state_at(ordered, c.at_s - 1)
        if c is not None and c.state not in FREE_STATES:
            key = (c.plan_id, c.state)
            out[key] = out.get(key, 0) + 1
    return out


def rental_charges(
    history: list[Change],
    period: Period,
    tz_name: str,
    rentals: dict[str, tuple[str, int]],
    suspended_bp: int,
) -> list[Charge]:
    """Rental lines for a line: ``rentals`` maps plan id -> (plan name, monthly rental micros)."""
    per_plan: dict[str, list[int]] = {}
    for (plan_id, state), days in charged_days(history, period, tz_name).items():
        full, suspended = per_plan.setdefault(plan_id, [0, 0])
        per_plan[plan_id] = [full + days, suspended] if state != "suspended" else [full, suspended + days]
    out = []
    for plan_id in sorted(per_plan):
        name, rental = rentals.get(plan_id, (plan_id, 0))
        full, suspended = per_plan[plan_id]
        if rental <= 0:
            continue
        if full:
            out.append(_line(name, "", rental, full, period))
        if suspended and suspended_bp:
            out.append(_line(name, " while suspended", share(rental, suspended_bp, 10_000), suspended, period))
    return out


def _line(name: str, note: str, rental: int, days: int, period: Period) -> Charge:
    micros = rental if days == period.days else share(rental, days, period.days)
    prorated = "" if days == period.days else f" ({days}/{period.days} days)"
    return Charge(RENTAL, f"{name} monthly rental{note}{prorated}", to_minor(micros), days, "days")
