"""Sample data for tests (and for trying the renderer by hand): an invoice that exercises
every part of the layout. Test data, so it lives with the tests, not in ``postpaid``."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime

from charging.money import share, to_minor
from postpaid.invoices import (
    CATEGORY_NAMES,
    DISCOUNT,
    INCLUDED,
    LATE_FEE,
    RENTAL,
    USAGE,
    Charge,
    Invoice,
    LineSection,
    TaxRate,
    UsageItem,
    taxes,
)


def sample_invoice(usage_rows: int = 60) -> Invoice:
    """A corporate invoice: two units, three lines, rentals, usage in five categories (from
    ``usage_rows`` itemised records that reconcile with the usage charges), an included
    bundle, discounts, a late fee taxed at another rate, a previous balance."""
    rng = random.Random(7)
    t0 = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp()) * 1000
    kinds = {  # category: (service, unit, destinations, price per started increment in micros, increment)
        "NATIONAL_CALLS": ("Voice", "s", ("+49 40 3861XXXX", "+49 89 2019XXXX", "+49 171 552XXXX"), 90_000, 60),
        "INTERNATIONAL_CALLS": ("Voice", "s", ("+33 1 4455XXXX", "+1 212 555XXXX", "+48 22 621XXXX"), 4_125, 1),
        "SMS": ("SMS", "events", ("+49 160 9344XXXX", "+49 176 1029XXXX"), 90_000, 1),
        "DATA": ("Data", "bytes", ("internet", "business.apn"), 9, 1024),
        "ROAMING": ("Voice roaming", "s", ("FR Orange · +33 6 12XXXXXX", "AT A1 · +43 664 81XXXX"), 234_500, 60),
    }
    lines = (
        (("Müller Logistik GmbH", "Hamburg Depot"), "+49 170 1000001", "Business Mobile L", 3990),
        (("Müller Logistik GmbH", "Hamburg Depot"), "+49 170 1000002", "Business Mobile M", 2490),
        (("Müller Logistik GmbH", "Vertrieb München"), "+49 170 1000003", "Business Data 50 GB", 2990),
    )
    usage: list[list[UsageItem]] = [[], [], []]
    for i in range(usage_rows):
        category = tuple(kinds)[i % len(kinds)]
        service, unit, destinations, price, increment = kinds[category]
        amount = {"s": rng.randint(8, 1500), "events": 1, "bytes": rng.randint(200_000, 900_000_000)}[unit]
        at_ms = t0 + (i * 30 * 86_400_000) // max(usage_rows, 1) + rng.randint(0, 3_600_000)
        cost = -(-amount // increment) * price
        usage[i % 3].append(UsageItem(at_ms, service, category, rng.choice(destinations), amount, unit, cost))
    sections = []
    for (path, line, product, rental), items in zip(lines, usage, strict=True):
        charges = [Charge(RENTAL, f"{product}, monthly rental", rental, 31, "days")]
        for category in kinds:
            mine = [u for u in items if u.category == category]
            if mine:
                micros = sum(u.cost_micros for u in mine)
                units = sum(u.units for u in mine)
                name = CATEGORY_NAMES[category]
                charges.append(Charge(USAGE, name, to_minor(micros), units, mine[0].unit, category=category))
        if product.startswith("Business Data"):
            charges.append(Charge(INCLUDED, "Included data 50 GB (used)", 0, 3_221_225_472, "bytes", category="DATA"))
        charges.append(Charge(DISCOUNT, "Loyalty discount 10 % on rental", -share(rental, 1, 10)))
        sections.append(LineSection(line, product, tuple(charges), tuple(items), path))
    account = (
        Charge(DISCOUNT, "Volume discount, 3 lines", -500),
        Charge(LATE_FEE, "Late payment fee (invoice 2025-000871)", 250, tax_code="exempt"),
    )
    all_charges = [c for s in sections for c in s.charges] + list(account)
    rates = {"standard": TaxRate("standard", "VAT", 1900), "exempt": TaxRate("exempt", "VAT exempt", 0)}
    return Invoice(
        number="2026-000123",
        issuer="Nordwind Telecom GmbH",
        billing_account="BA-7700-4412",
        customer_label="Müller Logistik GmbH, Hafenstraße 12, 20457 Hamburg",
        currency="EUR",
        period_start=date(2026, 1, 1),
        period_end=date(2026, 1, 31),
        issued=date(2026, 2, 1),
        due=date(2026, 2, 15),
        sections=tuple(sections),
        account_charges=account,
        taxes=taxes(all_charges, rates),
        previous_balance=15_000,
        payments_received=10_000,
        notes=("Please pay by bank transfer quoting the invoice number.",),
    )
