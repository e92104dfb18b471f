"""Credit scoring: tables and properties. No server."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioning.credit import MICROS, CreditHistory, decide

EUR = MICROS


@pytest.mark.parametrize(
    ("history", "klass", "limit", "deposit", "postpaid"),
    [
        # long tenure, good income, clean history
        (CreditHistory(tenure_months=36, monthly_income_micros=4000 * EUR), "A", 500 * EUR, 0, True),
        (CreditHistory(tenure_months=12, monthly_income_micros=2000 * EUR), "B", 300 * EUR, 0, True),
        # new customer, modest income: the limit is capped by the income share
        # a small income: class D, a small limit and a deposit
        (CreditHistory(monthly_income_micros=400 * EUR), "D", 50 * EUR, 100 * EUR, True),
        (CreditHistory(monthly_income_micros=100 * EUR), "D", 20 * EUR, 100 * EUR, True),
        (CreditHistory(monthly_income_micros=800 * EUR), "C", 150 * EUR, 0, True),
        (CreditHistory(late_payments_12m=2, monthly_income_micros=800 * EUR), "D", 50 * EUR, 100 * EUR, True),
        (CreditHistory(defaults_5y=1, tenure_months=60, monthly_income_micros=8000 * EUR), "C", 150 * EUR, 0, True),
        (CreditHistory(defaults_5y=3, monthly_income_micros=8000 * EUR), "E", 0, 0, False),
        (
            CreditHistory(tenure_months=36, monthly_income_micros=4000 * EUR, monthly_debt_micros=2000 * EUR),
            "B",
            300 * EUR,
            0,
            True,
        ),
    ],
)
def test_credit_classes(history: CreditHistory, klass: str, limit: int, deposit: int, postpaid: bool) -> None:
    d = decide(history)
    assert (d.credit_class, d.credit_limit_micros, d.deposit_micros, d.postpaid_allowed) == (
        klass,
        limit,
        deposit,
        postpaid,
    )


def test_every_adjustment_is_explained() -> None:
    d = decide(CreditHistory(defaults_5y=1, late_payments_12m=1, tenure_months=10, monthly_income_micros=2000 * EUR))
    assert d.reasons == (
        "base 600",
        "1 defaults in 5 years: -250",
        "1 late payments in 12 months: -40",
        "10 months of tenure: +50",
        "declared monthly income band: +60",
    )
    assert d.points == 600 - 250 - 40 + 50 + 60


histories = st.builds(
    CreditHistory,
    defaults_5y=st.integers(0, 5),
    late_payments_12m=st.integers(0, 12),
    tenure_months=st.integers(0, 240),
    monthly_income_micros=st.integers(0, 20_000 * EUR),
    monthly_debt_micros=st.integers(0, 10_000 * EUR),
)


@given(h=histories, more=st.integers(1, 3))
def test_more_defaults_or_late_payments_never_help(h: CreditHistory, more: int) -> None:
    from dataclasses import replace

    base = decide(h).points
    assert decide(replace(h, defaults_5y=h.defaults_5y + more)).points <= base
    assert decide(replace(h, late_payments_12m=h.late_payments_12m + more)).points <= base


@given(h=histories, extra=st.integers(1, 5_000 * EUR))
def test_more_income_never_lowers_the_limit(h: CreditHistory, extra: int) -> None:
    from dataclasses import replace

    richer = replace(h, monthly_income_micros=h.monthly_income_micros + extra)
    assert decide(richer).points >= decide(h).points
    assert decide(richer).credit_limit_micros >= decide(h).credit_limit_micros


@given(h=histories)
def test_the_limit_never_exceeds_half_the_income(h: CreditHistory) -> None:
    d = decide(h)
    assert 0 <= d.credit_limit_micros <= h.monthly_income_micros // 2
