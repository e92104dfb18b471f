"""Composing an invoice from a closed bill period: rentals, usage, included bundles,
discounts, pending account charges and taxes. Pure: every input is a parameter.

Order of the arithmetic (each step on integers in minor units):
  1. per line: prorated rentals (``rentals.py``), one usage line per category
     (``usage.py``), included bundles at no charge;
  2. per line: product discounts (PERCENT of the line's rentals or usage, FIXED per
     line), never more than the line's charges;
  3. per invoice: the largest corporate volume discount tier reached by the number of
     lines, as a percentage of all lines' usage (or rentals);
  4. pending account charges since the last invoice (adjustments, late and reconnection
     fees) as they were recorded;
  5. tax per code over the net lines (``invoices.taxes``), rounded once per code.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from charging.money import share
from charging.rating import UnitKind
from postpaid.config import BillingConfig
from postpaid.invoices import (
    DISCOUNT,
    INCLUDED,
    RENTAL,
    USAGE,
    Charge,
    Invoice,
    LineSection,
    UsageItem,
    taxes,
)
from postpaid.periods import Period
from postpaid.rentals import Change, rental_charges
from postpaid.usage import Aggregate, Record, itemised, usage_charges


@dataclass(frozen=True)
class Product:
    """What billing needs of a catalog plan."""

    name: str
    rental_micros: int
    included: tuple[str, ...] = ()


@dataclass(frozen=True)
class LineBill:
    account_id: str
    line: str
    plan_id: str
    history: list[Change]
    aggregates: list[Aggregate]
    records: list[Record]
    unit_path: tuple[str, ...] = ()
    # The itemised rows when the caller built them already (bill runs, from the stored
    # records in one pass); otherwise they are made from ``records``.
    items: tuple[UsageItem, ...] | None = None
    # Earlier periods closed with this one (a line that joined while one was billed):
    # their rentals are charged here too.
    earlier: tuple[Period, ...] = ()


@dataclass(frozen=True)
class AccountBill:
    billing_account: str
    customer_label: str
    period: Period
    lines: list[LineBill]
    pending: list[Charge] = field(default_factory=list)
    previous_balance: int = 0
    payments_received: int = 0
    kind: str = "REGULAR"
    notes: tuple[str, ...] = ()
    customer_name: str = ""
    customer_address: tuple[str, ...] = ()


def compose(
    config: BillingConfig,
    products: dict[str, Product],
    units: dict[str, UnitKind],
    bill: AccountBill,
    issued: date,
) -> Invoice:
    rentals = {pid: (p.name, p.rental_micros) for pid, p in products.items()}
    sections = []
    for line in sorted(bill.lines, key=lambda x: (x.unit_path, x.line)):
        charges = []
        for earlier in line.earlier:
            for c in rental_charges(line.history, earlier, config.time_zone, rentals, config.suspended_rental_bp):
                charges.append(replace(c, description=f"{c.description}, {earlier.start} to {earlier.last_day}"))
        charges += rental_charges(line.history, bill.period, config.time_zone, rentals, config.suspended_rental_bp)
        charges += usage_charges(line.aggregates, units)
        product = products.get(line.plan_id)
        for bundle in product.included if product else ():
            charges.append(Charge(INCLUDED, f"Included: {bundle}", 0))
        charges += _line_discounts(config, line.plan_id, charges)
        charges = [_taxed(config, line.plan_id, c) for c in charges]
        sections.append(
            LineSection(
                line=line.line,
                product=product.name if product else line.plan_id,
                charges=tuple(charges),
                usage=line.items
                if line.items is not None
                else tuple(itemised(line.records, units, config.mask_destination_digits)),
                unit_path=line.unit_path,
            )
        )
    account_charges = _volume_discount(config, sections) + list(bill.pending)
    every = [c for s in sections for c in s.charges] + account_charges
    return Invoice(
        number="",
        issuer=config.issuer.name,
        billing_account=bill.billing_account,
        customer_label=bill.customer_label,
        currency=config.currency,
        period_start=bill.period.start,
        period_end=_period_end(config, bill),
        issued=issued,
        due=issued + timedelta(days=config.payment_terms_days),
        sections=tuple(sections),
        account_charges=tuple(account_charges),
        taxes=taxes(every, config.taxes),
        previous_balance=bill.previous_balance,
        payments_received=bill.payments_received,
        kind=bill.kind,
        notes=bill.notes,
        customer_name=bill.customer_name,
        customer_address=bill.customer_address,
        issuer_address=config.issuer.address,
        issuer_tax_id=config.issuer.tax_id,
        iban=config.issuer.iban,
        bic=config.issuer.bic,
        time_zone=config.time_zone,
    )


def _period_end(config: BillingConfig, bill: AccountBill) -> date:
    """The last day billed: the period's, or on a final invoice the day the line
    terminated (its last charged day, ``rentals.py``) when that falls within the period."""
    last = bill.period.last_day
    if bill.kind != "FINAL":
        return last
    tz = ZoneInfo(config.time_zone)
    ends = [
        datetime.fromtimestamp(c.at_s, tz).date()
        for line in bill.lines
        for c in line.history
        if c.state == "terminated" and bill.period.start_s <= c.at_s < bill.period.end_s
    ]
    return min(max(ends), last) if ends else last


def _taxed(config: BillingConfig, plan_id: str, charge: Charge) -> Charge:
    """The charge with its configured tax code: usage by category, the rest by plan."""
    if charge.kind == USAGE:
        code = config.category_tax_codes.get(charge.category, "standard")
    else:
        code = config.plan_tax_codes.get(plan_id, "standard")
    return charge if code == charge.tax_code else replace(charge, tax_code=code)


def _line_discounts(config: BillingConfig, plan_id: str, charges: list[Charge]) -> list[Charge]:
    out = []
    room = sum(c.amount for c in charges)
    for d in config.discounts:
        if d.plans and plan_id not in d.plans:
            continue
        if d.kind == "PERCENT":
            kind = RENTAL if d.applies_to == "RENTAL" else USAGE
            base = sum(c.amount for c in charges if c.kind == kind)
            amount = share(base, d.value_bp, 10_000)
        else:
            amount = d.amount_minor
        amount = min(amount, room)
        if amount > 0:
            out.append(Charge(DISCOUNT, d.name, -amount))
            room -= amount
    return out


def _volume_discount(config: BillingConfig, sections: list[LineSection]) -> list[Charge]:
    tier = None
    for v in config.volume_discounts:
        if len(sections) >= v.min_lines:
            tier = v
    if tier is None:
        return []
    kind = RENTAL if tier.applies_to == "RENTAL" else USAGE
    base = sum(c.amount for s in sections for c in s.charges if c.kind == kind)
    amount = share(base, tier.value_bp, 10_000)
    return [Charge(DISCOUNT, f"{tier.name} ({len(sections)} lines)", -amount)] if amount > 0 else []
