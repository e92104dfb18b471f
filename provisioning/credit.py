"""Credit scoring for postpaid applications: explainable, integer-only, pure.

A score starts at 600 points; each factor of the applicant's credit history (from a
credit bureau, or the operator's own records) and declared monthly income adds or
removes points, and every adjustment is kept as a reason so a decision can be
explained to the customer and audited. The score gives a credit class A-E, and the
class the credit limit (at most a share of the monthly income), the deposit and
whether a postpaid contract can be offered at all. Prepaid needs no credit check.
"""

from __future__ import annotations

from dataclasses import dataclass

from charging.money import MICROS_PER_UNIT, share_floor

MICROS = MICROS_PER_UNIT
BASE_POINTS = 600


@dataclass(frozen=True)
class CreditHistory:
    defaults_5y: int = 0
    late_payments_12m: int = 0
    tenure_months: int = 0
    monthly_income_micros: int = 0
    monthly_debt_micros: int = 0


@dataclass(frozen=True)
class ClassTerms:
    credit_class: str
    min_points: int
    # Credit limit: this many micros, but at most income_share_pct of monthly income.
    limit_micros: int
    income_share_pct: int
    deposit_micros: int
    postpaid_allowed: bool
    max_lines: int


CLASSES = (
    ClassTerms("A", 800, 500 * MICROS, 50, 0, True, 10),
    ClassTerms("B", 700, 300 * MICROS, 40, 0, True, 5),
    ClassTerms("C", 600, 150 * MICROS, 30, 0, True, 3),
    ClassTerms("D", 500, 50 * MICROS, 20, 100 * MICROS, True, 1),
    ClassTerms("E", -(10**9), 0, 0, 0, False, 0),
)

INCOME_BANDS = (  # (monthly income at least, points)
    (6000 * MICROS, 150),
    (3000 * MICROS, 110),
    (1500 * MICROS, 60),
    (500 * MICROS, 0),
    (0, -50),
)


@dataclass(frozen=True)
class CreditDecision:
    points: int
    credit_class: str
    credit_limit_micros: int
    deposit_micros: int
    postpaid_allowed: bool
    max_lines: int
    reasons: tuple[str, ...]


def score(history: CreditHistory) -> tuple[int, tuple[str, ...]]:
    """Points and the reason for each adjustment."""
    points = BASE_POINTS
    reasons = [f"base {BASE_POINTS}"]

    def adjust(delta: int, why: str) -> None:
        nonlocal points
        if delta:
            points += delta
            reasons.append(f"{why}: {delta:+d}")

    adjust(-min(250 * history.defaults_5y, 500), f"{history.defaults_5y} defaults in 5 years")
    adjust(-min(40 * history.late_payments_12m, 200), f"{history.late_payments_12m} late payments in 12 months")
    adjust(min(5 * history.tenure_months, 150), f"{history.tenure_months} months of tenure")
    income = history.monthly_income_micros
    band = next(p for floor, p in INCOME_BANDS if income >= floor)
    adjust(band, "declared monthly income band")
    if income > 0 and history.monthly_debt_micros * 100 > income * 40:
        adjust(-100, "debt above 40% of income")
    elif income <= 0 and history.monthly_debt_micros > 0:
        adjust(-100, "debt without declared income")
    return points, tuple(reasons)


def decide(history: CreditHistory) -> CreditDecision:
    """The credit class and its terms for a postpaid application."""
    points, reasons = score(history)
    terms = next(c for c in CLASSES if points >= c.min_points)
    limit = min(terms.limit_micros, share_floor(history.monthly_income_micros, terms.income_share_pct, 100))
    return CreditDecision(
        points=points,
        credit_class=terms.credit_class,
        credit_limit_micros=limit if terms.postpaid_allowed else 0,
        deposit_micros=terms.deposit_micros,
        postpaid_allowed=terms.postpaid_allowed and limit > 0,
        max_lines=terms.max_lines,
        reasons=reasons,
    )


def reclassed(credit_class: str, credit_limit_micros: int) -> CreditDecision:
    """The terms of a customer moved to ``credit_class`` (a review): the class's deposit,
    postpaid offer and lines, and ``credit_limit_micros`` (0: the class's own limit).
    ``ValueError`` naming the field when either is not one it can be."""
    terms = next((c for c in CLASSES if c.credit_class == credit_class), None)
    if terms is None:
        raise ValueError("credit_class", "must be one of " + ", ".join(c.credit_class for c in CLASSES))
    if not 0 <= credit_limit_micros <= terms.limit_micros:
        raise ValueError("credit_limit_micros", f"must be from 0 to {terms.limit_micros} (class {credit_class})")
    limit = (credit_limit_micros or terms.limit_micros) if terms.postpaid_allowed else 0
    return CreditDecision(
        points=0,  # not scored: decided by whoever changed it (the audit entry says who and why)
        credit_class=credit_class,
        credit_limit_micros=limit,
        deposit_micros=terms.deposit_micros,
        postpaid_allowed=terms.postpaid_allowed and limit > 0,
        max_lines=terms.max_lines,
        reasons=(),
    )
