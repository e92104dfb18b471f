"""Rated usage of a postpaid line in a bill period, as the charging scripts recorded it
(``ledger_lib.lua`` ``record_usage``), and how an invoice groups it. Pure.

Aggregates are per (service, zone, time band, roaming): units, cost in micros and the
number of records. Itemised records are one per debit (a long call reported in several
updates gives several partial records, as partial CDRs do); the itemised bill merges the
partial records of one session and service into one row. Both always agree: the sum of
the records of a period equals its aggregates, to the unit and to the micro.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from charging.money import to_minor
from charging.rating import UnitKind
from postpaid.invoices import CATEGORIES, CATEGORY_NAMES, USAGE, Charge, UsageItem

UNIT_NAMES = {UnitKind.TIME: "s", UnitKind.VOLUME: "bytes", UnitKind.SERVICE_SPECIFIC: "events", UnitKind.MONEY: ""}


@dataclass(frozen=True)
class Aggregate:
    service: str
    zone: str
    band: str
    roaming: bool
    units: int
    cost_micros: int
    records: int


class Record(NamedTuple):
    """One itemised record as recorded (a tuple: a bill run reads millions)."""

    at_ms: int
    service: str
    zone: str
    band: str
    roaming: bool
    destination: str
    units: int
    cost_micros: int
    ref: str


def aggregates(flat: dict[str, str], period_id: str | None) -> list[Aggregate]:
    """The aggregates of one period out of the account's ``:u`` hash (None: of every
    period given, summed: what ``close.lua`` returns is already the invoice's)."""
    summed: dict[tuple[str, str, str, str], list[int]] = {}
    for field, value in flat.items():
        period, service, zone, band, roaming = field.split("|")
        if period_id is not None and period != period_id:
            continue
        units, cost, n = (int(x) for x in value.split(","))
        acc = summed.setdefault((service, zone, band, roaming), [0, 0, 0])
        acc[0] += units
        acc[1] += cost
        acc[2] += n
    out = [Aggregate(s, z, b, r == "R", u, c, n) for (s, z, b, r), (u, c, n) in summed.items()]
    return sorted(out, key=lambda a: (a.service, a.zone, a.band, a.roaming))


def records(raw: list[str], period_id: str) -> list[Record]:
    """The itemised records of one period out of the account's ``:ud`` list."""
    out = []
    for text in raw:
        period, at_ms, service, zone, band, roaming, dest, units, cost, ref = text.split(",", 9)
        if period == period_id:
            out.append(Record(int(at_ms), service, zone, band, roaming == "R", dest, int(units), int(cost), ref))
    return out


def category(service: str, unit: UnitKind | None, zone: str, roaming: bool) -> str:
    """The invoice category of a usage: bundles bought, roaming, then by the service's unit; calls
    to zones named ``international*`` are international."""
    if service == "bundle":
        return "BUNDLES"
    if roaming:
        return "ROAMING"
    if unit is UnitKind.VOLUME:
        return "DATA"
    if unit is UnitKind.TIME:
        return "INTERNATIONAL_CALLS" if zone.startswith("international") else "NATIONAL_CALLS"
    if unit is UnitKind.SERVICE_SPECIFIC and service in ("sms", "mms"):
        return "SMS"
    return "OTHER"


def usage_charges(aggs: list[Aggregate], units: dict[str, UnitKind]) -> list[Charge]:
    """One invoice line per category: the cost in micros summed exactly, rounded once."""
    cost: dict[str, int] = {}
    qty: dict[str, int] = {}
    unit_of: dict[str, str] = {}
    for a in aggs:
        unit = units.get(a.service)
        cat = category(a.service, unit, a.zone, a.roaming)
        cost[cat] = cost.get(cat, 0) + a.cost_micros
        qty[cat] = qty.get(cat, 0) + a.units
        name = UNIT_NAMES.get(unit, "") if unit is not None else ""
        unit_of[cat] = name if unit_of.get(cat, name) == name else ""  # mixed units: no quantity
    out = []
    for cat in CATEGORIES:
        if cat in cost:
            shown = qty[cat] if unit_of[cat] else 0
            out.append(Charge(USAGE, CATEGORY_NAMES[cat], to_minor(cost[cat]), shown, unit_of[cat], category=cat))
    return out


def reconciles(aggs: list[Aggregate], recs: list[Record]) -> bool:
    """The records add up to the aggregates, per key, to the unit and the micro."""
    want = {(a.service, a.zone, a.band, a.roaming): (a.units, a.cost_micros, a.records) for a in aggs}
    got: dict[tuple[str, str, str, bool], tuple[int, int, int]] = {}
    for r in recs:
        k = (r.service, r.zone, r.band, r.roaming)
        u, c, n = got.get(k, (0, 0, 0))
        got[k] = (u + r.units, c + r.cost_micros, n + 1)
    return want == got


def mask(destination: str, digits: int) -> str:
    """Hide the last ``digits`` digits of a called number on the itemised bill."""
    if digits <= 0 or not destination:
        return destination
    keep = max(len(destination) - digits, 0)
    return destination[:keep] + "x" * (len(destination) - keep)


def itemised(recs: list[Record], units: dict[str, UnitKind], mask_digits: int) -> list[UsageItem]:
    """Rows of the itemised bill: partial records of one session and service merged, in time order."""
    merged: dict[tuple[str, str, bool], list[Any]] = {}
    for r in recs:
        row = [r.at_ms, r.service, r.zone, r.roaming, r.destination, r.units, r.cost_micros]
        _merge(merged, (r.ref, r.service, r.roaming), row)
    return _rows(merged.values(), units, mask_digits)


def itemised_from_records(
    raw: list[str], period_id: str | None, units: dict[str, UnitKind], mask_digits: int
) -> list[UsageItem]:
    """``itemised(records(raw, period_id), ...)`` in one pass over the stored records (what a
    bill run does for every line; the same rows, without the intermediate tuples). None:
    every record given (``close.lua`` returns the invoice's records only)."""
    prefix = "" if period_id is None else period_id + ","
    merged: dict[tuple[str, str, bool], list[Any]] = {}
    for text in raw:
        if text.startswith(prefix):
            _period, at_ms, service, zone, _band, roaming, dest, u, c, ref = text.split(",", 9)
            roams = roaming == "R"
            _merge(merged, (ref, service, roams), [int(at_ms), service, zone, roams, dest, int(u), int(c)])
    return _rows(merged.values(), units, mask_digits)


def _merge(merged: dict[tuple[str, str, bool], list[Any]], key: tuple[str, str, bool], row: list[Any]) -> None:
    """Add a record [time, service, zone, roaming, destination, units, cost] to its row: the
    first record of a session and service gives the time, the units and costs add up."""
    acc = merged.get(key)
    if acc is None:
        merged[key] = row
    else:
        acc[5] += row[5]
        acc[6] += row[6]


def _rows(merged: Iterable[list[Any]], units: dict[str, UnitKind], mask_digits: int) -> list[UsageItem]:
    rows = []
    kinds: dict[tuple[str, str, bool], tuple[str, str]] = {}
    for at_ms, service, zone, roaming, dest, u, c in merged:
        kind = kinds.get((service, zone, roaming))
        if kind is None:
            unit = units.get(service)
            kind = (category(service, unit, zone, roaming), UNIT_NAMES.get(unit, "") if unit is not None else "")
            kinds[(service, zone, roaming)] = kind
        shown = mask(dest, mask_digits) if mask_digits and dest else dest
        rows.append(UsageItem(at_ms, service, kind[0], shown, u, kind[1], c))
    rows.sort(key=lambda i: (i.at_ms, i.service))
    return rows
