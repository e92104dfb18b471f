"""Payment references and bank accounts: ISO 11649 creditor references and ISO 13616 IBANs.

Both use the same check (ISO 7064 MOD 97-10): move the first four characters to the end,
replace each letter by two digits (A = 10 ... Z = 35), and the number is 1 modulo 97.
Pure functions over strings, no I/O.

An invoice's payment reference is the creditor reference of its number's letters and
digits (``INV-00000042`` -> ``RF19INV00000042``): a bank that knows the structured
reference passes it on unchanged, and the number can be read back from it.
"""

from __future__ import annotations

import re

REFERENCE_MAX = 21  # characters after "RF" and the two check digits (25 in all)
_ALNUM = re.compile(r"^[0-9A-Z]+$")
_IBAN = re.compile(r"^[A-Z]{2}[0-9]{2}[0-9A-Z]{11,30}$")


def _mod97(text: str) -> int:
    """``text`` (digits and capital letters) as the number ISO 7064 reads, modulo 97."""
    return int("".join(str(int(c, 36)) for c in text)) % 97


def creditor_reference(reference: str) -> str:
    """``RF`` + two check digits + ``reference`` (1-21 digits or letters, case ignored).

    The check digits are 98 - (reference + "RF00" read as a number mod 97), so that the
    whole reference, read from its fifth character round to its fourth, is 1 mod 97."""
    ref = reference.upper()
    if not 1 <= len(ref) <= REFERENCE_MAX or not _ALNUM.match(ref):
        raise ValueError(f"a creditor reference holds 1-{REFERENCE_MAX} letters or digits, not {reference!r}")
    return f"RF{98 - _mod97(ref + 'RF00'):02d}{ref}"


def is_creditor_reference(text: str) -> bool:
    """Whether ``text`` is a valid ISO 11649 reference (spaces allowed, as it is printed)."""
    ref = text.replace(" ", "").upper()
    if not ref.startswith("RF") or not 5 <= len(ref) <= 4 + REFERENCE_MAX or not _ALNUM.match(ref):
        return False
    return ref[2:4].isdigit() and _mod97(ref[4:] + ref[:4]) == 1


def invoice_reference(number: str) -> str:
    """The creditor reference of an invoice: its number without separators."""
    return creditor_reference("".join(c for c in number if c.isalnum()))


def grouped(reference: str) -> str:
    """In groups of four, as printed on a payment slip: ``RF18 5390 0754 7034``."""
    return " ".join(reference[i : i + 4] for i in range(0, len(reference), 4))


def iban_problem(iban: str) -> str:
    """What is wrong with an IBAN ("" when nothing): its shape or its check digits."""
    text = iban.replace(" ", "")
    if not _IBAN.match(text):
        return "must be two letters, two check digits and 11-30 letters or digits"
    if _mod97(text[4:] + text[:4]) != 1:
        return "check digits do not match"
    return ""
