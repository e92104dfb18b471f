"""Every invoice's usage is exactly the usage records it covers: the itemised rows of the
invoices against the usage records in PostgreSQL. Pure.

What an invoice row is (``postpaid/usage.py`` ``itemised``): the records of one session
or event, service and roaming flag that went to the invoice's period, merged; its time is
that of the first of them *in the order they were made* (the order the scripts pushed
them), its units and micros their sums. A row names no session or event, and no record
names its period (the period is the one open when the record was made, which a bill run
closing early or a clock jump decides, not the record's time).

So the check is exact by asking whether an assignment exists, not by guessing one from
times: per line, every usage record goes to exactly one invoice of the line, and every
invoice's rows must then be exactly the merged records it got, to the millisecond, the
unit and the micro, no row left over. Per session or event (a *group*) the candidate
assignments are enumerated (a session has a handful of records, a line three invoices or
so), those whose merged rows all exist are kept, groups with one candidate fix it, and
the rest is searched (backtracking, bounded). Records are ordered by request number (the
order a session's steps were made: each step is sent once the previous one is answered),
not by their times, which a clock jump back puts out of order; two records (of two
sessions) in one millisecond, as the clock's jump back makes likely, are then told apart
by what the rows add up to.

A violation names the group that no assignment explains, with the rows at its records'
times and what its records add up to from each (in the order they were made), a record
on no invoice, or a row no record explains.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date

from chaos.checks import Violation
from charging.money import to_minor

ENUMERATED = 4096  # assignments tried per group before only ordered splits are
SEARCH_NODES = 100_000  # the backtracking's bound per line


@dataclass(frozen=True)
class UsageRow:
    """One itemised row of an invoice (``postpaid.invoices.UsageItem``), of one line."""

    line: str  # msisdn
    at_ms: int
    service: str
    category: str
    units: int
    cost_micros: int


@dataclass(frozen=True)
class IssuedInvoice:
    invoice_id: str
    issuer: str
    series: str
    number: int
    billing_account: str
    kind: str
    period_start: date
    period_end: date
    total_minor: int
    usage: tuple[UsageRow, ...]
    usage_charges: tuple[tuple[str, int], ...]  # (category, amount_minor) of its USAGE lines


@dataclass(frozen=True)
class UsageRecord:
    """A usage record of a postpaid line in PostgreSQL (``usage_records``)."""

    record_id: str
    line: str  # msisdn
    ref: str  # session id or event id
    service: str
    at_ms: int
    units: int
    cost_micros: int
    order: int = 0  # a session record's request number: the order its steps were made
    roaming: bool = False


# A row as merged records make it: (invoice id, time ms, service, roaming, units, micros).
Sig = tuple[str, int, str, bool, int, int]
Group = tuple[str, str, bool]  # ref, service, roaming


def usage_invoiced(
    invoices: Iterable[IssuedInvoice], records: Iterable[UsageRecord], lines: Iterable[str]
) -> list[Violation]:
    """Each invoice's itemised usage = the usage records it covers; every record of the
    postpaid ``lines`` on exactly one invoice."""
    found: list[Violation] = []
    invoices = sorted(invoices, key=lambda i: (i.period_start, i.invoice_id))
    rows: dict[str, Counter[Sig]] = {}
    for inv in invoices:
        for row in inv.usage:
            sig = (inv.invoice_id, row.at_ms, row.service, row.category == "ROAMING", row.units, row.cost_micros)
            rows.setdefault(row.line, Counter())[sig] += 1
        found += _charges_match(inv)
    groups: dict[str, dict[Group, list[UsageRecord]]] = {}
    postpaid = set(lines)
    for rec in records:
        if rec.line in postpaid and (rec.units or rec.cost_micros):
            groups.setdefault(rec.line, {}).setdefault((rec.ref, rec.service, rec.roaming), []).append(rec)
    for line in sorted(set(rows) | set(groups)):
        made = {g: sorted(rs, key=lambda r: (r.order, r.at_ms, r.record_id)) for g, rs in groups.get(line, {}).items()}
        found += _line(line, [i.invoice_id for i in invoices], made, rows.get(line, Counter()))
    return found


def _line(line: str, order: list[str], groups: dict[Group, list[UsageRecord]], rows: Counter[Sig]) -> list[Violation]:
    """Explain the line's rows by its groups, each group's records split over its invoices."""
    on = sorted({sig[0] for sig in rows}, key=order.index)  # the invoices with rows of the line
    left = Counter(rows)
    pending = {g: list(_explanations(recs, on, left)) for g, recs in sorted(groups.items())}
    unexplained: list[Group] = []
    while True:  # groups with one way left take it; none left: unexplained
        changed = False
        for g in list(pending):
            ways = [w for w in pending[g] if _fits(w, left)]
            if len(ways) > 1:
                pending[g] = ways
                continue
            del pending[g]
            changed = True
            if ways:
                left -= Counter(ways[0])
            else:
                unexplained.append(g)
        if not changed:
            break
    chosen = _search(sorted(pending.items(), key=lambda kv: len(kv[1])), left)
    for g, ways in pending.items():
        way = chosen[g] if chosen is not None else next((w for w in ways if _fits(w, left)), None)
        if way is not None:
            left -= Counter(way)
        else:
            unexplained.append(g)
    found: list[Violation] = []
    for g in unexplained:
        found += _why(line, order, groups[g], left)
    for (invoice_id, at_ms, service, _roams, _u, _c), n in sorted(left.items()):
        detail = f"{invoice_id}: row at {at_ms} ({service}) has no usage record"
        found += [Violation("usage_invoiced", line, detail)] * n
    return found


def _explanations(recs: list[UsageRecord], on: list[str], rows: Counter[Sig]) -> Iterator[tuple[Sig, ...]]:
    """The ways the group's records can be on the invoices ``on`` whose merged rows all
    exist among ``rows``: every assignment, or (too many) the splits in the order made."""
    if not on:
        return
    if len(on) ** len(recs) <= ENUMERATED:
        assignments: Iterable[tuple[int, ...]] = itertools.product(range(len(on)), repeat=len(recs))
    else:
        assignments = itertools.combinations_with_replacement(range(len(on)), len(recs))
    seen: set[tuple[Sig, ...]] = set()
    for assignment in assignments:
        parts: dict[int, list[UsageRecord]] = {}
        for rec, n in zip(recs, assignment, strict=True):
            parts.setdefault(n, []).append(rec)
        way = tuple(sorted(_merged(on[n], part) for n, part in parts.items()))
        if way not in seen and _fits(way, rows):
            seen.add(way)
            yield way


def _merged(invoice_id: str, part: list[UsageRecord]) -> Sig:
    first = part[0]
    units, cost = sum(r.units for r in part), sum(r.cost_micros for r in part)
    return (invoice_id, first.at_ms, first.service, first.roaming, units, cost)


def _fits(way: tuple[Sig, ...], left: Counter[Sig]) -> bool:
    return all(left[sig] >= n for sig, n in Counter(way).items())


def _search(
    pending: list[tuple[Group, list[tuple[Sig, ...]]]], left: Counter[Sig]
) -> dict[Group, tuple[Sig, ...]] | None:
    """One way per pending group that together use exactly the rows ``left`` (bounded)."""
    chosen: dict[Group, tuple[Sig, ...]] = {}
    budget = [SEARCH_NODES]

    def go(n: int, rest: Counter[Sig]) -> bool:
        if n == len(pending):
            return not +rest
        budget[0] -= 1
        group, ways = pending[n]
        for way in ways:
            if budget[0] > 0 and _fits(way, rest):
                chosen[group] = way
                if go(n + 1, rest - Counter(way)):
                    return True
        return False

    return chosen if pending and go(0, left) else (None if pending else {})


def _why(line: str, order: list[str], recs: list[UsageRecord], left: Counter[Sig]) -> list[Violation]:
    """What a group no assignment explains looks like: its records, in the order made,
    added up from each row left at one of their times (on a later invoice than the last)."""
    found: list[Violation] = []
    current: Sig | None = None
    sums: dict[Sig, list[int]] = {}
    for rec in recs:
        here = [s for s in left if left[s] and s[1:4] == (rec.at_ms, rec.service, rec.roaming)]
        here = [s for s in here if current is None or order.index(s[0]) > order.index(current[0])]
        if here:
            current = min(here, key=lambda s: order.index(s[0]))
            left[current] -= 1
            sums[current] = [0, 0]
        if current is None:
            found.append(Violation("usage_invoiced", line, f"usage record {rec.record_id} is on no invoice"))
            continue
        sums[current][0] += rec.units
        sums[current][1] += rec.cost_micros
    for (invoice_id, at_ms, service, _roams, units, cost), (got_u, got_c) in sums.items():
        if (units, cost) != (got_u, got_c):
            found.append(
                Violation(
                    "usage_invoiced",
                    line,
                    f"{invoice_id}: row at {at_ms} ({service}) says {units} units {cost} micros, its usage records "
                    f"{got_u} units {got_c} micros ({recs[0].ref}: no split of its records over the invoices adds up)",
                )
            )
    if not found:
        ids = ", ".join(r.record_id for r in recs)
        found.append(Violation("usage_invoiced", line, f"usage records {ids}: no split over the invoices adds up"))
    return found


def _charges_match(inv: IssuedInvoice) -> list[Violation]:
    """Each usage charge line = its category's itemised money, rounded once."""
    itemised: dict[str, int] = {}
    for row in inv.usage:
        itemised[row.category] = itemised.get(row.category, 0) + row.cost_micros
    charged = dict(inv.usage_charges)
    # Zero lines dropped on both sides after rounding: usage of a few micros rounds to a
    # charge of 0 minor units, which an invoice may show or not.
    want = {cat: minor for cat, micros in itemised.items() if (minor := to_minor(micros))}
    if {c: a for c, a in charged.items() if a} != want:
        return [Violation("usage_invoiced", inv.billing_account, f"{inv.invoice_id}: charges {charged} != {want}")]
    return []
