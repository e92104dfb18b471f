"""Checking CRM applications: every bad field is named. No server."""

from __future__ import annotations

import copy
from datetime import date
from typing import Any

import pytest

from provisioning.applications import ApplicationInvalid, age_on, check_application, icao_check_digit

TODAY = date(2026, 11, 26)


def individual() -> dict[str, Any]:
    return {
        "customer_kind": "INDIVIDUAL",
        "contract": "POSTPAID",
        "applicant": {"given_name": "Anna-Lena", "family_name": "O'Brien", "date_of_birth": "1990-05-17"},
        "address": {"street": "Hauptstr. 1", "city": "Berlin", "postal_code": "10115", "country": "DE"},
        "contact": {"email": "anna@example.org", "phone": "491711234567"},
        "identity_document": {
            "type": "PASSPORT",
            "number": "L898902C36",
            "issuing_country": "DE",
            "expiry_date": "2030-01-01",
        },
    }


def corporate() -> dict[str, Any]:
    doc = individual()
    doc["customer_kind"] = "CORPORATE"
    doc["company"] = {"name": "Muster GmbH", "country": "DE", "registration_number": "HRB 12345"}
    return doc


@pytest.mark.parametrize(("text", "digit"), [("L898902C3", 6), ("T22000129", 3), ("<<<<<<<<<", 0), ("740812", 2)])
def test_icao_check_digits_from_the_specification(text: str, digit: int) -> None:
    assert icao_check_digit(text) == digit


@pytest.mark.parametrize(
    ("birth", "today", "age"),
    [
        (date(2008, 11, 26), TODAY, 18),
        (date(2008, 11, 27), TODAY, 17),
        (date(2008, 2, 29), date(2026, 2, 28), 17),
        (date(2008, 2, 29), date(2026, 3, 1), 18),
    ],
)
def test_age_in_whole_years(birth: date, today: date, age: int) -> None:
    assert age_on(birth, today) == age


def test_good_applications_pass() -> None:
    check_application(individual(), TODAY)
    check_application(corporate(), TODAY)


def set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for p in parents:
        doc = doc[p]
    if value is ...:
        del doc[last]
    else:
        doc[last] = value


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("applicant.given_name", "", "applicant.given_name"),
        ("applicant.family_name", "R2D2", "applicant.family_name"),
        ("applicant.date_of_birth", "17.05.1990", "applicant.date_of_birth"),
        ("applicant.date_of_birth", "2009-01-01", "applicant.date_of_birth"),  # 17: too young for postpaid
        ("applicant.date_of_birth", "2027-01-01", "applicant.date_of_birth"),
        ("applicant.date_of_birth", "1890-01-01", "applicant.date_of_birth"),
        ("address.postal_code", "1011", "address.postal_code"),
        ("address.country", "Germany", "address.country"),
        ("address.city", ..., "address.city"),
        ("contact.email", "anna@", "contact.email"),
        ("contact.phone", "+49 171", "contact.phone"),
        ("identity_document.number", "L898902C35", "identity_document.number"),
        ("identity_document.number", "L89890", "identity_document.number"),
        ("identity_document.type", "LIBRARY_CARD", "identity_document.type"),
        ("identity_document.expiry_date", "2026-11-25", "identity_document.expiry_date"),
        ("contract", "LEASE", "contract"),
        ("customer_kind", "ALIEN", "customer_kind"),
    ],
)
def test_each_bad_field_is_named(path: str, value: Any, field: str) -> None:
    doc = individual()
    set_path(doc, path, value)
    with pytest.raises(ApplicationInvalid) as err:
        check_application(doc, TODAY)
    assert field in [f for f, _ in err.value.problems]


def test_prepaid_admits_younger_applicants() -> None:
    doc = individual()
    doc["contract"] = "PREPAID"
    doc["applicant"]["date_of_birth"] = "2009-01-01"
    check_application(doc, TODAY)


def test_all_problems_are_reported_at_once() -> None:
    doc = corporate()
    doc["applicant"]["given_name"] = ""
    doc["contact"] = {}
    doc["identity_document"]["number"] = "L898902C35"
    doc["company"]["registration_number"] = "12345"
    with pytest.raises(ApplicationInvalid) as err:
        check_application(doc, TODAY)
    fields = [f for f, _ in err.value.problems]
    assert fields == ["applicant.given_name", "contact", "identity_document.number", "company.registration_number"]


def test_a_driving_licence_has_no_check_digit_to_verify() -> None:
    doc = copy.deepcopy(individual())
    doc["identity_document"].update(type="DRIVING_LICENCE", number="B072RRE2I55")
    check_application(doc, TODAY)
