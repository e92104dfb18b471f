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


class BillingConfigInvalid(DocumentInvalid, ValueError):
    """Every problem of rejected billing settings, each naming its field."""


SCHEMA = Schema("postpaid", "billing.schema.json", "billing", BillingConfigInvalid)


@dataclass(frozen=True)
class Issuer:
    id: str
    name: str
    address: str
    tax_id: str
    number_prefix: str
    credit_note_prefix: str


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
    problems: list[tuple[str, str]] = []

    def text(d: dict[str, Any], key: str, where: str, required: bool = True) -> str:
        v = d.get(key, "")
        if not isinstance(v, str) or (required and not v.strip()):
            problems.append((f"{where}{key}", "must be a non-empty string" if required else "must be a string"))
            return ""
        return v

    def number(d: dict[str, Any], key: str, where: str, lo: int, hi: int, default: int | None = None) -> int:
        v = d.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            problems.append((f"{where}{key}", f"must be an integer from {lo} to {hi}"))
            return lo
        return v

    raw_issuer = doc.get("issuer")
    iss: dict[str, Any] = raw_issuer if isinstance(raw_issuer, dict) else {}
    if not isinstance(raw_issuer, dict):
        problems.append(("issuer", "must be an object"))
    issuer = Issuer(
        text(iss, "id", "issuer."),
        text(iss, "name", "issuer."),
        text(iss, "address", "issuer.", False),
        text(iss, "tax_id", "issuer.", False),
        text(iss, "number_prefix", "issuer."),
        text(iss, "credit_note_prefix", "issuer."),
    )
    currency = text(doc, "currency", "")
    tz = text(doc, "time_zone", "")
    try:
        if tz:
            ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(("time_zone", f"unknown time zone {tz!r}"))
    taxes: dict[str, TaxRate] = {}
    for i, t in enumerate(_objects(doc.get("taxes"))):
        w = f"taxes[{i}]."
        rate = TaxRate(text(t, "code", w), text(t, "name", w), number(t, "rate_bp", w, 0, 10_000))
        if rate.code in taxes:
            problems.append((f"{w}code", f"duplicate tax code {rate.code!r}"))
        taxes[rate.code] = rate
    for code in ("standard", "exempt"):  # charges use these: most lines; late fees, deposits
        if code not in taxes:
            problems.append(("taxes", f"must define the {code!r} code"))
    discounts = []
    for i, d in enumerate(_objects(doc.get("discounts"))):
        w = f"discounts[{i}]."
        kind = text(d, "kind", w)
        if kind not in ("PERCENT", "FIXED"):
            problems.append((f"{w}kind", "must be PERCENT or FIXED"))
        applies = d.get("applies_to", "RENTAL")
        if applies not in ("RENTAL", "USAGE"):
            problems.append((f"{w}applies_to", "must be RENTAL or USAGE"))
        discounts.append(
            Discount(
                text(d, "name", w),
                kind,
                tuple(str(p) for p in d.get("plans") or ()),
                applies,
                number(d, "value_bp", w, 0, 10_000, 0),
                number(d, "amount_minor", w, 0, 10**9, 0),
            )
        )
    volume = []
    for i, d in enumerate(_objects(doc.get("volume_discounts"))):
        w = f"volume_discounts[{i}]."
        applies = d.get("applies_to", "USAGE")
        if applies not in ("RENTAL", "USAGE"):
            problems.append((f"{w}applies_to", "must be RENTAL or USAGE"))
        volume.append(
            VolumeDiscount(
                text(d, "name", w), number(d, "min_lines", w, 1, 10**6), applies, number(d, "value_bp", w, 0, 10_000)
            )
        )
    policy = doc.get("prepaid_termination", "REFUND_ON_REQUEST")
    if policy not in ("REFUND_ON_REQUEST", "FORFEIT"):
        problems.append(("prepaid_termination", "must be REFUND_ON_REQUEST or FORFEIT"))
    ladder = Ladder(())
    dunning = doc.get("dunning")
    if not isinstance(dunning, list):
        problems.append(("dunning", "must be a list of steps"))
    else:
        try:
            ladder = Ladder.from_config(dunning)
        except LadderError as exc:
            where = "dunning" if exc.index is None else f"dunning[{exc.index}]"
            problems.append((f"{where}.{exc.field}" if exc.field else where, str(exc)))
    codes: dict[str, dict[str, str]] = {"plans": {}, "categories": {}}
    raw_codes = doc.get("tax_codes") or {}
    if not isinstance(raw_codes, dict):
        problems.append(("tax_codes", "must be an object with 'plans' and 'categories'"))
        raw_codes = {}
    for part in ("plans", "categories"):
        for name, code in (raw_codes.get(part) or {}).items():
            if code not in taxes:
                problems.append((f"tax_codes.{part}.{name}", f"no tax rate with code {code!r}"))
            elif part == "categories" and name not in CATEGORIES:
                problems.append((f"tax_codes.{part}.{name}", f"not a usage category ({', '.join(CATEGORIES)})"))
            else:
                codes[part][str(name)] = str(code)
    config = BillingConfig(
        issuer=issuer,
        currency=currency,
        time_zone=tz,
        payment_terms_days=number(doc, "payment_terms_days", "", 0, 365),
        taxes=taxes,
        suspended_rental_bp=number(doc, "suspended_rental_bp", "", 0, 10_000, 10_000),
        mask_destination_digits=number(doc, "mask_destination_digits", "", 0, 15, 0),
        discounts=tuple(discounts),
        volume_discounts=tuple(sorted(volume, key=lambda v: v.min_lines)),
        reconnection_fee_minor=number(doc, "reconnection_fee_minor", "", 0, 10**9, 0),
        prepaid_termination=str(policy),
        dunning=ladder,
        plan_tax_codes=codes["plans"],
        category_tax_codes=codes["categories"],
    )
    problems = merge(shape, problems)
    if problems:
        raise BillingConfigInvalid(problems)
    return config


def _objects(items: Any) -> list[dict[str, Any]]:
    """The items of a list the schema accepted; one it refused (pruned to null) reads as
    an empty object, whose fields the schema has named already."""
    return [item if isinstance(item, dict) else {} for item in items or []]
