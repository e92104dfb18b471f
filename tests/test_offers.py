"""Product offering: customer type, coverage at the address, credit class. No server."""

from __future__ import annotations

from datetime import datetime

import pytest

from charging.catalog_doc import catalog_from_doc
from charging.catalogs import read_catalog_file
from provisioning.coverage import sample_coverage
from provisioning.credit import MICROS, CreditHistory, decide
from provisioning.offers import offers

NOW = int(datetime.fromisoformat("2026-11-26T12:00:00+01:00").timestamp())
PLANS = list(catalog_from_doc(read_catalog_file("")).plans.values())
GOOD = decide(CreditHistory(tenure_months=36, monthly_income_micros=4000 * MICROS))
POOR = decide(CreditHistory(defaults_5y=3, monthly_income_micros=800 * MICROS))


def offered(country: str, postal: str, credit: object) -> tuple[set[str], dict[str, str]]:
    got, refused = offers(
        PLANS, country=country, postal_code=postal, coverage=sample_coverage(), credit=credit, at_s=NOW
    )  # type: ignore[arg-type]
    return {o.plan_id for o in got}, {r.plan_id: r.reason for r in refused}


def test_good_credit_in_a_well_covered_area_gets_everything() -> None:
    plans, refused = offered("DE", "10115", GOOD)
    assert plans == {p.id for p in PLANS}
    assert refused == {}


def test_fixed_lines_need_coverage_of_their_access() -> None:
    plans, refused = offered("DE", "17033", GOOD)  # WiMax only
    assert "fixed-prepaid" in plans  # sold on WiMax
    assert refused["fixed-postpaid"] == "no PSTN/FIBER coverage at the address"
    plans, refused = offered("DE", "99084", GOOD)  # PSTN only (the default area)
    assert "fixed-postpaid" in plans and "fixed-prepaid" not in plans


def test_postpaid_follows_the_credit_class() -> None:
    plans, refused = offered("DE", "10115", POOR)
    assert POOR.credit_class == "E"
    assert {"mobile-postpaid", "fixed-postpaid"} & plans == set()
    assert refused["mobile-postpaid"] == "the credit class does not allow postpaid"
    assert {"mobile-prepaid", "fixed-prepaid", "default"} <= plans  # prepaid needs no credit
    plans, refused = offered("DE", "10115", None)
    assert refused["mobile-postpaid"] == "postpaid needs a credit check"


def test_rental_above_the_credit_limit_is_refused() -> None:
    small = decide(CreditHistory(monthly_income_micros=100 * MICROS))  # class D, 20 EUR limit
    _plans, refused = offered("DE", "10115", small)
    assert refused["mobile-postpaid"] == "the monthly rental is above the credit limit"


@pytest.mark.parametrize("country", ["FR", "US"])
def test_mobile_is_national(country: str) -> None:
    plans, refused = offered(country, "75001", GOOD)
    assert not any(p.startswith("mobile") for p in plans)
    assert refused["mobile-prepaid"] == "mobile service is sold for addresses in DE"


def test_postpaid_offers_carry_the_deposit() -> None:
    d = decide(CreditHistory(late_payments_12m=2, monthly_income_micros=2000 * MICROS))
    got, _ = offers(PLANS, country="DE", postal_code="10115", coverage=sample_coverage(), credit=d, at_s=NOW)
    by_plan = {o.plan_id: o for o in got}
    assert by_plan["mobile-postpaid"].deposit_micros == d.deposit_micros
    assert by_plan["mobile-prepaid"].deposit_micros == 0
