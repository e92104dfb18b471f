"""Tariff changes in the workload: minute bands, how a PGW splits its usage, the price.

The chaos catalog puts its plans on a band calendar whose band changes at every minute
(UTC): odd minutes are ``peak``, the rest ``offpeak``. The session accounts' plan
(``default``) gets a peak voice rate (``PEAK_VOICE``, against its per-minute rate); the
CRM lines' and postpaid lines' plans keep their own national peak and off-peak prices
(their weekend band and holidays are dropped). With validity times of 2 s, a grant asked
for in the last 2 s before a minute ends carries a ``tariff_change_time``: a run crosses
a boundary every minute, and a clock jump lands anywhere in a minute.

A client then reports as a PGW would: the units it used after the change in
``used_after_tariff_change``, the rest in ``used`` (``split``), once its own clock has
passed the change (in time with the server's when the answer came; a jump of the
server's clock after that does not move it, as NTP stepping the charging system's clock
does not move a gateway's).

What each report must cost comes from the product's reference (``charging/rating.py``,
the rates from ``charging/catalog.py``), never from the scripts' arithmetic: the units
before the change at the rate in force just before it, those after it at the rate in
force at it, each on the session's cumulative usage of the rating group
(``rating.incremental_cost``); a report of a grant that announced no change at the rate
of the band its usage record names (the band the server rated it in). ``priced`` holds
every acknowledged report to it: exactly, or at most it when the answer was 4012 (usage
the money no longer covered is not billed, README "Usage limits"); reports that buckets
paid for are not priced here (session accounts buy none).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from chaos import checks
from chaos.history import History, Operation
from charging.catalog import Catalog, Usage
from charging.rating import Rate, incremental_cost

PLAN = "default"  # the session accounts' plan in the chaos catalog
RATING_GROUP = 10  # voice, the rating group of every session step (workload.session_message)
PEAK_VOICE: dict[str, Any] = {
    # Unlike the plan's 60/60 rate: a shorter first increment, then per second, so a
    # split priced at the wrong rate, or at one rate, costs something else.
    "name": "voice, peak minutes",
    "service": "voice",
    "bands": ["peak"],
    "first_increment": 30,
    "first_price_micros": 90_000,
    "increment": 1,
    "price_micros": 2_500,
    "default_quota": 300,
}
# Answers whose usage the script charged (and recorded); 4012 may have charged less.
CHARGED = (2001, 4010, 4012)
LIMITED = 4012


def minute_bands(holiday_band: str | None = None) -> dict[str, Any]:
    """A band calendar document in which the band changes at every minute. A
    ``holiday_band`` is named (so that rates naming it stay valid) but has no days."""
    every_day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    rules = [{"band": "peak", "days": every_day, "start": _hhmm(m), "end": _hhmm(m + 1)} for m in range(1, 24 * 60, 2)]
    return {"time_zone": "UTC", "default_band": "offpeak", "holiday_band": holiday_band, "rules": rules}


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def with_tariff_changes(doc: dict[str, Any], validity_s: int) -> dict[str, Any]:
    """The catalog document with every plan that has bands on minute bands (its own peak
    and off-peak prices), and ``PLAN`` on them too, with a peak voice rate."""
    doc = copy.deepcopy(doc)
    for plan in doc["plans"]:
        if plan.get("time_bands"):
            # Their weekend band stays a name only: no holidays, no weekend rule.
            plan["time_bands"] = minute_bands(plan["time_bands"].get("holiday_band"))
    plan = next(p for p in doc["plans"] if p["id"] == PLAN)
    plan["time_bands"] = minute_bands()
    for version in plan["versions"]:
        rates = version["rates"]
        # Before the plan's own voice rate (the first matching rule wins), after the free ones.
        at = next(i for i, r in enumerate(rates) if r["service"] == "voice" and not r.get("free"))
        rates.insert(at, {**PEAK_VOICE, "validity_time_s": validity_s})
    return doc


def split(used: int, draw: float) -> tuple[int, int]:
    """Units before and after a tariff change of a report of ``used`` units, for a
    ``draw`` in [0, 1): any share after it, none to all of them, equally likely."""
    after = min(int(draw * (used + 1)), used)
    return used - after, after


@dataclass(frozen=True)
class SessionRecord:
    """A session request's usage record (``charging/cdrs.py`` layout ``s``), as relayed."""

    plan_id: str
    band: str
    at_s: int  # when the server rated it, on its own clock
    units: int
    money_micros: int
    from_buckets: bool


@dataclass(frozen=True)
class Report:
    """One acknowledged UPDATE or TERMINATE and what the client knew when it sent it."""

    op: Operation
    used_before: int  # the cumulative usage of the rating group before this report
    change_s: int  # the tariff change its grant announced (0: none)

    @property
    def before(self) -> int:
        return int(self.op.request["used_s"])

    @property
    def after(self) -> int:
        return int(self.op.request.get("used_after_s", 0))


def reports(history: History) -> list[Report]:
    """Every acknowledged report of usage, in the order of its session's steps."""
    steps: dict[str, dict[int, Operation]] = {}
    for op in history.operations:
        if op.kind == "session" and op.outcome == "ok" and op.answer is not None:
            steps.setdefault(str(op.request["session_id"]), {}).setdefault(int(op.request["number"]), op)
    found: list[Report] = []
    for numbers in steps.values():
        used = 0
        for n in sorted(numbers):
            op = numbers[n]
            previous = numbers.get(n - 1)
            change = previous.answer.tariff_change_time if previous is not None and previous.answer else 0
            if n > 0:
                found.append(Report(op, used, change))
            used += int(op.request["used_s"]) + int(op.request.get("used_after_s", 0))
    return found


def reference_cost(report: Report, catalog: Catalog, record: SessionRecord, usage: Usage) -> int | None:
    """What the report costs by ``charging/rating.py`` (None: the plan has no such rate)."""
    plan = catalog.plan_of(record.plan_id)
    if plan is None:
        return None
    rates: list[tuple[int, Rate | None]]
    if report.change_s:
        rates = [
            (report.before, catalog.rate(plan, RATING_GROUP, usage, report.change_s - 1)),
            (report.after, catalog.rate(plan, RATING_GROUP, usage, report.change_s)),
        ]
    else:
        service, zone, _band, roaming = catalog.where(plan, RATING_GROUP, usage, record.at_s)
        where = (service, zone, record.band, roaming)
        rates = [(report.before, catalog.rate(plan, RATING_GROUP, usage, record.at_s, where))]
    cost, used = 0, report.used_before
    for units, rate in rates:
        if rate is None:
            return None
        cost += incremental_cost(rate, used, units)
        used += units
    return cost


def record_id(op: Operation) -> str:
    """The id of a session request's usage record (``charging/cdrs.py``)."""
    return f"{op.account}:s:{op.request['session_id']}:{op.request['number']}:{RATING_GROUP}"


def priced(
    history: History, catalog: Catalog, records: dict[str, SessionRecord], usage: Usage
) -> list[checks.Violation]:
    """Every acknowledged report that was charged costs what the reference says: exactly,
    or at most that on a 4012 (``records.every_movement_recorded`` checks that its usage
    record holds the money its answer stated). ``usage``: where every session step calls."""
    found: list[checks.Violation] = []
    for report in reports(history):
        op = report.op
        assert op.answer is not None
        record = records.get(record_id(op))
        if op.answer.code not in CHARGED or record is None or record.from_buckets:
            continue
        expected = reference_cost(report, catalog, record, usage)
        if expected is None:
            continue
        charged = op.answer.cost_micros
        if charged == expected or (op.answer.code == LIMITED and 0 <= charged < expected):
            continue
        what = f"{report.before} s before the change at {report.change_s}, {report.after} s after it"
        if not report.change_s:
            what = f"{report.before} s in band {record.band!r}"
        found.append(
            checks.Violation(
                "tariff_priced",
                op.account,
                f"{op.identity} ({what}, {report.used_before} s used before in the session) "
                f"cost {charged}, the reference {expected} (answer {op.answer.code})",
                (op.seq,),
            )
        )
    return found


@dataclass(frozen=True)
class Tally:
    """How much of the workload crossed a tariff change (the report prints it)."""

    announced: int = 0  # reports (distinct requests) of a grant that announced a change
    split_sent: int = 0  # distinct requests sent with units after a change
    split_charged: int = 0  # of those, acknowledged and charged: each held to the reference

    def text(self) -> str:
        return (
            f"tariff   reports after an announced change {self.announced}, split requests sent "
            f"{self.split_sent}, charged and priced {self.split_charged}"
        )


def tally(history: History) -> Tally:
    sent = {op.identity for op in history.operations if op.kind == "session" and op.request.get("used_after_s")}
    done = [r for r in reports(history) if r.change_s]
    charged = [r for r in done if r.after and r.op.answer is not None and r.op.answer.code in CHARGED]
    return Tally(len(done), len(sent), len(charged))
