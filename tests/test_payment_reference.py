"""Payment references (ISO 11649), IBAN check digits (ISO 13616) and the EPC QR payload
(EPC069-12): pure functions, tables and properties."""

from __future__ import annotations

import string
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postpaid.epc_qr import MAX_BYTES, Transfer, modules, payload
from postpaid.payment_reference import (
    creditor_reference,
    grouped,
    iban_problem,
    invoice_reference,
    is_creditor_reference,
)

ALNUM = string.digits + string.ascii_uppercase


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("539007547034", "RF18539007547034"),  # the standard's example
        ("000000000539007547034", "RF18000000000539007547034"),  # leading zeros keep the check
        ("INV00000001", creditor_reference("inv00000001")),  # case does not matter
    ],
)
def test_check_digits_of_known_references(reference: str, expected: str) -> None:
    assert creditor_reference(reference) == expected


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("RF18539007547034", True),
        ("RF18 5390 0754 7034", True),  # as printed, in groups of four
        ("rf18539007547034", True),
        ("RF18000000000539007547034", True),
        ("RF19539007547034", False),  # wrong check digits
        ("RF18539007547043", False),  # two digits swapped
        ("RF18539007547035", False),  # one digit changed
        ("RF1853900754703", False),  # one digit missing
        ("XX18539007547034", False),
        ("RF1", False),
        ("RF18", False),
        ("RF18000000000000539007547034", False),  # longer than 25 characters
        ("RF18-539007547034", False),
        ("RFAB539007547034", False),
    ],
)
def test_validation_of_references(text: str, valid: bool) -> None:
    assert is_creditor_reference(text) is valid


@pytest.mark.parametrize("bad", ["", "INV-1", "Ä1", "1" * 22])
def test_what_cannot_be_a_reference_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        creditor_reference(bad)


def test_an_invoice_reference_is_its_number_without_separators() -> None:
    assert invoice_reference("INV-00000042") == creditor_reference("INV00000042")
    assert invoice_reference("INV-00000042") == "RF19INV00000042"  # as the README says
    assert grouped("RF18539007547034") == "RF18 5390 0754 7034"


@given(st.text(ALNUM, min_size=1, max_size=21))
def test_every_reference_made_is_valid(reference: str) -> None:
    made = creditor_reference(reference)
    assert is_creditor_reference(made) and is_creditor_reference(grouped(made))
    assert made[4:] == reference and len(made) <= 25


@given(st.text(ALNUM, min_size=1, max_size=21), st.data())
def test_one_changed_character_is_detected(reference: str, data: st.DataObject) -> None:
    """MOD 97-10 catches every substitution of a digit by a digit or a letter by a letter."""
    made = creditor_reference(reference)
    i = data.draw(st.integers(4, len(made) - 1))
    alphabet = string.digits if made[i].isdigit() else string.ascii_uppercase
    other = data.draw(st.sampled_from([c for c in alphabet if c != made[i]]))
    assert not is_creditor_reference(made[:i] + other + made[i + 1 :])


@pytest.mark.parametrize(
    ("iban", "problem"),
    [
        ("DE89370400440532013000", ""),
        ("DE89 3704 0044 0532 0130 00", ""),
        ("GB82WEST12345698765432", ""),
        ("NL91ABNA0417164300", ""),
        ("FR1420041010050500013M02606", ""),
        ("DE88370400440532013000", "check digits do not match"),
        ("DE89370400440532013001", "check digits do not match"),
        ("de89370400440532013000", "must be two letters, two check digits and 11-30 letters or digits"),
        ("DE8937040044", "must be two letters, two check digits and 11-30 letters or digits"),
    ],
)
def test_iban_check_digits(iban: str, problem: str) -> None:
    assert iban_problem(iban) == problem


TRANSFER = Transfer("COBADEFFXXX", "Example Telecom GmbH", "DE89 3704 0044 0532 0130 00", 28_755, "RF18539007547034")


def test_the_epc_payload_line_by_line() -> None:
    """EPC069-12 version 002: service tag, version, UTF-8, SCT, BIC, name, IBAN, amount,
    purpose, structured reference; trailing empty lines left out."""
    assert payload(TRANSFER).split("\n") == [
        "BCD",
        "002",
        "1",
        "SCT",
        "COBADEFFXXX",
        "Example Telecom GmbH",
        "DE89370400440532013000",
        "EUR287.55",
        "",
        "RF18539007547034",
    ]


@pytest.mark.parametrize(("minor", "text"), [(1, "EUR0.01"), (100, "EUR1.00"), (99_999_999_999, "EUR999999999.99")])
def test_epc_amounts_in_euro_with_a_point(minor: int, text: str) -> None:
    assert payload(replace(TRANSFER, amount_minor=minor)).split("\n")[7] == text


def test_epc_without_bic_and_with_information() -> None:
    lines = payload(replace(TRANSFER, bic="", information="Thank you")).split("\n")
    assert lines[4] == "" and lines[10] == "" and lines[11] == "Thank you" and len(lines) == 12


@pytest.mark.parametrize(
    "change",
    [
        {"amount_minor": 0},
        {"amount_minor": -5},
        {"amount_minor": 100_000_000_000},
        {"name": "x" * 71},
        {"name": "  "},
        {"reference": "R" * 36},
    ],
)
def test_what_the_epc_standard_cannot_carry_is_refused(change: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        payload(replace(TRANSFER, **change))  # type: ignore[arg-type]


def test_the_longest_payload_fits_and_its_code_is_small_enough() -> None:
    """At most 331 bytes, and the code at level M stays within version 13 (69 modules)."""
    longest = replace(TRANSFER, name="N" * 70, reference="RF18" + "9" * 21, information="I" * 70)
    text = payload(longest)
    assert len(text.encode()) <= MAX_BYTES
    assert len(modules(text)) <= 17 + 4 * 13
