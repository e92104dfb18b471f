"""Checking a CRM application, field by field. Pure: "today" is a parameter.

An application is a JSON-like document for an individual or a corporate customer. Every
problem is reported with the field it concerns (``applicant.date_of_birth``,
``identity_document.number``, ...), all at once, so a CRM can show them next to its form.

Identity document numbers are checked with their check digits where the document type
has one: passports and ID cards use the ICAO 9303 check digit (weights 7, 3, 1 over the
machine-readable characters).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

NAME = re.compile(r"^[^\W\d_](?:[^\W\d_]|[ '\-.])*$")
EMAIL = re.compile(r"^[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9\-]+(\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}$")
E164 = re.compile(r"^[1-9][0-9]{5,14}$")
COUNTRY = re.compile(r"^[A-Z]{2}$")
POSTAL_CODES = {
    "DE": re.compile(r"^[0-9]{5}$"),
    "FR": re.compile(r"^[0-9]{5}$"),
    "ES": re.compile(r"^[0-9]{5}$"),
    "IT": re.compile(r"^[0-9]{5}$"),
    "AT": re.compile(r"^[0-9]{4}$"),
    "NL": re.compile(r"^[0-9]{4} ?[A-Z]{2}$"),
    "GB": re.compile(r"^[A-Z]{1,2}[0-9][A-Z0-9]? ?[0-9][A-Z]{2}$"),
    "US": re.compile(r"^[0-9]{5}(-[0-9]{4})?$"),
    "KE": re.compile(r"^[0-9]{5}$"),
}
DOCUMENT_TYPES = ("PASSPORT", "NATIONAL_ID", "DRIVING_LICENCE", "RESIDENCE_PERMIT")
ICAO_DOCUMENTS = {"PASSPORT", "NATIONAL_ID", "RESIDENCE_PERMIT"}
MRZ_NUMBER = re.compile(r"^[A-Z0-9<]{9}[0-9]$")
COMPANY_REGISTRATION = {
    "DE": re.compile(r"^(HRA|HRB|GnR|PR|VR) ?[0-9]{1,6}( ?[A-Z]{1,2})?$"),
    "GB": re.compile(r"^([0-9]{8}|(SC|NI|OC|SO|NC)[0-9]{6})$"),
    "FR": re.compile(r"^[0-9]{9}$"),
}
CUSTOMER_KINDS = ("INDIVIDUAL", "CORPORATE")
CONTRACTS = ("PREPAID", "POSTPAID")


@dataclass(frozen=True)
class AgeRules:
    """Minimum ages, by contract: a postpaid contract is a credit agreement."""

    prepaid: int = 16
    postpaid: int = 18
    oldest: int = 120


@dataclass
class Problems:
    items: list[tuple[str, str]] = field(default_factory=list)

    def add(self, field_name: str, message: str) -> None:
        self.items.append((field_name, message))


class ApplicationInvalid(ValueError):
    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{f}: {m}" for f, m in problems))
        self.problems = problems


def icao_check_digit(text: str) -> int:
    """ICAO 9303 check digit: digits as themselves, A-Z as 10-35, '<' as 0, weights 7, 3, 1."""
    total = 0
    for i, ch in enumerate(text):
        if ch.isdigit():
            value = int(ch)
        elif "A" <= ch <= "Z":
            value = ord(ch) - ord("A") + 10
        else:
            value = 0
        total += value * (7, 3, 1)[i % 3]
    return total % 10


def age_on(birth: date, today: date) -> int:
    """Whole years completed on ``today`` (29 February birthdays count on 1 March)."""
    years = today.year - birth.year
    if (today.month, today.day) < (birth.month, birth.day):
        years -= 1
    return years


def _text(doc: Mapping[str, Any], key: str, where: str, problems: Problems, *, limit: int = 128) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value.strip():
        problems.add(f"{where}.{key}", "is required")
        return ""
    if len(value) > limit:
        problems.add(f"{where}.{key}", f"at most {limit} characters")
    return value.strip()


def _date(doc: Mapping[str, Any], key: str, where: str, problems: Problems) -> date | None:
    value = doc.get(key)
    try:
        if not isinstance(value, str):
            raise ValueError
        return date.fromisoformat(value)
    except ValueError:
        problems.add(f"{where}.{key}", "must be a date YYYY-MM-DD")
        return None


def check_person(doc: Any, where: str, problems: Problems, today: date, min_age: int, rules: AgeRules) -> None:
    if not isinstance(doc, Mapping):
        problems.add(where, "is required")
        return
    for key in ("given_name", "family_name"):
        name = _text(doc, key, where, problems, limit=64)
        if name and not NAME.match(name):
            problems.add(f"{where}.{key}", "letters, spaces, hyphens, apostrophes and dots only")
    birth = _date(doc, "date_of_birth", where, problems)
    if birth is not None:
        if birth > today:
            problems.add(f"{where}.date_of_birth", "is in the future")
        elif age_on(birth, today) < min_age:
            problems.add(f"{where}.date_of_birth", f"the applicant must be at least {min_age} for this contract")
        elif age_on(birth, today) > rules.oldest:
            problems.add(f"{where}.date_of_birth", "is not plausible")


def check_address(doc: Any, where: str, problems: Problems) -> None:
    if not isinstance(doc, Mapping):
        problems.add(where, "is required")
        return
    for key in ("street", "city"):
        _text(doc, key, where, problems)
    country = doc.get("country")
    if not isinstance(country, str) or not COUNTRY.match(country):
        problems.add(f"{where}.country", "must be an ISO 3166 alpha-2 code such as DE")
        return
    postal = _text(doc, "postal_code", where, problems, limit=16)
    pattern = POSTAL_CODES.get(country)
    if postal and pattern is not None and not pattern.match(postal.upper()):
        problems.add(f"{where}.postal_code", f"is not a postal code of {country}")


def check_contact(doc: Any, where: str, problems: Problems) -> None:
    if not isinstance(doc, Mapping):
        problems.add(where, "is required")
        return
    email = doc.get("email")
    if email is not None and (not isinstance(email, str) or not EMAIL.match(email)):
        problems.add(f"{where}.email", "is not an email address")
    phone = doc.get("phone")
    if phone is not None and (not isinstance(phone, str) or not E164.match(phone)):
        problems.add(f"{where}.phone", "must be an E.164 number of 6-15 digits without '+'")
    if email is None and phone is None:
        problems.add(where, "needs an email or a phone number")


def check_document(doc: Any, where: str, problems: Problems, today: date) -> None:
    if not isinstance(doc, Mapping):
        problems.add(where, "is required")
        return
    kind = doc.get("type")
    if kind not in DOCUMENT_TYPES:
        problems.add(f"{where}.type", "must be one of " + ", ".join(DOCUMENT_TYPES))
    number = _text(doc, "number", where, problems, limit=32).upper()
    if number and kind in ICAO_DOCUMENTS:
        if not MRZ_NUMBER.match(number):
            problems.add(f"{where}.number", "must be 9 characters A-Z 0-9 followed by the check digit")
        elif icao_check_digit(number[:9]) != int(number[9]):
            problems.add(f"{where}.number", "check digit does not match")
    country = doc.get("issuing_country")
    if not isinstance(country, str) or not COUNTRY.match(country):
        problems.add(f"{where}.issuing_country", "must be an ISO 3166 alpha-2 code")
    expiry = _date(doc, "expiry_date", where, problems)
    if expiry is not None and expiry < today:
        problems.add(f"{where}.expiry_date", "the document has expired")


def check_company(doc: Any, where: str, problems: Problems) -> None:
    if not isinstance(doc, Mapping):
        problems.add(where, "is required")
        return
    _text(doc, "name", where, problems)
    country = doc.get("country")
    if not isinstance(country, str) or not COUNTRY.match(country):
        problems.add(f"{where}.country", "must be an ISO 3166 alpha-2 code")
        return
    registration = _text(doc, "registration_number", where, problems, limit=32)
    pattern = COMPANY_REGISTRATION.get(country)
    if registration and pattern is not None and not pattern.match(registration.upper()):
        problems.add(f"{where}.registration_number", f"is not a company registration number of {country}")


def check_application(doc: Any, today: date, rules: AgeRules | None = None) -> None:
    """Raise ``ApplicationInvalid`` listing every problem of an application document."""
    rules = rules or AgeRules()
    problems = Problems()
    if not isinstance(doc, Mapping):
        raise ApplicationInvalid([("application", "must be an object")])
    kind = doc.get("customer_kind")
    if kind not in CUSTOMER_KINDS:
        problems.add("customer_kind", "must be INDIVIDUAL or CORPORATE")
    contract = doc.get("contract")
    if contract not in CONTRACTS:
        problems.add("contract", "must be PREPAID or POSTPAID")
    min_age = rules.postpaid if contract == "POSTPAID" else rules.prepaid
    # The applicant is the person who signs: the customer, or the company's representative.
    check_person(doc.get("applicant"), "applicant", problems, today, min_age, rules)
    check_address(doc.get("address"), "address", problems)
    check_contact(doc.get("contact"), "contact", problems)
    check_document(doc.get("identity_document"), "identity_document", problems, today)
    if kind == "CORPORATE":
        check_company(doc.get("company"), "company", problems)
    if problems.items:
        raise ApplicationInvalid(problems.items)


def customer_name(doc: Mapping[str, Any]) -> str:
    """Who a checked application's customer is, as invoices address it: the company's
    name, or the applicant's given and family name."""
    if doc.get("customer_kind") == "CORPORATE":
        return str(doc["company"]["name"]).strip()
    person = doc["applicant"]
    return f"{str(person['given_name']).strip()} {str(person['family_name']).strip()}"
