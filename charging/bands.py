"""Tariff time bands (peak, off-peak, weekend, holidays) in a plan's own time zone.

Bands are written as local wall-clock times because that is how operators sell them
("peak is 08:00-20:00 on weekdays"), so a boundary at 08:00 stays at 08:00 local time on
both sides of a daylight-saving change. Wall time is not monotonic, so each boundary is
pinned to one instant: the first instant at which the local clock reads that wall time or
later. That gives the two DST rules in one definition:

* a wall time inside the spring gap takes effect when the gap ends;
* a wall time inside the repeated autumn hour takes effect at its first occurrence
  (fold=0) and is not undone when the clock is set back.

Equivalently, the band at an instant is read off the *effective* wall time, the latest
wall time the clock has shown so far. Outside the repeated hour that is the wall time
itself; during the second pass of the repeated hour it is the last second before the
clock was set back.

All instants are whole seconds since the Unix epoch; nothing here reads the clock.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from charging.errors import InvalidRequest

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MINUTES_PER_DAY = 1440
BAND_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
HHMM = re.compile(r"([0-9]{2}):([0-9]{2})")
ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


@dataclass(frozen=True)
class BandRule:
    """One band on some weekdays between two local wall-clock minutes.

    ``end_minute <= start_minute`` wraps past midnight; the wrapped part belongs to the
    day the rule starts on, so "fri 20:00-08:00" covers Saturday morning but not Friday
    morning.
    """

    band: str
    days: frozenset[int]
    start_minute: int
    end_minute: int

    def __post_init__(self) -> None:
        if not 0 <= self.start_minute < MINUTES_PER_DAY:
            raise ValueError(f"start_minute {self.start_minute} is outside 0..1439")
        if not 1 <= self.end_minute <= MINUTES_PER_DAY:
            raise ValueError(f"end_minute {self.end_minute} is outside 1..1440")
        if not self.days <= frozenset(range(7)):
            raise ValueError(f"days {sorted(self.days)} are not all weekdays 0..6")

    @property
    def wraps(self) -> bool:
        return self.end_minute <= self.start_minute

    def covers(self, day: date, minute: int) -> bool:
        """Whether the rule holds at ``minute`` of the local ``day``."""
        if not self.wraps:
            return day.weekday() in self.days and self.start_minute <= minute < self.end_minute
        if day.weekday() in self.days and minute >= self.start_minute:
            return True
        return (day.weekday() - 1) % 7 in self.days and minute < self.end_minute


@dataclass(frozen=True)
class BandCalendar:
    """The bands of one plan: rules in priority order, a default, and holidays."""

    time_zone: str
    rules: tuple[BandRule, ...]
    default_band: str
    holidays: frozenset[date] = frozenset()
    holiday_band: str | None = None
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Resolved once so a bad name fails at construction, not on the first call.
        object.__setattr__(self, "_zone", ZoneInfo(self.time_zone))

    def band_at(self, epoch_s: int) -> str:
        wall = _effective_wall(epoch_s, self._zone)
        return self._band_at_wall(wall.date(), wall.hour * 60 + wall.minute)

    def next_change(self, epoch_s: int, horizon_s: int = 8 * 86400) -> int | None:
        """First whole second t > epoch_s where band_at(t) != band_at(epoch_s), or None if none within horizon_s.

        The band only changes where the effective wall time crosses a rule or holiday
        boundary, so only those instants are tried, earliest first. Days are expanded
        one at a time: every boundary produced by a later day is at or after that day's
        local midnight, so the candidates before it are final and can be tried before
        the next day is expanded. ``t == epoch_s + horizon_s`` is still within the horizon.
        """
        current = self.band_at(epoch_s)
        limit = epoch_s + horizon_s
        # A rule that wraps from the previous local day may still be running.
        day = datetime.fromtimestamp(epoch_s, self._zone).date() - timedelta(days=1)
        pending: list[int] = []
        while True:
            for instant in self._boundaries(day):
                if epoch_s < instant <= limit:
                    heapq.heappush(pending, instant)
            day += timedelta(days=1)
            settled = _instant(day, 0, self._zone)
            tried = None
            while pending and (pending[0] < settled or settled > limit):
                candidate = heapq.heappop(pending)
                if candidate != tried and self.band_at(candidate) != current:
                    return candidate
                tried = candidate
            if settled > limit:
                return None

    def _band_at_wall(self, day: date, minute: int) -> str:
        if self.holiday_band is not None and day in self.holidays:
            return self.holiday_band
        for rule in self.rules:
            if rule.covers(day, minute):
                return rule.band
        return self.default_band

    def _boundaries(self, day: date) -> Iterator[int]:
        """Instants at which a rule or holiday that belongs to local ``day`` starts or ends."""
        weekday = day.weekday()
        for rule in self.rules:
            if weekday in rule.days:
                yield _instant(day, rule.start_minute, self._zone)
                end = rule.end_minute + (MINUTES_PER_DAY if rule.wraps else 0)
                yield _instant(day, end, self._zone)
        if self.holiday_band is not None and day in self.holidays:
            yield _instant(day, 0, self._zone)
            yield _instant(day, MINUTES_PER_DAY, self._zone)


def _wall(epoch_s: int, zone: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(epoch_s, zone).replace(tzinfo=None)


def _effective_wall(epoch_s: int, zone: ZoneInfo) -> datetime:
    """The latest local wall time shown up to ``epoch_s`` (see the module docstring)."""
    local = datetime.fromtimestamp(epoch_s, zone)
    if not local.fold:
        return local.replace(tzinfo=None)
    # Second pass of a repeated hour: find the instant the clock was set back, a search
    # over at most the length of the repeat (about 12 steps for an hour).
    low = int(local.replace(fold=0).timestamp())  # first pass, before the set-back
    high = epoch_s  # known to be after the set-back
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).fold:
            high = middle
        else:
            low = middle
    return _wall(high - 1, zone)


def _instant(day: date, minute: int, zone: ZoneInfo) -> int:
    """The first instant at which the local clock shows ``minute`` after midnight of ``day`` or later.

    ``minute`` may exceed a day (an end on the following day). For a wall time in the
    repeated hour this is its first occurrence; for one inside a spring gap it is the
    end of the gap.
    """
    wall = datetime.combine(day, time()) + timedelta(minutes=minute)
    first = int(wall.replace(tzinfo=zone).timestamp())
    if _wall(first, zone) == wall:
        return first
    # In a gap: fold=0 reads the wall time with the offset before the change and lands
    # after the gap, fold=1 with the offset after and lands before it.
    low = int(wall.replace(tzinfo=zone, fold=1).timestamp())
    high = first
    if low > high:
        low, high = high, low
    while high - low > 1:
        middle = (low + high) // 2
        if _wall(middle, zone) >= wall:
            high = middle
        else:
            low = middle
    return high


# --- band documents --------------------------------------------------------------------


def parse_hhmm(text: str, field: str) -> int:
    """Minutes after local midnight of an ``HH:MM`` text, "24:00" being the end of the day."""
    match = HHMM.fullmatch(text) if isinstance(text, str) else None
    if match is not None:
        hours, minutes = int(match.group(1)), int(match.group(2))
        if (hours < 24 and minutes < 60) or (hours == 24 and minutes == 0):
            return hours * 60 + minutes
    raise InvalidRequest(field, "must be a time HH:MM between 00:00 and 24:00")


def calendar_from_doc(doc: Mapping[str, Any], where: str) -> BandCalendar:
    """Build a band calendar from its JSON document, naming the first bad field under ``where``."""
    if not isinstance(doc, Mapping):
        raise InvalidRequest(where, "must be an object")
    time_zone = doc.get("time_zone")
    # "localtime" is a file in the zone directory on many hosts, not an IANA name; a plan
    # must not take its bands from whatever machine rates it.
    if not isinstance(time_zone, str) or time_zone == "localtime":
        raise InvalidRequest(f"{where}.time_zone", "must be an IANA time zone such as Europe/Berlin")
    try:
        ZoneInfo(time_zone)
    except (KeyError, ValueError, OSError):
        raise InvalidRequest(f"{where}.time_zone", f"unknown time zone {time_zone!r}") from None
    default_band = _band_name(doc.get("default_band"), f"{where}.default_band")
    holiday_band = doc.get("holiday_band")
    if holiday_band is not None:
        holiday_band = _band_name(holiday_band, f"{where}.holiday_band")
    # Optional fields may be absent or null.
    holidays = _holidays([] if doc.get("holidays") is None else doc["holidays"], f"{where}.holidays")
    if holidays and holiday_band is None:
        raise InvalidRequest(f"{where}.holiday_band", "is required when holidays are listed")
    raw_rules = [] if doc.get("rules") is None else doc["rules"]
    if not isinstance(raw_rules, list):
        raise InvalidRequest(f"{where}.rules", "must be a list")
    rules = tuple(_rule_from_doc(raw, f"{where}.rules[{i}]") for i, raw in enumerate(raw_rules))
    return BandCalendar(
        time_zone=time_zone,
        rules=rules,
        default_band=default_band,
        holidays=holidays,
        holiday_band=holiday_band,
    )


def _band_name(value: Any, field: str) -> str:
    if not isinstance(value, str) or not BAND_NAME.fullmatch(value):
        raise InvalidRequest(field, "must be 1-32 characters of a-z 0-9 _ - starting with a letter")
    return value


def _holidays(value: Any, field: str) -> frozenset[date]:
    if not isinstance(value, list):
        raise InvalidRequest(field, "must be a list of dates YYYY-MM-DD")
    days: set[date] = set()
    for i, raw in enumerate(value):
        # fromisoformat alone would also take "20261225" and week dates.
        try:
            if not isinstance(raw, str) or not ISO_DATE.fullmatch(raw):
                raise ValueError(raw)
            days.add(date.fromisoformat(raw))
        except ValueError:
            raise InvalidRequest(f"{field}[{i}]", "must be a date YYYY-MM-DD") from None
    return frozenset(days)


def _rule_from_doc(raw: Any, where: str) -> BandRule:
    if not isinstance(raw, Mapping):
        raise InvalidRequest(where, "must be an object")
    band = _band_name(raw.get("band"), f"{where}.band")
    raw_days = raw.get("days")
    if not isinstance(raw_days, list) or not raw_days:
        raise InvalidRequest(f"{where}.days", "must be a non-empty list of mon tue wed thu fri sat sun")
    days: set[int] = set()
    for j, name in enumerate(raw_days):
        if name not in DAY_NAMES:
            raise InvalidRequest(f"{where}.days[{j}]", f"must be one of {', '.join(DAY_NAMES)}")
        days.add(DAY_NAMES.index(name))
    start = parse_hhmm(raw.get("start", ""), f"{where}.start")
    if start == MINUTES_PER_DAY:
        raise InvalidRequest(f"{where}.start", "must be between 00:00 and 23:59")
    # An end of "00:00" means the coming midnight, the same as "24:00".
    end = parse_hhmm(raw.get("end", ""), f"{where}.end") or MINUTES_PER_DAY
    return BandRule(band=band, days=frozenset(days), start_minute=start, end_minute=end)
