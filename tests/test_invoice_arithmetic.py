"""Pure billing rules: rounding, bill periods, prorated rentals, usage categories, discounts, taxes."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from importlib import resources

import pytest
from hypothesis import given
from hypothesis import strategies as st

from charging.money import share, to_minor
from charging.rating import UnitKind
from postpaid import config as billing_config
from postpaid.compose import AccountBill, LineBill, Product, compose
from postpaid.invoices import Charge, Invoice, TaxRate, taxes
from postpaid.periods import Period, by_id, following, open_periods, pack, period_at, unpack
from postpaid.rentals import Change, charged_days, rental_charges
from postpaid.usage import (
    Aggregate,
    Record,
    aggregates,
    category,
    itemised,
    itemised_from_records,
    mask,
    reconciles,
    records,
    usage_charges,
)

TZ = "Europe/Berlin"
UNITS = {"voice": UnitKind.TIME, "sms": UnitKind.SERVICE_SPECIFIC, "data": UnitKind.VOLUME}


def ts(y: int, m: int, d: int, h: int = 12) -> int:
    return int(datetime(y, m, d, h, tzinfo=UTC).timestamp())


@pytest.mark.parametrize(
    ("micros", "minor"),
    [(0, 0), (4_999, 0), (5_000, 1), (14_999, 1), (15_000, 2), (-5_000, -1), (-4_999, 0), (1_234_567_890, 123_457)],
)
def test_to_minor_rounds_half_away_from_zero(micros: int, minor: int) -> None:
    assert to_minor(micros) == minor


@given(st.integers(-(10**15), 10**15))
def test_to_minor_is_within_half_a_cent(micros: int) -> None:
    assert abs(to_minor(micros) * 10_000 - micros) <= 5_000


@pytest.mark.parametrize(
    ("amount", "num", "den", "out"), [(25_000_000, 15, 31, 12_096_774), (100, 1900, 10_000, 19), (-7, 1, 2, -4)]
)
def test_share(amount: int, num: int, den: int, out: int) -> None:
    assert share(amount, num, den) == out


def test_periods_follow_the_cycle_day_in_local_time() -> None:
    p = period_at(15, TZ, ts(2026, 1, 20))
    assert (p.id, p.start, p.end, p.days) == ("2026-01", date(2026, 1, 15), date(2026, 2, 15), 31)
    # Local midnight in Berlin is 23:00 UTC the day before in winter.
    assert p.start_s == int(datetime(2026, 1, 14, 23, tzinfo=UTC).timestamp())
    assert period_at(15, TZ, ts(2026, 1, 3)).id == "2025-12"
    assert following(p, TZ).id == "2026-02"
    assert by_id("2026-01", 15, TZ) == p
    december = period_at(1, TZ, ts(2026, 12, 31))
    assert (december.start, december.end) == (date(2026, 12, 1), date(2027, 1, 1))
    bp = pack(open_periods(p, TZ))
    assert [pid for pid, _ in unpack(bp)] == ["2026-01", "2026-02", "2026-03"]
    with pytest.raises(ValueError):
        period_at(29, TZ, ts(2026, 1, 1))


def test_a_period_across_summer_time_keeps_whole_local_days() -> None:
    p = period_at(1, TZ, ts(2026, 3, 10))
    assert p.days == 31
    assert p.end_s - p.start_s == 31 * 86_400 - 3600


JAN = by_id("2026-01", 1, TZ)
RENTALS = {"gold": ("Gold", 31_000_000), "silver": ("Silver", 15_500_000)}


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        # active the whole period
        ([Change(0, "active", "gold")], {("gold", "active"): 31}),
        # activated on the 10th (local): the activation day is charged
        ([Change(ts(2026, 1, 10), "active", "gold")], {("gold", "active"): 22}),
        # terminated on the 20th: charged through the termination day
        ([Change(0, "active", "gold"), Change(ts(2026, 1, 20), "terminated", "gold")], {("gold", "active"): 20}),
        # plan change on the 16th: the day goes to the new plan
        (
            [Change(0, "active", "gold"), Change(ts(2026, 1, 16), "active", "silver")],
            {("gold", "active"): 15, ("silver", "active"): 16},
        ),
        # suspended from the 11th to the 20th
        (
            [
                Change(0, "active", "gold"),
                Change(ts(2026, 1, 11), "suspended", "gold"),
                Change(ts(2026, 1, 21), "active", "gold"),
            ],
            {("gold", "active"): 21, ("gold", "suspended"): 10},
        ),
        # pending activation all month: nothing
        ([Change(0, "pending_activation", "gold")], {}),
    ],
)
def test_charged_days(history: list[Change], expected: dict[tuple[str, str], int]) -> None:
    assert charged_days(history, JAN, TZ) == expected


def test_rental_is_prorated_by_day_and_suspension_rule_applies() -> None:
    history = [Change(ts(2026, 1, 17), "active", "gold")]
    (line,) = rental_charges(history, JAN, TZ, RENTALS, 10_000)
    assert (line.amount, line.quantity) == (1500, 15)  # 31.00 * 15/31
    assert "15/31 days" in line.description
    suspended = [Change(0, "active", "gold"), Change(ts(2026, 1, 11), "suspended", "gold")]
    full, half = rental_charges(suspended, JAN, TZ, RENTALS, 5_000)
    assert (full.amount, half.amount) == (1000, 1050)  # 10 days full, 21 days at half rental
    assert rental_charges(suspended, JAN, TZ, RENTALS, 0) == [full]


def test_usage_categories() -> None:
    assert category("voice", UnitKind.TIME, "international_1", False) == "INTERNATIONAL_CALLS"
    assert category("voice", UnitKind.TIME, "national_mobile", False) == "NATIONAL_CALLS"
    assert category("data", UnitKind.VOLUME, "", True) == "ROAMING"
    assert category("sms", UnitKind.SERVICE_SPECIFIC, "on_net", False) == "SMS"
    assert category("video", UnitKind.SERVICE_SPECIFIC, "", False) == "OTHER"


def test_aggregates_and_records_reconcile_and_round_once_per_category() -> None:
    flat = {
        "2026-01|voice|national_mobile|peak|": "120,123400,2",
        "2026-01|voice|national_fixed|offpeak|": "60,30000,1",
        "2026-02|voice|national_fixed|offpeak|": "60,30000,1",
        "2026-01|data|||R": "1048576,500000,1",
    }
    aggs = aggregates(flat, "2026-01")
    assert len(aggs) == 3
    raw = [
        "2026-01,1000,voice,national_mobile,peak,,4915112345678,60,61700,s1",
        "2026-01,2000,voice,national_mobile,peak,,4915112345678,60,61700,s1",
        "2026-01,3000,voice,national_fixed,offpeak,,4930123456,60,30000,s,2",
        "2026-02,4000,voice,national_fixed,offpeak,,4930123456,60,30000,s3",
        "2026-01,5000,data,,,R,,1048576,500000,d1",
    ]
    recs = records(raw, "2026-01")
    assert len(recs) == 4 and recs[2].ref == "s,2"
    assert reconciles(aggs, recs)
    assert not reconciles(aggs, recs[:-1])
    national, roaming = usage_charges(aggs, UNITS)
    # 123,400 + 30,000 micros = 15.34 cents -> 15, rounded once for the category
    assert (national.amount, national.quantity, national.unit) == (15, 180, "s")
    assert (roaming.description, roaming.amount) == ("Roaming", 50)
    rows = itemised(recs, UNITS, 3)
    assert itemised_from_records(raw, "2026-01", UNITS, 3) == rows  # the bill run's one-pass form
    assert [r.units for r in rows] == [120, 60, 1048576]  # the two partial records of s1 merged
    assert rows[0].destination == "4915112345xxx"
    assert mask("123", 5) == "xxx"


def test_taxes_are_rounded_once_per_code_and_unknown_codes_refused() -> None:
    rates = {"standard": TaxRate("standard", "VAT", 1900), "exempt": TaxRate("exempt", "none", 0)}
    charges = [Charge("USAGE", "a", 3), Charge("USAGE", "b", 3), Charge("RENTAL", "c", 1000, tax_code="exempt")]
    std = next(t for t in taxes(charges, rates) if t.code == "standard")
    assert (std.base, std.amount) == (6, 1)  # 0.57 + 0.57 would round to 2 line by line
    with pytest.raises(ValueError, match="bogus"):
        taxes([Charge("USAGE", "x", 1, tax_code="bogus")], rates)


def line(account: str, plan: str, unit: tuple[str, ...] = (), usage_micros: int = 0) -> LineBill:
    aggs = [Aggregate("voice", "national_mobile", "peak", False, 600, usage_micros, 1)] if usage_micros else []
    recs = [Record(1, "voice", "national_mobile", "peak", False, "491", 600, usage_micros, "s")] if usage_micros else []
    return LineBill(account, "49151000" + account, plan, [Change(0, "active", plan)], aggs, recs, unit)


def test_compose_adds_up_discounts_volume_tiers_and_tax() -> None:
    config = billing_config.default()
    products = {
        "mobile-postpaid": Product("Mobile Postpaid", 25_000_000),
        "fixed-postpaid": Product("Fixed", 30_000_000),
    }
    period = by_id("2026-01", 1, config.time_zone)
    bill = AccountBill(
        "u1",
        "ACME",
        period,
        [
            line("1", "mobile-postpaid", ("ACME", "Sales"), 10_000_000),
            line("2", "mobile-postpaid", ("ACME", "Sales")),
            line("3", "fixed-postpaid", ("ACME",), 1_000_000),
        ],
        pending=[Charge("LATE_FEE", "Late fee", 500)],
        previous_balance=10_000,
        payments_received=10_000,
    )
    inv = compose(config, products, UNITS, bill, date(2026, 2, 1))
    assert [s.line for s in inv.sections] == ["491510003", "491510001", "491510002"]
    first = inv.sections[1]
    assert [c.amount for c in first.charges] == [2500, 1000, -125]  # rental, usage, 5% off rental
    fixed = inv.sections[0]
    assert [c.amount for c in fixed.charges] == [3000, 100, -200]
    # 3 lines reach the 5% usage tier: 5% of 11.00
    assert [c.amount for c in inv.account_charges] == [-55, 500]
    assert inv.net_total == 2500 + 1000 - 125 + 2500 - 125 + 3000 + 100 - 200 - 55 + 500
    assert inv.tax_total == share(inv.net_total, 1900, 10_000)
    assert inv.total_due == inv.total
    assert inv.due == date(2026, 2, 15)
    assert Invoice.from_json(inv.to_json()) == inv


def test_tax_codes_follow_the_plan_and_the_usage_category() -> None:
    doc = json.loads(resources.files("postpaid").joinpath("billing.json").read_text())
    doc["taxes"].append({"code": "reduced", "name": "VAT 7%", "rate_bp": 700})
    doc["tax_codes"] = {"plans": {"fixed-postpaid": "reduced"}, "categories": {"ROAMING": "exempt"}}
    config = billing_config.parse(doc)
    products = {"fixed-postpaid": Product("Fixed", 30_000_000)}
    period = by_id("2026-01", 1, config.time_zone)
    roam = Aggregate("data", "", "", True, 10, 2_000_000, 1)
    bill = AccountBill(
        "a", "A", period, [LineBill("1", "4930", "fixed-postpaid", [Change(0, "active", "fixed-postpaid")], [roam], [])]
    )
    inv = compose(config, products, UNITS, bill, date(2026, 2, 1))
    codes = {(c.kind, c.category): c.tax_code for c in inv.sections[0].charges}
    assert codes[("RENTAL", "")] == "reduced" and codes[("USAGE", "ROAMING")] == "exempt"
    assert codes[("DISCOUNT", "")] == "reduced"  # the fixed discount on the fixed line
    rates = {t.code: (t.base, t.amount) for t in inv.taxes}
    assert rates["reduced"] == (3000 - 200, share(2800, 700, 10_000)) and rates["exempt"] == (200, 0)
    bad = {**doc, "tax_codes": {"plans": {"x": "nope"}, "categories": {"CARRIER_PIGEON": "standard"}}}
    with pytest.raises(billing_config.BillingConfigInvalid) as exc:
        billing_config.parse(bad)
    assert {f for f, _ in exc.value.problems} == {"tax_codes.plans.x", "tax_codes.categories.CARRIER_PIGEON"}


def test_billing_config_names_every_bad_field() -> None:
    with pytest.raises(billing_config.BillingConfigInvalid) as exc:
        billing_config.parse({"issuer": {"id": ""}, "currency": "EUR", "time_zone": "Mars/Base", "taxes": []})
    fields = {f for f, _ in exc.value.problems}
    assert {"issuer.id", "issuer.name", "time_zone", "taxes", "payment_terms_days", "dunning"} <= fields


RATES = {
    "standard": TaxRate("standard", "VAT", 1900),
    "reduced": TaxRate("reduced", "VAT 7%", 700),
    "exempt": TaxRate("exempt", "none", 0),
    "odd": TaxRate("odd", "odd", 1234),
}
charges = st.lists(
    st.builds(
        Charge,
        kind=st.sampled_from(["RENTAL", "USAGE", "DISCOUNT", "ADJUSTMENT"]),
        description=st.just("x"),
        amount=st.integers(-(10**6), 10**7),
        tax_code=st.sampled_from(sorted(RATES)),
    ),
    max_size=12,
)


@given(charges)
def test_tax_is_rounded_once_per_code_half_away_from_zero(items: list[Charge]) -> None:
    lines = taxes(items, RATES)
    assert [t.code for t in lines] == sorted({c.tax_code for c in items})
    assert sum(t.base for t in lines) == sum(c.amount for c in items)  # every charge taxed once
    for t in lines:
        assert t.base == sum(c.amount for c in items if c.tax_code == t.code)
        exact = t.base * t.rate_bp  # the tax in 1/10,000 minor units, before the one rounding
        assert 2 * abs(t.amount * 10_000 - exact) <= 10_000  # within half a minor unit
        if 2 * abs(t.amount * 10_000 - exact) == 10_000:
            assert abs(t.amount * 10_000) > abs(exact)  # a half goes away from zero
    # Rounding line by line could differ from the invoice's tax by up to half a cent per line.
    by_line = sum(share(c.amount, RATES[c.tax_code].rate_bp, 10_000) for c in items)
    assert 2 * abs(by_line - sum(t.amount for t in lines)) <= len(items) + len(lines)


usage_records = st.lists(
    st.builds(
        Record,
        at_ms=st.integers(0, 10**6),
        service=st.sampled_from(["voice", "sms", "data"]),
        zone=st.sampled_from(["national_mobile", "international_1", ""]),
        band=st.sampled_from(["peak", "offpeak"]),
        roaming=st.booleans(),
        destination=st.just("4915112345678"),
        units=st.integers(0, 10_000),
        cost_micros=st.integers(0, 10**7),
        ref=st.sampled_from(["s1", "s2", "e,1"]),
    ),
    max_size=20,
)


@given(usage_records)
def test_usage_lines_reconcile_with_the_records_to_the_micro_and_round_once_per_category(recs: list[Record]) -> None:
    # The aggregate hash as the charging scripts keep it (ledger_lib.lua record_usage).
    flat: dict[str, str] = {}
    for r in recs:
        field = f"2026-01|{r.service}|{r.zone}|{r.band}|{'R' if r.roaming else ''}"
        u, c, n = (int(x) for x in flat.get(field, "0,0,0").split(","))
        flat[field] = f"{u + r.units},{c + r.cost_micros},{n + 1}"
    aggs = aggregates(flat, "2026-01")
    assert reconciles(aggs, recs)
    rows = itemised(recs, UNITS, 0)
    assert sum(i.cost_micros for i in rows) == sum(r.cost_micros for r in recs)
    lines = usage_charges(aggs, UNITS)
    for line in lines:
        exact = sum(
            r.cost_micros for r in recs if category(r.service, UNITS[r.service], r.zone, r.roaming) == line.category
        )
        assert line.amount == to_minor(exact)  # once for the category, not record by record
    assert sum(line.amount for line in lines) * 10_000 - sum(r.cost_micros for r in recs) <= 5_000 * len(lines)


@given(
    usage=st.lists(st.integers(0, 50_000_000), min_size=1, max_size=4),
    fixed_code=st.sampled_from(["standard", "reduced"]),
    roaming_code=st.sampled_from(["standard", "exempt"]),
)
def test_an_invoice_total_is_its_net_charges_plus_one_rounded_tax_per_code(
    usage: list[int], fixed_code: str, roaming_code: str
) -> None:
    doc = json.loads(resources.files("postpaid").joinpath("billing.json").read_text())
    doc["taxes"].append({"code": "reduced", "name": "VAT 7%", "rate_bp": 700})
    doc["tax_codes"] = {"plans": {"fixed-postpaid": fixed_code}, "categories": {"ROAMING": roaming_code}}
    config = billing_config.parse(doc)
    products = {"mobile-postpaid": Product("Mobile", 25_000_000), "fixed-postpaid": Product("Fixed", 30_000_000)}
    lines = [
        LineBill(
            str(n),
            f"4915100{n}",
            "fixed-postpaid" if n % 2 else "mobile-postpaid",
            [Change(0, "active", "fixed-postpaid" if n % 2 else "mobile-postpaid")],
            [Aggregate("data", "", "", n % 3 == 0, 10, micros, 1)] if micros else [],
            [],
        )
        for n, micros in enumerate(usage)
    ]
    inv = compose(config, products, UNITS, AccountBill("a", "A", JAN, lines), date(2026, 2, 1))
    assert sum(t.base for t in inv.taxes) == inv.net_total
    for t in inv.taxes:
        assert t.base == sum(c.amount for c in inv.all_charges() if c.tax_code == t.code)
        assert t.amount == share(t.base, config.taxes[t.code].rate_bp, 10_000)
    assert inv.total == inv.net_total + sum(t.amount for t in inv.taxes)


PERIODS = [by_id(p, 1, TZ) for p in ("2026-01", "2026-02", "2026-03", "2026-10")]  # 31, 28, 31 days; DST in 3, 10
STATES = ["active", "active", "suspended", "pending_activation", "terminated"]


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Change], Period]:
    period = draw(st.sampled_from(PERIODS))
    at = st.integers(period.start_s - 3 * 86_400, period.end_s + 3 * 86_400)
    changes = draw(st.lists(st.builds(Change, at, st.sampled_from(STATES), st.sampled_from(["gold", "silver"]))))
    return changes, period


@given(histories(), st.sampled_from([0, 5_000, 10_000]))
def test_a_rental_never_exceeds_the_full_rental(case: tuple[list[Change], Period], suspended_bp: int) -> None:
    history, period = case
    assert sum(charged_days(history, period, TZ).values()) <= period.days
    lines = rental_charges(history, period, TZ, RENTALS, suspended_bp)
    for name, rental in RENTALS.values():
        mine = [c for c in lines if c.description.startswith(name + " ")]
        assert sum(c.quantity for c in mine) <= period.days
        assert all(0 <= c.amount <= to_minor(rental) for c in mine)
        # full and suspended stretches, each rounded once: at most a cent more per extra line
        assert sum(c.amount for c in mine) <= to_minor(rental) + max(len(mine) - 1, 0)


@given(st.sampled_from(PERIODS), st.integers(0, 40 * 86_400), st.integers(0, 40 * 86_400))
def test_a_later_activation_never_costs_more(period: Period, a: int, b: int) -> None:
    early, late = sorted((a, b))

    def rental(offset: int) -> int:
        history = [Change(period.start_s - 86_400 + offset, "active", "gold")]
        return sum(c.amount for c in rental_charges(history, period, TZ, RENTALS, 10_000))

    assert rental(early) >= rental(late)


@given(st.sampled_from(PERIODS), st.integers(0, 31 * 86_400), st.sampled_from(["silver", "suspended"]))
def test_a_period_split_by_a_change_charges_every_day_once(period: Period, offset: int, change: str) -> None:
    at = period.start_s + min(offset, period.end_s - period.start_s - 1)
    after = Change(at, "suspended", "gold") if change == "suspended" else Change(at, "active", "silver")
    history = [Change(0, "active", "gold"), after]
    days = charged_days(history, period, TZ)
    assert sum(days.values()) == period.days  # the days before and after add up to the period
    same = {"gold": ("Gold", 31_000_000), "silver": ("Gold", 31_000_000)}
    lines = rental_charges(history, period, TZ, same, 10_000)
    # Each stretch is rounded once: together within a cent per extra line of the full rental.
    assert abs(sum(c.amount for c in lines) - to_minor(31_000_000)) <= len(lines) - 1
