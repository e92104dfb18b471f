"""Where things stand on the invoice PDF: text extracted with its position (pypdf), the QR
code found as an image on the page and read back module by module.

Positions are in mm from the top-left corner of the A4 sheet; the address window is
DIN 5008 form B (20 mm from the left, 45-90 mm from the top)."""

from __future__ import annotations

import dataclasses
import io
from datetime import UTC, date, datetime
from typing import Any

import pypdf
import pytest
from pypdf.generic import ContentStream

from charging.money import format_minor
from postpaid.compose import AccountBill, LineBill, compose
from postpaid.config import default
from postpaid.epc_qr import modules
from postpaid.invoices import Invoice, UsageItem
from postpaid.periods import period_at
from postpaid.render import QR_QUIET, render_html, render_pdf, render_text, tax_label
from postpaid.rentals import Change
from tests.samples import sample_invoice

MM = 72 / 25.4
PAGE_H = 841.89


def addressed(inv: Invoice) -> Invoice:
    return dataclasses.replace(
        inv,
        customer_name="Müller Logistik GmbH",
        customer_address=("Hafenstraße 12", "20457 Hamburg"),
        issuer_address=("Musterstrasse 1", "10115 Berlin"),
        issuer_tax_id="DE123456789",
        iban="DE89370400440532013000",
        bic="COBADEFFXXX",
        time_zone="Europe/Berlin",
    )


def placed_text(page: pypdf.PageObject) -> dict[str, tuple[float, float]]:
    """Each piece of text on the page with where it starts, (mm from left, mm from top)."""
    out: dict[str, tuple[float, float]] = {}

    def visit(text: str, cm: list[float], tm: list[float], _font: Any, _size: Any) -> None:
        text = text.strip()
        if not text:
            return
        x = tm[4] * cm[0] + tm[5] * cm[2] + cm[4]
        y = tm[4] * cm[1] + tm[5] * cm[3] + cm[5]
        out.setdefault(text, (x / MM, (PAGE_H - y) / MM))

    page.extract_text(visitor_text=visit)
    return out


def find(placed: dict[str, tuple[float, float]], start: str) -> tuple[float, float]:
    hits = [pos for text, pos in placed.items() if text.startswith(start)]
    assert hits, f"{start!r} not on the page: {sorted(placed)}"
    return min(hits, key=lambda pos: pos[1])  # the topmost (the footer repeats the title)


def image_place(reader: pypdf.PdfReader, page: pypdf.PageObject) -> tuple[str, list[float]]:
    """The one image drawn on the page: its XObject name and the matrix it is drawn with."""
    last_cm: list[float] = []
    drawn = []
    for operands, op in ContentStream(page.get_contents(), reader).operations:
        if op == b"cm":
            last_cm = [float(v) for v in operands]
        elif op == b"Do":
            drawn.append((str(operands[0]), last_cm))
    assert len(drawn) == 1, drawn
    return drawn[0]


def test_first_page_blocks_stand_where_an_envelope_and_a_reader_expect_them() -> None:
    inv = addressed(sample_invoice())
    reader = pypdf.PdfReader(io.BytesIO(render_pdf(inv)))
    placed = placed_text(reader.pages[0])

    # Letterhead: the issuer at the top, with its address and VAT id.
    x, top = find(placed, "Nordwind Telecom GmbH")
    assert 15 <= x <= 25 and 10 <= top <= 30
    x, top = find(placed, "Musterstrasse 1 · 10115 Berlin · VAT ID DE123456789")
    assert 10 <= top <= 35

    # The address window: return address, then name and postal address, left-aligned.
    window = [find(placed, t) for t in ("Müller Logistik GmbH", "Hafenstraße 12", "20457 Hamburg")]
    for x, top in window:
        assert 19.5 <= x <= 25 and 45 <= top <= 90
    assert [top for _, top in window] == sorted(top for _, top in window)
    x, top = find(placed, "Nordwind Telecom GmbH · Musterstrasse 1")
    assert 19.5 <= x <= 25 and 45 <= top < window[0][1]

    # The facts beside the window, never inside it.
    for label in ("Invoice number", "Billing account", "Billing period", "Due date"):
        x, top = find(placed, label)
        assert x >= 20 + 90 and 45 <= top <= 95
    assert find(placed, "2026-01-01 to 2026-01-31")[0] >= 110

    # Below the window: the title and the totals, amounts on the right.
    title = find(placed, "Invoice 2026-000123")
    total = find(placed, "Total due by 2026-02-15")
    amount = find(placed, format_minor(inv.total_due, "EUR"))
    assert 95 <= title[1] < total[1] <= 230
    assert amount[0] >= 150 and abs(amount[1] - total[1]) < 2

    # The payment slip at the foot: how much, the bank account and the reference.
    for label, value in (("IBAN", "DE89 3704 0044 0532 0130 00"), ("BIC", "COBADEFFXXX")):
        assert 235 <= find(placed, label)[1] <= 280
        assert find(placed, value)[1] == pytest.approx(find(placed, label)[1], abs=0.5)
    reference = find(placed, "RF")
    assert 235 <= reference[1] <= 280
    assert find(placed, f"Please transfer {format_minor(inv.total_due, 'EUR')} by 2026-02-15")[1] >= 235


def test_the_qr_code_is_on_the_slip_and_encodes_the_epc_transfer() -> None:
    inv = addressed(sample_invoice())
    reader = pypdf.PdfReader(io.BytesIO(render_pdf(inv)))
    page = reader.pages[0]
    _name, (a, b, c, d, e, f) = image_place(reader, page)
    # Square, at least 2 cm (the EPC's advice), right edge on the right margin, on the slip.
    assert b == c == 0 and a == d and a / MM >= 20
    assert (e + a) / MM == pytest.approx(210 - 18, abs=0.5)
    top = (PAGE_H - f - d) / MM
    assert 235 <= top and (PAGE_H - f) / MM <= 285

    # Read the code back: one pixel per module, inside a light quiet zone.
    (image,) = page.images
    assert image.image is not None
    pixels = image.image.convert("L")
    payload = (
        "BCD\n002\n1\nSCT\nCOBADEFFXXX\nNordwind Telecom GmbH\nDE89370400440532013000\n"
        f"EUR{inv.total_due // 100}.{inv.total_due % 100:02d}\n\n{inv.payment_reference}"
    )
    expected = modules(payload)
    n = len(expected)
    assert pixels.size == (n + 2 * QR_QUIET, n + 2 * QR_QUIET)
    read = tuple(tuple(pixels.getpixel((col + QR_QUIET, row + QR_QUIET)) == 0 for col in range(n)) for row in range(n))
    assert read == expected
    assert inv.payment_reference == "RF46 2026 0001 23".replace(" ", "")


def test_nothing_to_pay_draws_no_code() -> None:
    inv = dataclasses.replace(addressed(sample_invoice()), previous_balance=0, payments_received=10**6)
    assert inv.total_due < 0
    reader = pypdf.PdfReader(io.BytesIO(render_pdf(inv)))
    assert not reader.pages[0].images
    assert "Nothing to pay: a credit of" in reader.pages[0].extract_text()


def test_tax_lines_state_their_rate_once() -> None:
    inv = sample_invoice()
    older = dataclasses.replace(
        inv, taxes=tuple(dataclasses.replace(t, name=f"{t.name} 19%") if t.rate_bp else t for t in inv.taxes)
    )
    for text in (render_html(inv), render_text(inv), render_text(older)):
        assert "VAT 19 % on" in text or "VAT 19% on" in text
        assert "19% 19 %" not in text and "19 % 19 %" not in text


@pytest.mark.parametrize(
    ("name", "rate_bp", "label"),
    [
        ("VAT", 1900, "VAT 19 %"),
        ("VAT 19%", 1900, "VAT 19%"),
        ("VAT exempt", 0, "VAT exempt 0 %"),
        ("GST", 725, "GST 7.25 %"),
    ],
)
def test_tax_labels(name: str, rate_bp: int, label: str) -> None:
    assert tax_label(name, rate_bp) == label
    assert tax_label(default().taxes["standard"].name, 1900) == "VAT 19 %"


def test_itemised_times_are_local_and_say_so() -> None:
    inv = addressed(sample_invoice(usage_rows=0))
    at = datetime(2026, 1, 31, 23, 30, tzinfo=UTC)  # already 1 February in Berlin
    item = UsageItem(int(at.timestamp() * 1000), "SMS", "SMS", "+49 160 1XXXX", 1, "events", 90_000)
    inv = dataclasses.replace(inv, sections=(dataclasses.replace(inv.sections[0], usage=(item,)),))
    html = render_html(inv)
    assert "Date and time (Europe/Berlin)" in html and "2026-02-01 00:30" in html
    pdf = " ".join(" ".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(render_pdf(inv))).pages).split())
    assert "Date and time (Europe/Berlin)" in pdf and "2026-02-01 00:30" in pdf
    assert "(UTC)" not in pdf


def test_a_final_invoice_ends_on_the_day_of_termination() -> None:
    config = default()
    period = period_at(18, config.time_zone, 1_795_000_000)  # 18 Nov - 17 Dec 2026
    terminated = 1_795_000_000 + 5 * 86_400 + 3600  # 23 Nov 2026, 11:13 Berlin
    line = LineBill(
        "a1",
        "491701234567",
        "mobile-postpaid",
        [Change(1_795_000_000, "active", "mobile-postpaid"), Change(terminated, "terminated", "mobile-postpaid")],
        [],
        [],
    )
    final = compose(config, {}, {}, AccountBill("C1", "x", period, [line], kind="FINAL"), date(2026, 11, 23))
    regular = compose(config, {}, {}, AccountBill("C1", "x", period, [line]), date(2026, 12, 18))
    assert (final.period_start, final.period_end) == (date(2026, 11, 18), date(2026, 11, 23))
    assert regular.period_end == date(2026, 12, 17)


def test_compose_addresses_the_invoice_and_names_who_is_paid() -> None:
    config = default()
    period = period_at(18, config.time_zone, 1_795_000_000)
    bill = AccountBill("C7", "Customer 7", period, [], customer_name="Anna Muster", customer_address=("Hauptstr. 1",))
    inv = compose(config, {}, {}, bill, date(2026, 12, 18))
    assert (inv.customer_name, inv.customer_address) == ("Anna Muster", ("Hauptstr. 1",))
    assert inv.issuer_address == ("Musterstrasse 1", "10115 Berlin", "Germany")
    assert (inv.issuer_tax_id, inv.iban, inv.bic) == ("DE123456789", "DE89370400440532013000", "COBADEFFXXX")
    assert inv.time_zone == "Europe/Berlin"
    assert Invoice.from_json(inv.to_json()) == inv
