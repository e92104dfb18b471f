"""Bill periods: from one bill cycle day to the next, at local midnight in the billing
account's time zone. Pure: instants are parameters.

A period is named after the month it starts in (``"2026-01"`` for 15 Jan - 14 Feb with
cycle day 15). Cycle days run 1-28 so that every month has one. A postpaid charging
account keeps its open periods as ``"id:end|id:end|id:end"`` (``bp``): the current period
first and the next two, so usage is recorded in the right period even when a bill run is
late by up to two periods (``ledger_lib.lua`` ``bill_period``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

OPEN_AHEAD = 3


@dataclass(frozen=True)
class Period:
    id: str
    start: date  # first local day
    end: date  # first local day of the next period
    start_s: int
    end_s: int  # exclusive

    @property
    def days(self) -> int:
        return (self.end - self.start).days

    @property
    def last_day(self) -> date:
        return self.end - timedelta(days=1)


def check_cycle_day(day: int) -> int:
    if not 1 <= day <= 28:
        raise ValueError("bill cycle day must be between 1 and 28")
    return day


def _midnight(d: date, tz: ZoneInfo) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=tz).timestamp())


def _add_month(d: date) -> date:
    return date(d.year + d.month // 12, d.month % 12 + 1, d.day)


@functools.lru_cache(maxsize=4096)
def period_starting(start: date, tz_name: str) -> Period:
    tz = ZoneInfo(tz_name)
    end = _add_month(start)
    return Period(f"{start.year:04d}-{start.month:02d}", start, end, _midnight(start, tz), _midnight(end, tz))


def period_at(cycle_day: int, tz_name: str, at_s: int) -> Period:
    """The period containing the instant ``at_s``."""
    check_cycle_day(cycle_day)
    local = datetime.fromtimestamp(at_s, ZoneInfo(tz_name)).date()
    start = date(local.year, local.month, cycle_day)
    if local.day < cycle_day:
        start = (
            date(local.year - 1, 12, cycle_day) if local.month == 1 else date(local.year, local.month - 1, cycle_day)
        )
    return period_starting(start, tz_name)


def following(period: Period, tz_name: str) -> Period:
    return period_starting(period.end, tz_name)


def by_id(period_id: str, cycle_day: int, tz_name: str) -> Period:
    year, month = (int(x) for x in period_id.split("-"))
    return period_starting(date(year, month, check_cycle_day(cycle_day)), tz_name)


def open_periods(first: Period, tz_name: str, n: int = OPEN_AHEAD) -> list[Period]:
    out = [first]
    while len(out) < n:
        out.append(following(out[-1], tz_name))
    return out


def pack(periods: list[Period]) -> str:
    """The ``bp`` field of a postpaid charging account."""
    return "|".join(f"{p.id}:{p.end_s}" for p in periods)


def unpack(bp: str) -> list[tuple[str, int]]:
    return [(pid, int(end)) for pid, end in (item.split(":") for item in bp.split("|") if item)]
