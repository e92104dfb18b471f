"""Invoices: what one bill holds, and the arithmetic that builds it. Pure: no Redis, no clock.

Money on an invoice is an integer count of the currency's minor units (cents). Usage is
rated in micros (``charging/money.py``); each charge line is rounded once to minor units
with ``to_minor`` (half away from zero). Tax is computed per tax code on the sum of the
net charge lines carrying that code, rounded once per code with the same rule: that is the
stated rounding stage. Totals are sums of already rounded integers, so an invoice always
adds up to the cent, and the usage lines reconcile with the itemised records exactly in
micros (``UsageSummary``) before that one rounding.

    line sections (per line: rentals, usage by category, included bundles, discounts)
    + account charges (volume discounts, adjustments, late and reconnection fees)
    = net total; + taxes per code = invoice total
    previous balance - payments received + invoice total = total due
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date
from typing import Any, NamedTuple

import orjson

from charging.money import share
from postpaid.payment_reference import invoice_reference

# Kinds of charge lines.
RENTAL = "RENTAL"
USAGE = "USAGE"
INCLUDED = "INCLUDED"  # a bundle included in the product, shown with what was used of it
DISCOUNT = "DISCOUNT"
ADJUSTMENT = "ADJUSTMENT"
LATE_FEE = "LATE_FEE"
RECONNECTION_FEE = "RECONNECTION_FEE"
DEPOSIT = "DEPOSIT"

# Usage categories, in the order an invoice lists them.
CATEGORIES = ("NATIONAL_CALLS", "INTERNATIONAL_CALLS", "SMS", "DATA", "ROAMING", "BUNDLES", "OTHER")
CATEGORY_NAMES = {
    "NATIONAL_CALLS": "National calls",
    "INTERNATIONAL_CALLS": "International calls",
    "SMS": "Messages",
    "DATA": "Data",
    "ROAMING": "Roaming",
    "BUNDLES": "Bundles bought",
    "OTHER": "Other services",
}


@dataclass(frozen=True)
class Charge:
    """One line of an invoice. ``amount`` in minor units, negative for discounts and
    credits; ``quantity`` with ``unit`` ("s", "bytes", "events", "days") when it helps."""

    kind: str
    description: str
    amount: int
    quantity: int = 0
    unit: str = ""
    tax_code: str = "standard"
    category: str = ""


class UsageItem(NamedTuple):
    """One itemised usage record: when, what, where to, how much, what it cost (micros).
    A tuple, stored as a JSON array: an invoice can carry thousands, and a bill run
    builds millions."""

    at_ms: int
    service: str
    category: str
    destination: str  # as shown to the customer (masked when configured)
    units: int
    unit: str
    cost_micros: int


@dataclass(frozen=True)
class LineSection:
    """A line's part of an invoice; ``unit_path`` names the corporate branch or department."""

    line: str
    product: str
    charges: tuple[Charge, ...]
    usage: tuple[UsageItem, ...] = ()
    unit_path: tuple[str, ...] = ()

    @property
    def subtotal(self) -> int:
        return sum(c.amount for c in self.charges)


@dataclass(frozen=True)
class TaxLine:
    code: str
    name: str
    rate_bp: int  # basis points: 1900 = 19 %
    base: int
    amount: int


@dataclass(frozen=True)
class Invoice:
    number: str  # assigned when issued, gapless per issuer
    issuer: str
    billing_account: str
    customer_label: str
    currency: str
    period_start: date
    period_end: date  # last day of the period (inclusive)
    issued: date
    due: date
    sections: tuple[LineSection, ...]
    account_charges: tuple[Charge, ...]
    taxes: tuple[TaxLine, ...]
    previous_balance: int = 0
    payments_received: int = 0
    kind: str = "REGULAR"  # or FINAL (termination)
    notes: tuple[str, ...] = field(default=())
    # Who it is addressed to (the postal address window) and who is paid, as they were
    # when the invoice was issued: an issued invoice never changes. Invoices issued
    # before these were kept have them empty and print the label instead.
    customer_name: str = ""
    customer_address: tuple[str, ...] = ()
    issuer_address: tuple[str, ...] = ()
    issuer_tax_id: str = ""  # VAT identification number
    iban: str = ""
    bic: str = ""
    # The billing time zone: itemised times are shown in it ("UTC" for older invoices,
    # which were shown in UTC).
    time_zone: str = "UTC"

    @property
    def payment_reference(self) -> str:
        """The structured creditor reference (ISO 11649) of this invoice's number ("" when
        the number cannot be one: not yet issued, or longer than 21 letters and digits)."""
        try:
            return invoice_reference(self.number)
        except ValueError:
            return ""

    @property
    def net_total(self) -> int:
        return sum(s.subtotal for s in self.sections) + sum(c.amount for c in self.account_charges)

    @property
    def tax_total(self) -> int:
        return sum(t.amount for t in self.taxes)

    @property
    def total(self) -> int:
        """This invoice's charges including tax."""
        return self.net_total + self.tax_total

    @property
    def total_due(self) -> int:
        return self.previous_balance - self.payments_received + self.total

    def all_charges(self) -> list[Charge]:
        return [c for s in self.sections for c in s.charges] + list(self.account_charges)

    def to_json(self) -> str:
        # orjson writes dataclasses, tuples and dates natively (a bill run serialises
        # thousands of invoices a second; dataclasses.asdict deep-copies every value).
        return orjson.dumps(self, default=_as_list).decode()

    @staticmethod
    def from_json(text: str) -> Invoice:
        d: dict[str, Any] = json.loads(text)
        sections = tuple(
            LineSection(
                line=s["line"],
                product=s["product"],
                charges=tuple(Charge(**c) for c in s["charges"]),
                usage=tuple(UsageItem(**u) if isinstance(u, dict) else UsageItem(*u) for u in s["usage"]),
                unit_path=tuple(s["unit_path"]),
            )
            for s in d["sections"]
        )
        return Invoice(
            number=d["number"],
            issuer=d["issuer"],
            billing_account=d["billing_account"],
            customer_label=d["customer_label"],
            currency=d["currency"],
            period_start=date.fromisoformat(d["period_start"]),
            period_end=date.fromisoformat(d["period_end"]),
            issued=date.fromisoformat(d["issued"]),
            due=date.fromisoformat(d["due"]),
            sections=sections,
            account_charges=tuple(Charge(**c) for c in d["account_charges"]),
            taxes=tuple(TaxLine(**t) for t in d["taxes"]),
            previous_balance=d["previous_balance"],
            payments_received=d["payments_received"],
            kind=d["kind"],
            notes=tuple(d["notes"]),
            customer_name=d.get("customer_name", ""),
            customer_address=tuple(d.get("customer_address", ())),
            issuer_address=tuple(d.get("issuer_address", ())),
            issuer_tax_id=d.get("issuer_tax_id", ""),
            iban=d.get("iban", ""),
            bic=d.get("bic", ""),
            time_zone=d.get("time_zone", "UTC"),
        )


def _as_list(value: object) -> list[object]:
    """orjson writes tuples but not tuple subclasses: usage items go as arrays."""
    if isinstance(value, UsageItem):
        return list(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


@dataclass(frozen=True)
class TaxRate:
    code: str
    name: str
    rate_bp: int


def taxes(charges: list[Charge], rates: dict[str, TaxRate]) -> tuple[TaxLine, ...]:
    """Tax per code over the net sum of the charges with that code, rounded once per code.
    A charge whose code has no configured rate is an error (never silently untaxed)."""
    bases: dict[str, int] = {}
    for c in charges:
        if c.tax_code not in rates:
            raise ValueError(f"no tax rate configured for code {c.tax_code!r}")
        bases[c.tax_code] = bases.get(c.tax_code, 0) + c.amount
    out = []
    for code in sorted(bases):
        r = rates[code]
        out.append(TaxLine(code, r.name, r.rate_bp, bases[code], share(bases[code], r.rate_bp, 10_000)))
    return tuple(out)
