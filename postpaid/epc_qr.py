"""The EPC QR code's payload for a SEPA credit transfer (EPC069-12, version 002). Pure.

A banking app that scans the code fills in a transfer: to whom, which account, how
much, with which reference. The payload is twelve lines joined by LF (trailing empty
lines left out), UTF-8, at most 331 bytes:

     1 BCD            service tag
     2 002            version
     3 1              character set: UTF-8
     4 SCT            SEPA credit transfer
     5 BIC            optional in version 002 (within the EEA), given when configured
     6 name           beneficiary, at most 70 characters
     7 IBAN
     8 EUR12.34       amount: EUR0.01 to EUR999999999.99, "." as decimal separator
     9 purpose        (empty)
    10 reference      structured creditor reference (ISO 11649), at most 35 characters
    11 remittance     unstructured text; empty when line 10 is given (one or the other)
    12 information    beneficiary to originator, at most 70 characters

The code itself is drawn with error correction level M (the standard's requirement).
"""

from __future__ import annotations

from dataclasses import dataclass

from reportlab.graphics.barcode import qrencoder

MAX_BYTES = 331
MAX_MINOR = 99_999_999_999  # EUR 999,999,999.99


@dataclass(frozen=True)
class Transfer:
    bic: str
    name: str
    iban: str
    amount_minor: int  # euro cents
    reference: str  # ISO 11649
    information: str = ""


def payload(t: Transfer) -> str:
    """The EPC069-12 text for ``t``; ``ValueError`` when the standard cannot carry it (an
    amount outside EUR 0.01-999,999,999.99, a name or text too long)."""
    if not 1 <= t.amount_minor <= MAX_MINOR:
        raise ValueError("an EPC transfer is for EUR 0.01 to EUR 999,999,999.99")
    name = t.name.strip()
    if not name or len(name) > 70:
        raise ValueError("the beneficiary name must be 1-70 characters")
    if len(t.reference) > 35 or len(t.information) > 70:
        raise ValueError("the reference is at most 35 characters, the information at most 70")
    euros, cents = divmod(t.amount_minor, 100)
    lines = [
        "BCD",
        "002",
        "1",
        "SCT",
        t.bic.replace(" ", ""),
        name,
        t.iban.replace(" ", ""),
        f"EUR{euros}.{cents:02d}",
        "",
        t.reference,
        "",
        t.information,
    ]
    text = "\n".join(lines).rstrip("\n")
    if len(text.encode()) > MAX_BYTES:
        raise ValueError(f"an EPC payload is at most {MAX_BYTES} bytes")
    return text


def modules(text: str) -> tuple[tuple[bool, ...], ...]:
    """The QR code of ``text``: dark (True) or light modules, row by row, without the
    quiet zone. Byte mode (UTF-8, the payload's character set 1) at error correction
    level M, the smallest version that holds it; reportlab's encoder, so invoices need no
    other library."""
    qr = qrencoder.QRCode(None, qrencoder.QRErrorCorrectLevel.M)
    qr.addData(qrencoder.QR8bitByte(text))
    qr.make()
    return tuple(tuple(bool(m) for m in row) for row in qr.modules)
