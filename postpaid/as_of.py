"""Billing and dunning as of a chosen day (``charging bill-run --as-of``, ``RunBilling``
and ``RunDunning`` ``as_of``). Pure: the instant now and the time zone are parameters.

A run as of a later day takes the start of that day in the billing time zone as its
"now": every period ended by then is billed and its invoice is issued on that day; the
ladder is walked as it stands on that day. Usage keeps the time it happened (it is in
the period containing it), so a line activated today is billed with ``--as-of`` a month
ahead. As of today is now itself, so ``--as-of`` today changes nothing. A day before
today is refused: invoices would be issued before ones already issued, and dunning never
goes back (``collection.py`` keeps the latest day each account was dunned as of). A day
more than ``MAX_AHEAD_DAYS`` ahead is refused too, so a mistyped year does not bill
decades of periods.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from charging.errors import InvalidRequest

MAX_AHEAD_DAYS = 366
_DAY = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


def day_of(at_s: int, tz: str) -> date:
    """The day the instant ``at_s`` falls on in the time zone ``tz``."""
    return datetime.fromtimestamp(at_s, ZoneInfo(tz)).date()


def start_of(day: date, tz: str) -> int:
    """The first instant (s) of ``day`` in the time zone ``tz``."""
    return int(datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(tz)).timestamp())


def instant(as_of: str, now_s: int, tz: str) -> int:
    """The instant a run as of the day ``as_of`` (YYYY-MM-DD, empty: today) takes as now;
    ``InvalidRequest`` on ``as_of`` for a malformed day, a day before today or one more
    than ``MAX_AHEAD_DAYS`` ahead."""
    if not as_of:
        return now_s
    try:
        if not _DAY.match(as_of):
            raise ValueError
        day = date.fromisoformat(as_of)
    except ValueError:
        raise InvalidRequest("as_of", f"must be a day YYYY-MM-DD, got {as_of!r}") from None
    today = day_of(now_s, tz)
    if day < today:
        raise InvalidRequest("as_of", f"must not be before today ({today.isoformat()} in {tz}), got {as_of}")
    if day > today + timedelta(days=MAX_AHEAD_DAYS):
        raise InvalidRequest("as_of", f"must be at most {MAX_AHEAD_DAYS} days after today ({today.isoformat()})")
    return now_s if day == today else start_of(day, tz)
