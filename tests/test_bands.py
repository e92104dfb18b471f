"""Tariff time bands: tables for the calendar cases operators sell, properties for the rest."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charging.bands import BandCalendar, BandRule, calendar_from_doc, parse_hhmm
from charging.errors import InvalidRequest

WEEKDAYS = frozenset(range(5))
WEEKEND = frozenset({5, 6})
EVERY_DAY = frozenset(range(7))
SUNDAY = frozenset({6})
FRIDAY = frozenset({4})


def utc(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def rule(band: str, days: frozenset[int], start: str, end: str) -> BandRule:
    return BandRule(band, days, parse_hhmm(start, "start"), parse_hhmm(end, "end"))


OFFICE = BandCalendar(
    time_zone="Europe/Berlin",
    rules=(rule("peak", WEEKDAYS, "08:00", "20:00"), rule("weekend", WEEKEND, "00:00", "24:00")),
    default_band="offpeak",
    holidays=frozenset({date(2026, 12, 25), date(2026, 12, 26)}),
    holiday_band="holiday",
)
# Friday night to Saturday morning only: the wrapped part belongs to the day it starts on.
FRIDAY_NIGHT = BandCalendar(
    time_zone="Europe/Berlin",
    rules=(rule("night", FRIDAY, "20:00", "08:00"), rule("day", EVERY_DAY, "08:00", "20:00")),
    default_band="other",
)
NIGHTS = BandCalendar("Europe/Berlin", (rule("night", EVERY_DAY, "20:00", "08:00"),), "day")
# Boundaries inside the Berlin spring gap (02:00-03:00) and repeated autumn hour (02:00-03:00).
SUNDAY_EARLY = BandCalendar("Europe/Berlin", (rule("early", SUNDAY, "02:30", "08:00"),), "base")
SUNDAY_LATE = BandCalendar("Europe/Berlin", (rule("late", SUNDAY, "01:00", "02:30"),), "base")
SUNDAY_GAP = BandCalendar("Europe/Berlin", (rule("gap", SUNDAY, "02:10", "02:40"),), "base")
KOLKATA = BandCalendar("Asia/Kolkata", (rule("peak", EVERY_DAY, "09:00", "21:00"),), "offpeak")
# Lord Howe sets its clock back by half an hour: 02:00 +11:00 becomes 01:30 +10:30.
LORD_HOWE = BandCalendar("Australia/Lord_Howe", (rule("x", EVERY_DAY, "01:45", "06:00"),), "y")
# Santiago changes its clock at local midnight, so holidays there are 25 or 23 hours long.
SANTIAGO = BandCalendar(
    "America/Santiago",
    (),
    "normal",
    holidays=frozenset({date(2026, 4, 4), date(2026, 9, 5)}),
    holiday_band="holiday",
)


@pytest.mark.parametrize(
    ("calendar", "instant", "band"),
    [
        # Weekday peak and off-peak, Berlin in winter is UTC+1.
        (OFFICE, "2026-03-04T06:59:59", "offpeak"),  # Wed 07:59:59
        (OFFICE, "2026-03-04T07:00:00", "peak"),  # Wed 08:00
        (OFFICE, "2026-03-04T18:59:59", "peak"),
        (OFFICE, "2026-03-04T19:00:00", "offpeak"),  # Wed 20:00, the end is exclusive
        (OFFICE, "2026-03-06T23:00:00", "weekend"),  # Sat 00:00
        (OFFICE, "2026-03-08T12:00:00", "weekend"),  # Sun 13:00
        (OFFICE, "2026-03-08T23:00:00", "offpeak"),  # Mon 00:00
        # Holidays override the rules for the whole local day.
        (OFFICE, "2026-12-24T22:59:59", "offpeak"),  # Thu 23:59:59
        (OFFICE, "2026-12-24T23:00:00", "holiday"),  # Fri 25th 00:00
        (OFFICE, "2026-12-25T11:00:00", "holiday"),  # would be peak
        (OFFICE, "2026-12-26T12:00:00", "holiday"),  # would be weekend
        (OFFICE, "2026-12-26T23:00:00", "weekend"),  # Sun 27th 00:00
        # A wrapped rule runs from the day it starts on into the next morning.
        (FRIDAY_NIGHT, "2026-03-06T19:00:00", "night"),  # Fri 20:00
        (FRIDAY_NIGHT, "2026-03-07T06:59:59", "night"),  # Sat 07:59:59
        (FRIDAY_NIGHT, "2026-03-07T07:00:00", "day"),  # Sat 08:00
        (FRIDAY_NIGHT, "2026-03-07T19:00:00", "other"),  # Sat 20:00, the rule is for Fridays
        (FRIDAY_NIGHT, "2026-03-06T06:00:00", "other"),  # Fri 07:00, Thursday has no night
        (NIGHTS, "2026-03-04T05:00:00", "night"),
        (NIGHTS, "2026-03-04T12:00:00", "day"),
        # Spring: 02:00 CET jumps to 03:00 CEST at 01:00 UTC; 08:00 local is 06:00 UTC.
        (NIGHTS, "2026-03-29T05:59:59", "night"),
        (NIGHTS, "2026-03-29T06:00:00", "day"),
        (SUNDAY_EARLY, "2026-03-29T00:59:59", "base"),  # 01:59:59 CET
        (SUNDAY_EARLY, "2026-03-29T01:00:00", "early"),  # 03:00 CEST: 02:30 takes effect after the gap
        (SUNDAY_EARLY, "2026-03-29T06:00:00", "base"),  # 08:00 CEST
        (SUNDAY_GAP, "2026-03-29T01:00:00", "base"),  # 02:10-02:40 does not exist that day
        (SUNDAY_GAP, "2026-03-22T01:10:00", "gap"),  # but does the week before
        # Autumn: 03:00 CEST goes back to 02:00 CET at 01:00 UTC; 08:00 local is 07:00 UTC.
        (SUNDAY_EARLY, "2026-10-25T00:29:59", "base"),  # 02:29:59 CEST
        (SUNDAY_EARLY, "2026-10-25T00:30:00", "early"),  # 02:30 CEST, first occurrence
        (SUNDAY_EARLY, "2026-10-25T01:00:00", "early"),  # 02:00 CET, the second 02:00 does not undo it
        (SUNDAY_EARLY, "2026-10-25T01:30:00", "early"),  # 02:30 CET
        (SUNDAY_EARLY, "2026-10-25T06:59:59", "early"),
        (SUNDAY_EARLY, "2026-10-25T07:00:00", "base"),  # 08:00 CET
        (SUNDAY_LATE, "2026-10-24T23:00:00", "late"),  # 01:00 CEST
        (SUNDAY_LATE, "2026-10-25T00:29:59", "late"),
        (SUNDAY_LATE, "2026-10-25T00:30:00", "base"),  # ended at the first 02:30
        (SUNDAY_LATE, "2026-10-25T01:00:00", "base"),  # the second 02:00 does not restart it
        (SUNDAY_LATE, "2026-10-25T01:29:59", "base"),
        (NIGHTS, "2026-10-25T06:59:59", "night"),
        (NIGHTS, "2026-10-25T07:00:00", "day"),
        # Half-hour and odd offsets.
        (KOLKATA, "2026-06-01T03:29:59", "offpeak"),  # 08:59:59 IST
        (KOLKATA, "2026-06-01T03:30:00", "peak"),  # 09:00 IST
        (KOLKATA, "2026-06-01T15:29:59", "peak"),
        (KOLKATA, "2026-06-01T15:30:00", "offpeak"),  # 21:00 IST
        (LORD_HOWE, "2026-04-04T14:44:59", "y"),  # 01:44:59 +11:00
        (LORD_HOWE, "2026-04-04T14:45:00", "x"),  # 01:45 +11:00, first occurrence
        (LORD_HOWE, "2026-04-04T15:00:00", "x"),  # 01:30 +10:30, the clock went back
        (LORD_HOWE, "2026-04-04T19:29:59", "x"),
        (LORD_HOWE, "2026-04-04T19:30:00", "y"),  # 06:00 +10:30
        # Clock changes at midnight: Sat 4 April 2026 lasts until 04:00 UTC on the 5th.
        (SANTIAGO, "2026-04-04T02:59:59", "normal"),  # Fri 23:59:59 -03:00
        (SANTIAGO, "2026-04-04T03:00:00", "holiday"),  # Sat 00:00 -03:00
        (SANTIAGO, "2026-04-05T03:30:00", "holiday"),  # Sat 23:30 -04:00, second time round
        (SANTIAGO, "2026-04-05T04:00:00", "normal"),  # Sun 00:00 -04:00
        (SANTIAGO, "2026-09-05T03:59:59", "normal"),  # Fri 23:59:59 -04:00
        (SANTIAGO, "2026-09-05T04:00:00", "holiday"),  # Sat 00:00 -04:00
        (SANTIAGO, "2026-09-06T03:59:59", "holiday"),
        (SANTIAGO, "2026-09-06T04:00:00", "normal"),  # Sun 01:00 -03:00, midnight did not exist
    ],
)
def test_band_at(calendar: BandCalendar, instant: str, band: str) -> None:
    assert calendar.band_at(utc(instant)) == band


@pytest.mark.parametrize(
    ("calendar", "instant", "change"),
    [
        (OFFICE, "2026-03-04T12:00:00", "2026-03-04T19:00:00"),
        (OFFICE, "2026-03-04T19:00:00", "2026-03-05T07:00:00"),
        (OFFICE, "2026-03-06T19:00:00", "2026-03-06T23:00:00"),  # Fri 20:00 -> Sat 00:00
        (OFFICE, "2026-03-07T12:00:00", "2026-03-08T23:00:00"),  # weekend lasts both days
        (OFFICE, "2026-12-24T12:00:00", "2026-12-24T19:00:00"),
        (OFFICE, "2026-12-24T19:00:00", "2026-12-24T23:00:00"),  # into the holiday
        (OFFICE, "2026-12-25T10:00:00", "2026-12-26T23:00:00"),  # holiday, holiday, then weekend
        (FRIDAY_NIGHT, "2026-03-06T12:00:00", "2026-03-06T19:00:00"),
        (FRIDAY_NIGHT, "2026-03-06T19:00:00", "2026-03-07T07:00:00"),  # night -> day
        (NIGHTS, "2026-03-28T20:00:00", "2026-03-29T06:00:00"),  # a night of 10 hours
        (NIGHTS, "2026-10-24T20:00:00", "2026-10-25T07:00:00"),  # a night of 12 hours, wall 13
        (SUNDAY_EARLY, "2026-03-29T00:00:00", "2026-03-29T01:00:00"),
        (SUNDAY_EARLY, "2026-10-25T00:00:00", "2026-10-25T00:30:00"),
        (SUNDAY_EARLY, "2026-10-25T00:30:00", "2026-10-25T07:00:00"),
        (SUNDAY_EARLY, "2026-10-25T01:15:00", "2026-10-25T07:00:00"),  # asked from the repeated hour
        (SUNDAY_LATE, "2026-10-25T00:00:00", "2026-10-25T00:30:00"),
        (SUNDAY_LATE, "2026-10-25T00:30:00", "2026-11-01T00:00:00"),  # next Sunday 01:00 CET
        (SUNDAY_GAP, "2026-03-29T00:00:00", "2026-04-05T00:10:00"),  # the empty window is no change
        (KOLKATA, "2026-06-01T00:00:00", "2026-06-01T03:30:00"),
        (LORD_HOWE, "2026-04-04T14:00:00", "2026-04-04T14:45:00"),
        (LORD_HOWE, "2026-04-04T14:45:00", "2026-04-04T19:30:00"),
        (SANTIAGO, "2026-04-04T12:00:00", "2026-04-05T04:00:00"),
        (SANTIAGO, "2026-09-05T12:00:00", "2026-09-06T04:00:00"),
    ],
)
def test_next_change(calendar: BandCalendar, instant: str, change: str) -> None:
    assert calendar.next_change(utc(instant)) == utc(change)


def test_adjacent_rules_with_the_same_band_are_one_band() -> None:
    calendar = BandCalendar(
        "UTC",
        (rule("peak", EVERY_DAY, "08:00", "12:00"), rule("peak", EVERY_DAY, "12:00", "20:00")),
        "offpeak",
    )
    assert calendar.next_change(utc("2026-03-04T09:00:00")) == utc("2026-03-04T20:00:00")


def test_first_matching_rule_wins() -> None:
    calendar = BandCalendar(
        "UTC",
        (rule("peak", EVERY_DAY, "08:00", "20:00"), rule("lunch", EVERY_DAY, "12:00", "13:00")),
        "offpeak",
    )
    assert calendar.band_at(utc("2026-03-04T12:30:00")) == "peak"
    assert calendar.next_change(utc("2026-03-04T09:00:00")) == utc("2026-03-04T20:00:00")


def test_next_change_within_the_horizon_only() -> None:
    start, change = utc("2026-03-04T12:00:00"), utc("2026-03-04T19:00:00")
    assert OFFICE.next_change(start, horizon_s=change - start) == change
    assert OFFICE.next_change(start, horizon_s=change - start - 1) is None
    assert OFFICE.next_change(start, horizon_s=0) is None


def test_a_calendar_without_changes_has_no_next_change() -> None:
    flat = BandCalendar("Europe/Berlin", (rule("all", EVERY_DAY, "00:00", "24:00"),), "never")
    assert flat.next_change(utc("2026-03-29T00:00:00")) is None
    assert flat.band_at(utc("2026-10-25T01:30:00")) == "all"
    # Holidays are ignored unless there is a holiday band.
    ignored = BandCalendar("UTC", (), "flat", holidays=frozenset({date(2026, 3, 4)}))
    assert ignored.next_change(utc("2026-03-03T12:00:00")) is None


def test_a_long_horizon_finds_a_far_change() -> None:
    new_year = BandCalendar("Asia/Kathmandu", (), "normal", frozenset({date(2027, 1, 1)}), "holiday")
    assert new_year.next_change(utc("2026-03-04T00:00:00"), horizon_s=400 * 86400) == utc("2026-12-31T18:15:00")


# --- documents ------------------------------------------------------------------------


def office_doc() -> dict[str, Any]:
    return {
        "time_zone": "Europe/Berlin",
        "default_band": "offpeak",
        "holiday_band": "holiday",
        "holidays": ["2026-12-25", "2026-12-26"],
        "rules": [
            {"band": "peak", "days": ["mon", "tue", "wed", "thu", "fri"], "start": "08:00", "end": "20:00"},
            {"band": "weekend", "days": ["sat", "sun"], "start": "00:00", "end": "24:00"},
        ],
    }


def test_calendar_from_doc() -> None:
    assert calendar_from_doc(office_doc(), "bands") == OFFICE


def test_calendar_from_doc_minimal_and_midnight_end() -> None:
    doc = {
        "time_zone": "UTC",
        "default_band": "day",
        "rules": [{"band": "n", "days": ["sun"], "start": "20:00", "end": "00:00"}],
    }
    calendar = calendar_from_doc(doc, "bands")
    assert calendar == BandCalendar("UTC", (BandRule("n", SUNDAY, 1200, 1440),), "day")
    assert calendar_from_doc({"time_zone": "UTC", "default_band": "flat"}, "b") == BandCalendar("UTC", (), "flat")
    nulls = {"time_zone": "UTC", "default_band": "flat", "holiday_band": None, "holidays": None, "rules": None}
    assert calendar_from_doc(nulls, "b") == BandCalendar("UTC", (), "flat")


def set_path(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    target: Any = doc
    for key in path[:-1]:
        target = target[key]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value


DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("time_zone",), "Mars/Olympus_Mons", "time_zone"),
        (("time_zone",), "europe/berlin", "time_zone"),
        (("time_zone",), "../../etc/passwd", "time_zone"),
        (("time_zone",), "", "time_zone"),
        (("time_zone",), "localtime", "time_zone"),
        (("time_zone",), 1, "time_zone"),
        (("time_zone",), DELETE, "time_zone"),
        (("default_band",), DELETE, "default_band"),
        (("default_band",), "", "default_band"),
        (("default_band",), "Peak", "default_band"),
        (("default_band",), "1st", "default_band"),
        (("default_band",), "a" * 33, "default_band"),
        (("default_band",), "peak\n", "default_band"),
        (("holiday_band",), "", "holiday_band"),
        (("holiday_band",), DELETE, "holiday_band"),  # holidays are listed
        (("holidays",), "2026-12-25", "holidays"),
        (("holidays", 1), "2026-13-01", "holidays[1]"),
        (("holidays", 1), "2026-02-30", "holidays[1]"),
        (("holidays", 0), "20261225", "holidays[0]"),
        (("holidays", 0), "2026-W52-5", "holidays[0]"),
        (("holidays", 0), 20261225, "holidays[0]"),
        (("rules",), {"band": "peak"}, "rules"),
        (("rules", 1), "weekend", "rules[1]"),
        (("rules", 0, "band"), 7, "rules[0].band"),
        (("rules", 1, "band"), DELETE, "rules[1].band"),
        (("rules", 0, "days"), [], "rules[0].days"),
        (("rules", 0, "days"), "mon", "rules[0].days"),
        (("rules", 0, "days", 3), "thursday", "rules[0].days[3]"),
        (("rules", 0, "days", 0), "Mon", "rules[0].days[0]"),
        (("rules", 1, "start"), "8:00", "rules[1].start"),
        (("rules", 1, "start"), "24:00", "rules[1].start"),
        (("rules", 1, "start"), "12:60", "rules[1].start"),
        (("rules", 1, "start"), DELETE, "rules[1].start"),
        (("rules", 0, "end"), "24:01", "rules[0].end"),
        (("rules", 0, "end"), 1200, "rules[0].end"),
    ],
)
def test_calendar_from_doc_names_the_bad_field(path: tuple[Any, ...], value: Any, field: str) -> None:
    doc = office_doc()
    set_path(doc, path, value)
    with pytest.raises(InvalidRequest) as caught:
        calendar_from_doc(doc, "plans[0].bands")
    assert caught.value.field == f"plans[0].bands.{field}"
    assert caught.value.message


def test_calendar_from_doc_rejects_a_non_object() -> None:
    with pytest.raises(InvalidRequest) as caught:
        calendar_from_doc(["Europe/Berlin"], "plans[2].bands")  # type: ignore[arg-type]
    assert caught.value.field == "plans[2].bands"


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("00:00", 0), ("00:01", 1), ("08:00", 480), ("12:30", 750), ("23:59", 1439), ("24:00", 1440)],
)
def test_parse_hhmm(text: str, minutes: int) -> None:
    assert parse_hhmm(text, "f") == minutes


@pytest.mark.parametrize(
    "text",
    [
        "",
        "8:00",
        "08:0",
        "0800",
        "08:00 ",
        " 08:00",
        "08:00\n",
        "24:01",
        "25:00",
        "12:60",
        "\u0660\u0668:\u0660\u0660",
        None,
        480,
    ],
)
def test_parse_hhmm_rejects(text: Any) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_hhmm(text, "rules[0].start")
    assert caught.value.field == "rules[0].start"


@pytest.mark.parametrize(
    ("start", "end", "days"),
    [(-1, 60, WEEKDAYS), (1440, 60, WEEKDAYS), (0, 0, WEEKDAYS), (0, 1441, WEEKDAYS), (0, 60, frozenset({7}))],
)
def test_band_rule_rejects_impossible_values(start: int, end: int, days: frozenset[int]) -> None:
    with pytest.raises(ValueError):
        BandRule("peak", days, start, end)


def test_band_calendar_rejects_an_unknown_zone() -> None:
    with pytest.raises(KeyError):
        BandCalendar("Nowhere/Special", (), "flat")


# --- properties -----------------------------------------------------------------------

# Zones with DST in either hemisphere, a half-hour DST shift, a change at midnight and odd offsets.
ZONES = [
    "Europe/Berlin",
    "America/New_York",
    "America/Santiago",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Pacific/Chatham",
    "UTC",
]
# Instants at which some of those zones change their clocks, to land near them often.
TRANSITIONS = [
    utc("2026-03-29T01:00:00"),
    utc("2026-10-25T01:00:00"),
    utc("2026-03-08T07:00:00"),
    utc("2026-11-01T06:00:00"),
    utc("2026-04-05T03:00:00"),
    utc("2026-09-06T04:00:00"),
    utc("2026-04-04T15:00:00"),
    utc("2026-10-03T15:30:00"),
]
HORIZON = 8 * 86400
# Minutes near which clocks change (midnight, 01:00-03:00) are drawn often.
minutes = st.one_of(st.sampled_from([0, 60, 90, 105, 120, 135, 150, 180, 1380]), st.integers(0, 1439))
bands = st.sampled_from(["peak", "offpeak", "night", "weekend"])
rules = st.builds(
    BandRule,
    band=bands,
    days=st.frozensets(st.integers(0, 6), min_size=1),
    start_minute=minutes,
    end_minute=minutes.map(lambda m: m or 1440),
)
calendars = st.builds(
    BandCalendar,
    time_zone=st.sampled_from(ZONES),
    rules=st.lists(rules, max_size=3).map(tuple),
    default_band=bands,
    holidays=st.frozensets(st.integers(0, 400).map(lambda n: date(2026, 1, 1) + timedelta(days=n)), max_size=4),
    holiday_band=st.one_of(st.none(), bands),
)
instants = st.one_of(
    st.integers(utc("2026-01-01T00:00:00"), utc("2027-01-01T00:00:00")),
    st.builds(lambda base, delta: base + delta, st.sampled_from(TRANSITIONS), st.integers(-3 * 3600, 3 * 3600)),
)


def reference_band(calendar: BandCalendar, t: int) -> str:
    """The rules read at the latest wall time the clock has shown, by brute force.

    Only a clock that was set back in the last hours can have shown a later wall time
    than now; then every whole minute of those hours is looked at (no clock here goes
    back further, and every change happens on a whole minute).
    """
    zone = ZoneInfo(calendar.time_zone)
    now, before = datetime.fromtimestamp(t, zone), datetime.fromtimestamp(t - 3 * 3600, zone)
    readings = [now]
    if now.utcoffset() != before.utcoffset():
        readings += [datetime.fromtimestamp(s, zone) for s in range(t - t % 60 - 3 * 3600, t, 60)]
    wall = max(r.replace(tzinfo=None) for r in readings)
    if calendar.holiday_band is not None and wall.date() in calendar.holidays:
        return calendar.holiday_band
    minute, today = wall.hour * 60 + wall.minute, wall.weekday()
    for r in calendar.rules:
        if r.start_minute < r.end_minute:
            hit = today in r.days and r.start_minute <= minute < r.end_minute
        else:
            hit = (today in r.days and minute >= r.start_minute) or (
                (today - 1) % 7 in r.days and minute < r.end_minute
            )
        if hit:
            return r.band
    return calendar.default_band


@settings(max_examples=200, deadline=None)
@given(calendars, instants)
def test_next_change_agrees_with_band_at(calendar: BandCalendar, t: int) -> None:
    band = calendar.band_at(t)
    assert band == reference_band(calendar, t)

    # The change is a change, and the band holds until then.
    change = calendar.next_change(t)
    if change is None:
        assert [calendar.band_at(x) for x in (t + 1, t + HORIZON // 2, t + HORIZON)] == [band] * 3
    else:
        assert t < change <= t + HORIZON
        assert calendar.band_at(change) != band
        assert {calendar.band_at(x) for x in (t + 1, (t + change) // 2, change - 1) if x < change} <= {band}

    # None is missed: every offset and clock change of these zones is a whole minute, so a
    # band can only change on a whole UTC minute and a scan of those is a complete reference.
    scan_s = 3 * 3600
    first_minute = t - t % 60 + 60
    scanned = next((x for x in range(first_minute, t + scan_s + 1, 60) if calendar.band_at(x) != band), None)
    assert calendar.next_change(t, horizon_s=scan_s) == scanned
