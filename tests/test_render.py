"""Invoice rendering: exact figures from integers, escaped names, a real PDF read back with pypdf."""

from __future__ import annotations

import dataclasses
import io
import re
from datetime import UTC, datetime

import pypdf
import pytest
from hypothesis import given
from hypothesis import strategies as st

from charging.money import format_micros_4dp, format_minor
from postpaid.invoices import ADJUSTMENT, Charge, Invoice, LineSection, UsageItem
from postpaid.render import (
    format_quantity,
    format_rate,
    format_time,
    group_by_unit,
    render_html,
    render_pdf,
    render_text,
)
from tests.samples import sample_invoice

ROW_TIME = re.compile(r"\b\d{4}-\d{2}-\d{2} \d{2}:\d{2}\b")


def pdf_pages(data: bytes) -> list[str]:
    return [page.extract_text() for page in pypdf.PdfReader(io.BytesIO(data)).pages]


def hostile(inv: Invoice) -> Invoice:
    """The sample with markup and non-ASCII characters wherever a name can appear."""
    first = inv.sections[0]
    item = first.usage[0]._replace(destination="<img src=x onerror=alert(1)>")
    sections = (
        dataclasses.replace(
            first,
            product="<b>Unlimited</b> & Co",
            unit_path=("Société <Générale>", "Straße & Söhne"),
            usage=(item, *first.usage[1:]),
        ),
        *inv.sections[1:],
    )
    return dataclasses.replace(
        inv, sections=sections, customer_label="<script>alert('x')</script> Jürgen Müller & Söhne · Łódź"
    )


@pytest.mark.parametrize(
    ("minor", "text"),
    [
        (0, "0.00 EUR"),
        (5, "0.05 EUR"),
        (100, "1.00 EUR"),
        (123456, "1,234.56 EUR"),
        (-5, "-0.05 EUR"),
        (-123_456_789, "-1,234,567.89 EUR"),
        (100_000_000_000_00, "100,000,000,000.00 EUR"),
    ],
)
def test_money_from_minor_units(minor: int, text: str) -> None:
    assert format_minor(minor, "EUR") == text


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_money_text_reads_back_to_the_same_cents(minor: int) -> None:
    number = format_minor(minor, "EUR").removesuffix(" EUR")
    assert int(number.replace(",", "").replace(".", "")) == minor


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (0, "0.0000"),
        (187_549, "0.1875"),
        (187_550, "0.1876"),  # half away from zero
        (-187_550, "-0.1876"),
        (49, "0.0000"),
        (-49, "0.0000"),
        (-50, "-0.0001"),
        (1_234_567_890_000, "1,234,567.8900"),
    ],
)
def test_micros_to_four_decimals(micros: int, text: str) -> None:
    assert format_micros_4dp(micros) == text


@pytest.mark.parametrize(
    ("units", "unit", "text"),
    [
        (0, "s", "0:00 min"),
        (125, "s", "2:05 min"),
        (3725, "s", "62:05 min"),
        (1_048_576, "bytes", "1.00 MiB"),
        (5_242, "bytes", "0.00 MiB"),  # 0.004999 MiB
        (5_243, "bytes", "0.01 MiB"),  # 0.005000 MiB: half away from zero
        (3_221_225_472, "bytes", "3,072.00 MiB"),
        (3, "events", "3"),
        (12_000, "events", "12,000"),
        (1, "days", "1 day"),
        (31, "days", "31 days"),
        (0, "", ""),
    ],
)
def test_quantities(units: int, unit: str, text: str) -> None:
    assert format_quantity(units, unit) == text


def test_times_in_the_billing_time_zone_and_rates_from_basis_points() -> None:
    at = datetime(2026, 1, 5, 14, 3, 59, tzinfo=UTC)
    assert format_time(int(at.timestamp() * 1000), "UTC") == "2026-01-05 14:03"
    assert format_time(int(at.timestamp() * 1000), "Europe/Berlin") == "2026-01-05 15:03"  # CET, UTC+1
    summer = datetime(2026, 7, 31, 22, 30, tzinfo=UTC)  # CEST, UTC+2: the next local day
    assert format_time(int(summer.timestamp() * 1000), "Europe/Berlin") == "2026-08-01 00:30"
    assert [format_rate(bp) for bp in (1900, 550, 725, 0, 2000)] == ["19 %", "5.5 %", "7.25 %", "0 %", "20 %"]


def test_corporate_lines_group_by_unit_parents_first() -> None:
    def line(name: str, *path: str) -> LineSection:
        return LineSection(name, "p", (), (), path)

    groups = group_by_unit([line("a", "Acme", "Sales"), line("b", "Acme"), line("c", "Acme", "Sales"), line("d")])
    assert [(path, [s.line for s in lines]) for path, lines in groups] == [
        ((), ["d"]),
        (("Acme",), ["b"]),
        (("Acme", "Sales"), ["a", "c"]),
    ]


def test_html_shows_the_figures_of_the_sample() -> None:
    inv = sample_invoice()
    html = render_html(inv)
    for text in (
        "Invoice 2026-000123",
        "Nordwind Telecom GmbH",
        "BA-7700-4412",
        "2026-01-01 to 2026-01-31",
        "2026-02-01",
        "Total due by 2026-02-15",
        format_minor(inv.total_due, "EUR"),
        format_minor(inv.total, "EUR"),
        format_minor(inv.net_total, "EUR"),
        "-100.00 EUR",  # payments received
        "VAT 19 % on",
        "VAT exempt 0 % on 2.50 EUR",
        "Unit: Müller Logistik GmbH / Hamburg Depot",
        "Subtotal unit Müller Logistik GmbH / Vertrieb München",
        "Subtotal line +49 170 1000003",
        "Late payment fee (invoice 2025-000871)",
    ):
        assert text in html, text
    for tax in inv.taxes:
        assert format_minor(tax.amount, "EUR") in html
    for section in inv.sections:
        assert format_minor(section.subtotal, "EUR") in html
    assert len(ROW_TIME.findall(html)) == 60
    assert html.count("Total itemised usage") == 3


def test_html_escapes_markup_in_names() -> None:
    html = render_html(hostile(sample_invoice()))
    for raw in ("<script>", "<b>Unlimited", "<img src=x", "<Générale>"):
        assert raw not in html
    for escaped in (
        "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; Jürgen Müller &amp; Söhne · Łódź",
        "&lt;b&gt;Unlimited&lt;/b&gt; &amp; Co",
        "&lt;img src=x onerror=alert(1)&gt;",
        "Société &lt;Générale&gt; / Straße &amp; Söhne",
    ):
        assert escaped in html


def test_empty_invoice_renders() -> None:
    inv = dataclasses.replace(sample_invoice(), sections=(), account_charges=(), taxes=(), previous_balance=0)
    html = render_html(inv)
    assert "No lines on this invoice." in html
    assert "Account charges" not in html
    text = "\n".join(pdf_pages(render_pdf(inv)))
    assert "No lines on this invoice." in text
    assert "-100.00 EUR" in text  # the payment still shows, and the total due is a credit


def test_a_line_without_charges_or_usage_says_so() -> None:
    inv = sample_invoice()
    idle = LineSection("+49 170 1000009", "Business Mobile S", (), (), ("Müller Logistik GmbH", "Hamburg Depot"))
    inv = dataclasses.replace(inv, sections=(*inv.sections, idle))
    for text in (render_html(inv), "\n".join(pdf_pages(render_pdf(inv)))):
        assert "No charges in this period." in text
        assert "No usage recorded in this period." in text


def test_pdf_is_a4_and_carries_the_figures() -> None:
    inv = hostile(sample_invoice())
    data = render_pdf(inv)
    assert data.startswith(b"%PDF-")
    assert data.rstrip().endswith(b"%%EOF")
    reader = pypdf.PdfReader(io.BytesIO(data))
    box = reader.pages[0].mediabox
    assert (round(float(box.width)), round(float(box.height))) == (595, 842)
    assert reader.metadata is not None and reader.metadata.title == "Invoice 2026-000123"
    first = reader.pages[0].extract_text()
    for text in (
        "Invoice 2026-000123",
        "BA-7700-4412",
        "2026-01-01 to 2026-01-31",
        format_minor(inv.total_due, "EUR"),
        format_minor(inv.total, "EUR"),
        "VAT 19 % on",
    ):
        assert text in first, text
    everything = "\n".join(page.extract_text() for page in reader.pages)
    # Markup in names is printed as it is, never interpreted (a long name wraps in the window).
    assert "Jürgen Müller & Söhne · Łódź" in " ".join(everything.split())
    assert "<b>Unlimited</b> & Co" in everything
    assert "Société <Générale> / Straße & Söhne" in everything
    assert len(ROW_TIME.findall(everything)) == 60
    assert render_pdf(inv) == data  # the same invoice gives the same bytes


def test_usage_reconciles_with_the_usage_charges() -> None:
    inv = sample_invoice(usage_rows=90)
    text = "\n".join(pdf_pages(render_pdf(inv)))
    for section in inv.sections:
        assert format_micros_4dp(sum(u.cost_micros for u in section.usage)) in text


def test_a_long_itemised_list_runs_over_pages_with_headers_and_numbers() -> None:
    inv = sample_invoice(usage_rows=2000)
    pages = pdf_pages(render_pdf(inv))
    n = len(pages)
    assert n > 20
    for i, text in enumerate(pages, start=1):
        assert f"Page {i} of {n}" in text
        assert "Invoice 2026-000123" in text
    itemised = [text for text in pages if ROW_TIME.search(text)]
    assert len(itemised) > 20
    assert all("Date and time" in text and "Destination" in text for text in itemised)  # repeated header
    assert sum(len(ROW_TIME.findall(text)) for text in pages) == 2000  # no row lost or doubled at a break
    assert "\n".join(pages).count("Total itemised usage") == 3


def test_final_invoice_and_text_summary() -> None:
    inv = dataclasses.replace(
        sample_invoice(),
        kind="FINAL",
        account_charges=(Charge(ADJUSTMENT, "Credit for unused days", -1234, 12, "days"),),
    )
    text = render_text(inv)
    assert text.startswith("Final invoice 2026-000123 from Nordwind Telecom GmbH")
    assert f"Total due by 2026-02-15: {format_minor(inv.total_due, 'EUR')}" in text
    html = render_html(inv)
    assert "Final invoice 2026-000123" in html
    assert "Credit for unused days" in html and "12 days" in html and "-12.34 EUR" in html


def test_itemised_rows_in_time_order() -> None:
    inv = sample_invoice(usage_rows=0)
    late = UsageItem(1_767_600_000_000, "SMS", "SMS", "+49 160 1XXXX", 1, "events", 90_000)
    early = late._replace(at_ms=1_767_300_000_000, destination="+49 160 2XXXX")
    sections = (dataclasses.replace(inv.sections[0], usage=(late, early)), *inv.sections[1:])
    html = render_html(dataclasses.replace(inv, sections=sections))
    assert html.index("+49 160 2XXXX") < html.index("+49 160 1XXXX")
