"""Billing settings: the issuer, taxes, payment terms, discounts, the dunning ladder.

One JSON document (``postpaid/billing.json`` is the default; ``CHARGING_BILLING_FILE``
names another). ``parse`` checks it against ``billing.schema.json`` (exact types, no
unknown field), then what a schema cannot say, and names every bad field; amounts are
integer minor units, rates integer basis points (1900 = 19 %).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from charging.schemas import DocumentInvalid, Schema, merge, parse_json
from postpaid.dunning import Ladder, LadderError
from postpaid.invoices import CATEGORIES, TaxRate
from postpaid.payment_reference import REFERENCE_MAX, iban_problem


class BillingConfigInvalid(DocumentInvalid, ValueError):
    """Every problem of rejected billing settings, each naming its field."""


SCHEMA = Schema("postpaid", "billing.schema.json", "billing", BillingConfigInvalid)


@dataclass(frozen=True)
class Issuer:
    id: str
    name: str
    address: tuple[str, ...]  # postal address lines
    tax_id: str  # VAT identification number
    number_prefix: str
    credit_note_prefix: str
    iban: str = ""  # where customers pay (checked: ISO 13616 check digits)
    bic: str = ""


@dataclass(frozen=True)
class Discount:
    """PERCENT of a line's RENTAL or USAGE charges (``value_bp``), or a FIXED amount per
    line, for lines on one of ``plans`` (empty: every plan)."""

    name: str
    kind: str
    plans: tuple[str, ...]
    applies_to: str = "RENTAL"
    value_bp: int = 0
    amount_minor: int = 0


@dataclass(frozen=True)
class VolumeDiscount:
    """A percentage off the usage (or rentals) of a consolidated invoice with at least
    ``min_lines`` lines; the largest tier reached applies."""

    name: str
    min_lines: int
    applies_to: str
    value_bp: int


@dataclass(frozen=True)
class BillingConfig:
    issuer: Issuer
    currency: str
    time_zone: str
    payment_terms_days: int
    taxes: dict[str, TaxRate]
    suspended_rental_bp: int
    mask_destination_digits: int
    discounts: tuple[Discount, ...]
    volume_discounts: tuple[VolumeDiscount, ...]
    reconnection_fee_minor: int
    prepaid_termination: str
    dunning: Ladder
    # Tax code of a plan's rental and its line discounts, and of a usage category
    # (unlisted: "standard").
    plan_tax_codes: dict[str, str] = field(default_factory=dict)
    category_tax_codes: dict[str, str] = field(default_factory=dict)


def default() -> BillingConfig:
    return parse(json.loads(resources.files("postpaid").joinpath("billing.json").read_text()))


def load(path: str) -> BillingConfig:
    if not path:
        return default()
    with open(path, encoding="utf-8") as f:
        return parse(parse_json(f.read(), error=BillingConfigInvalid))


def parse(doc: Any) -> BillingConfig:
    shape, doc = SCHEMA.validate(doc)
    if not isinstance(doc, dict):
        raise BillingConfigInvalid(shape)
    # What the schema cannot say; a value it refused reads as empty (it is named already).
    problems: list[tuple[str, str]] = []
    iss = _object(doc.get("issuer"))
    address = iss.get("address", ())
    bank = _object(iss.get("bank"))
    issuer = Issuer(
        id=str(iss.get("id", "")),
        name=str(iss.get("name", "")),
        # One line per item; a single text (the earlier form) has its lines separated by ", ".
        address=tuple(address.split(", ") if isinstance(address, str) else map(str, address or ())),
        tax_id=str(iss.get("tax_id", "")),
        number_prefix=str(iss.get("number_prefix", "")),
        credit_note_prefix=str(iss.get("credit_note_prefix", "")),
        iban=str(bank.get("iban", "")).replace(" ", ""),
        bic=str(bank.get("bic", "")),
    )
    if issuer.iban and (problem := iban_problem(issuer.iban)):
        problems.append(("issuer.bank.iban", problem))
    prefix = sum(c.isalnum() for c in issuer.number_prefix)
    if prefix > REFERENCE_MAX - 8:
        # The payment reference is the number's letters and digits (8 digits of sequence).
        problems.append(("issuer.number_prefix", f"at most {REFERENCE_MAX - 8} letters and digits"))
    tz = str(doc.get("time_zone", ""))
    try:
        if tz:
            ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(("time_zone", f"unknown time zone {tz!r}"))
    taxes: dict[str, TaxRate] = {}
    for i, t in enumerate(_objects(doc.get("taxes"))):
        rate = TaxRate(str(t.get("code", "")), str(t.get("name", "")), t.get("rate_bp", 0))
        if rate.code in taxes:
            problems.append((f"taxes[{i}].code", f"duplicate tax code {rate.code!r}"))
        taxes[rate.code] = rate
    for code in ("standard", "exempt"):  # charges use these: most lines; late fees, deposits
        if code not in taxes:
            problems.append(("taxes", f"must define the {code!r} code"))
    discounts = tuple(
        Discount(
            str(d.get("name", "")),
            str(d.get("kind", "")),
            tuple(d.get("plans", ())),
            d.get("applies_to", "RENTAL"),
            d.get("value_bp", 0),
            d.get("amount_minor", 0),
        )
        for d in _objects(doc.get("discounts"))
    )
    volume = [
        VolumeDiscount(
            str(d.get("name", "")), d.get("min_lines", 1), d.get("applies_to", "USAGE"), d.get("value_bp", 0)
        )
        for d in _objects(doc.get("volume_discounts"))
    ]
    ladder = Ladder(())
    dunning = doc.get("dunning")
    if isinstance(dunning, list):
        try:
            ladder = Ladder.from_config(dunning)
        except LadderError as exc:
            where = "dunning" if exc.index is None else f"dunning[{exc.index}]"
            problems.append((f"{where}.{exc.field}" if exc.field else where, str(exc)))
    codes: dict[str, dict[str, str]] = {"plans": {}, "categories": {}}
    raw_codes = _object(doc.get("tax_codes"))
    for part in ("plans", "categories"):
        for name, code in _object(raw_codes.get(part)).items():
            if code not in taxes:
                problems.append((f"tax_codes.{part}.{name}", f"no tax rate with code {code!r}"))
            elif part == "categories" and name not in CATEGORIES:
                problems.append((f"tax_codes.{part}.{name}", f"not a usage category ({', '.join(CATEGORIES)})"))
            else:
                codes[part][str(name)] = str(code)
    config = BillingConfig(
        issuer=issuer,
        currency=str(doc.get("currency", "")),
        time_zone=tz,
        payment_terms_days=doc.get("payment_terms_days", 0),
        taxes=taxes,
        suspended_rental_bp=doc.get("suspended_rental_bp", 10_000),
        mask_destination_digits=doc.get("mask_destination_digits", 0),
        discounts=discounts,
        volume_discounts=tuple(sorted(volume, key=lambda v: v.min_lines)),
        reconnection_fee_minor=doc.get("reconnection_fee_minor", 0),
        prepaid_termination=str(doc.get("prepaid_termination", "REFUND_ON_REQUEST")),
        dunning=ladder,
        plan_tax_codes=codes["plans"],
        category_tax_codes=codes["categories"],
    )
    problems = merge(shape, problems)
    if problems:
        raise BillingConfigInvalid(problems)
    return config


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _objects(items: Any) -> list[dict[str, Any]]:
    """The items of a list the schema accepted; one it refused (pruned to null) reads as
    an empty object, whose fields the schema has named already."""
    return [_object(item) for item in items or []]
