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
from postpaid.periods import by_id, following, open_periods, pack, period_at, unpack
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
