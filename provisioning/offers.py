"""Which products a customer can be offered: those of the customer's type that the
network can serve at the customer's address and that the credit decision allows.
Pure: the catalog, coverage and credit decision are parameters.

Mobile service is national: offered for addresses in the home country. Fixed lines
(PSTN, WiMax, fibre) need coverage of one of the plan's access technologies at the
address, by the longest postal-code prefix of the coverage table (``coverage.py``).
Postpaid needs a credit class that allows it and a monthly rental within the credit
limit; every product left out comes with its reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from charging.catalog import CustomerType, Plan
from provisioning.coverage import Coverage
from provisioning.credit import CreditDecision


@dataclass(frozen=True)
class Offer:
    plan_id: str
    customer_type: str
    rental_micros: int
    deposit_micros: int


@dataclass(frozen=True)
class Refusal:
    plan_id: str
    reason: str


POSTPAID = {CustomerType.MOBILE_POSTPAID, CustomerType.FIXED_POSTPAID}
MOBILE = {CustomerType.MOBILE_PREPAID, CustomerType.MOBILE_POSTPAID}


def offers(
    plans: Iterable[Plan],
    *,
    country: str,
    postal_code: str,
    coverage: Coverage,
    credit: CreditDecision | None,
    at_s: int,
) -> tuple[list[Offer], list[Refusal]]:
    """Products to offer, and every product left out with its reason."""
    offered: list[Offer] = []
    refused: list[Refusal] = []
    access = coverage.access_at(country, postal_code)
    for plan in plans:
        version = plan.version_at(at_s)
        reason = None
        if version is None:
            reason = "not on sale yet"
        elif plan.customer_type in MOBILE and country != coverage.home_country:
            reason = f"mobile service is sold for addresses in {coverage.home_country}"
        elif plan.customer_type not in MOBILE and not set(plan.access) & access:
            reason = f"no {'/'.join(plan.access)} coverage at the address"
        elif plan.customer_type in POSTPAID and (credit is None or not credit.postpaid_allowed):
            reason = "the credit class does not allow postpaid" if credit else "postpaid needs a credit check"
        elif (
            plan.customer_type in POSTPAID and credit is not None and version.rental_micros > credit.credit_limit_micros
        ):
            reason = "the monthly rental is above the credit limit"
        if reason is not None:
            refused.append(Refusal(plan.id, reason))
            continue
        assert version is not None
        deposit = credit.deposit_micros if credit is not None and plan.customer_type in POSTPAID else 0
        offered.append(Offer(plan.id, plan.customer_type.value, version.rental_micros, deposit))
    return offered, refused
