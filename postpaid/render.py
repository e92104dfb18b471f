"""Invoices as a customer reads them: HTML (Jinja2) and PDF (reportlab), from one view.

``invoice_view`` turns an ``Invoice`` into formatted strings once (money, quantities, dates,
the grouping of corporate lines by unit), so the HTML and the PDF always show the same
figures. Money is formatted by ``charging/money.py`` (integer arithmetic only): amounts
in minor units become "1,234.56 EUR" (``format_minor``), itemised costs in micros are
shown to 4 decimals rounded half away from zero (``format_micros_4dp``). Data volumes are
in binary units, labelled as such (1 MiB = 1,048,576 bytes, as the catalog counts them).
Times are shown in the invoice's billing time zone, which the itemised list names.

The PDF's first page is laid out for a window envelope (DIN 5008, form B): the return
address and the recipient in the address window (20 mm from the left, 45-90 mm from the
top), the invoice facts beside it, the summary below, and at the foot the payment
details with an EPC QR code for a SEPA credit transfer (``epc_qr.py``).
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

import jinja2
from PIL import Image
from reportlab.lib import colors
from reportlab.lib.enums import TA_RIGHT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.lib.utils import ImageReader, simpleSplit
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (
    BaseDocTemplate,
    Flowable,
    Frame,
    NextPageTemplate,
    PageBreak,
    PageTemplate,
    Paragraph,
    Spacer,
    Table,
    TableStyle,
)

from charging.money import format_micros_4dp, format_minor, share
from postpaid import epc_qr
from postpaid.invoices import (
    CATEGORY_NAMES,
    Charge,
    Invoice,
    LineSection,
)
from postpaid.payment_reference import grouped

BYTES_PER_MIB = 1_048_576  # as the catalog counts a megabyte of data: a mebibyte


def format_quantity(units: int, unit: str) -> str:
    """Seconds as m:ss, bytes as MiB to 2 decimals (half away from zero), events as a count."""
    if unit == "s":
        minutes, seconds = divmod(units, 60)
        return f"{minutes:,}:{seconds:02d} min"
    if unit == "bytes":
        hundredths = share(units, 100, BYTES_PER_MIB)
        return f"{hundredths // 100:,}.{hundredths % 100:02d} MiB"
    if unit == "events":
        return f"{units:,}"
    if unit == "days":
        return f"{units} day" if units == 1 else f"{units} days"
    return f"{units:,} {unit}" if unit else ""


def format_time(at_ms: int, time_zone: str) -> str:
    """The local time in ``time_zone`` to the minute (the invoice's billing time zone)."""
    return datetime.fromtimestamp(at_ms // 1000, tz=_zone(time_zone)).strftime("%Y-%m-%d %H:%M")


@functools.lru_cache(maxsize=16)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def tax_label(name: str, rate_bp: int) -> str:
    """A tax line's label: its name and rate ("VAT 19 %"); a name that states a rate
    itself ("VAT 19%", as older settings had it) is not given it a second time."""
    return name if "%" in name else f"{name} {format_rate(rate_bp)}"


def format_rate(rate_bp: int) -> str:
    """Basis points as a percentage: 1900 -> "19 %", 550 -> "5.5 %", 725 -> "7.25 %"."""
    whole, fraction = divmod(rate_bp, 100)
    return f"{whole}.{fraction:02d}".rstrip("0") + " %" if fraction else f"{whole} %"


@dataclass(frozen=True)
class SummaryRow:
    label: str
    amount: str
    strong: bool = False


@dataclass(frozen=True)
class LineView:
    line: str
    product: str
    charges: list[tuple[str, str, str]]  # description, quantity, amount
    subtotal: str


@dataclass(frozen=True)
class GroupView:
    label: str  # "" for lines outside any corporate unit
    lines: list[LineView]
    subtotal: str


@dataclass(frozen=True)
class ItemisedView:
    line: str
    count: str
    rows: list[tuple[str, str, str, str, str, str]]  # when, service, type, destination, quantity, cost
    total: str


@dataclass(frozen=True)
class PaymentView:
    """How to pay: the sentence, the bank details as (label, value) rows, and the EPC QR
    code's payload ("" when there is no code: nothing to pay, no IBAN, not EUR)."""

    request: str
    rows: list[tuple[str, str]]
    qr_payload: str


@dataclass(frozen=True)
class InvoiceView:
    title: str
    facts: list[tuple[str, str]]
    summary: list[SummaryRow]
    groups: list[GroupView]
    account_charges: list[tuple[str, str, str]]
    account_subtotal: str
    itemised: list[ItemisedView]
    recipient: list[str]  # the address window: name, then postal lines
    sender: list[str]  # the issuer: name, address lines, VAT id
    payment: PaymentView
    time_zone: str


def group_by_unit(sections: Iterable[LineSection]) -> list[tuple[tuple[str, ...], list[LineSection]]]:
    """Sections grouped by ``unit_path``, parents before children, lines in invoice order within a unit."""
    groups: dict[tuple[str, ...], list[LineSection]] = {}
    for s in sections:
        groups.setdefault(s.unit_path, []).append(s)
    return sorted(groups.items())


def invoice_view(inv: Invoice) -> InvoiceView:
    cur = inv.currency

    def money(minor: int) -> str:
        return format_minor(minor, cur)

    def charge_rows(charges: Iterable[Charge]) -> list[tuple[str, str, str]]:
        return [(c.description, format_quantity(c.quantity, c.unit), money(c.amount)) for c in charges]

    summary = [
        SummaryRow("Previous balance", money(inv.previous_balance)),
        SummaryRow("Payments received", money(-inv.payments_received)),
        SummaryRow("Current charges (net)", money(inv.net_total)),
        *(SummaryRow(f"{tax_label(t.name, t.rate_bp)} on {money(t.base)}", money(t.amount)) for t in inv.taxes),
        SummaryRow("Total of this invoice", money(inv.total), strong=True),
        SummaryRow(f"Total due by {inv.due.isoformat()}", money(inv.total_due), strong=True),
    ]
    grouped = group_by_unit(inv.sections)
    groups = [
        GroupView(
            label=" / ".join(path),
            lines=[LineView(s.line, s.product, charge_rows(s.charges), money(s.subtotal)) for s in sections],
            subtotal=money(sum(s.subtotal for s in sections)),
        )
        for path, sections in grouped
    ]
    itemised = []
    for s in (s for _, sections in grouped for s in sections):  # lines in the order of their charges
        items = sorted(s.usage, key=lambda u: u.at_ms)
        rows = [
            (
                format_time(u.at_ms, inv.time_zone),
                u.service,
                CATEGORY_NAMES.get(u.category, u.category),
                u.destination,
                format_quantity(u.units, u.unit),
                format_micros_4dp(u.cost_micros),
            )
            for u in items
        ]
        count = "1 record" if len(rows) == 1 else f"{len(rows):,} records"
        itemised.append(ItemisedView(s.line, count, rows, format_micros_4dp(sum(u.cost_micros for u in items))))
    return InvoiceView(
        title="Final invoice" if inv.kind == "FINAL" else "Invoice",
        facts=[
            ("Invoice number", inv.number),
            ("Customer", inv.customer_name or inv.customer_label),
            ("Billing account", inv.billing_account),
            ("Billing period", f"{inv.period_start.isoformat()} to {inv.period_end.isoformat()}"),
            ("Issue date", inv.issued.isoformat()),
            ("Due date", inv.due.isoformat()),
        ],
        summary=summary,
        groups=groups,
        account_charges=charge_rows(inv.account_charges),
        account_subtotal=money(sum(c.amount for c in inv.account_charges)),
        itemised=itemised,
        recipient=[inv.customer_name or inv.customer_label, *inv.customer_address],
        sender=[
            inv.issuer,
            *inv.issuer_address,
            *((f"VAT ID {inv.issuer_tax_id}",) if inv.issuer_tax_id else ()),
        ],
        payment=payment_view(inv),
        time_zone=inv.time_zone,
    )


def payment_view(inv: Invoice) -> PaymentView:
    """What the customer is asked to pay and where to (the EPC QR code carries the same)."""
    due = inv.total_due
    reference = inv.payment_reference
    rows = [("Account holder", inv.issuer)]
    if inv.iban:
        rows.append(("IBAN", grouped(inv.iban)))
    if inv.bic:
        rows.append(("BIC", inv.bic))
    if reference:
        rows.append(("Payment reference", grouped(reference)))
    if due <= 0:
        request = "Nothing to pay: " + (
            f"a credit of {format_minor(-due, inv.currency)} is carried forward." if due else "the account is settled."
        )
        return PaymentView(request, [], "")
    request = f"Please transfer {format_minor(due, inv.currency)} by {inv.due.isoformat()}"
    request += ", quoting the payment reference." if reference else "."
    payload = ""
    if inv.iban and reference and inv.currency == "EUR":
        try:
            payload = epc_qr.payload(epc_qr.Transfer(inv.bic, inv.issuer, inv.iban, due, reference))
        except ValueError:
            payload = ""  # more than the standard carries: the details above still say it all
    return PaymentView(request, rows, payload)


# --- HTML ---------------------------------------------------------------------------------

_jinja = jinja2.Environment(
    loader=jinja2.PackageLoader("postpaid", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render_html(inv: Invoice) -> str:
    view = invoice_view(inv)
    return _jinja.get_template("invoice.html").render(inv=inv, **vars(view))


def render_text(inv: Invoice) -> str:
    """A short plain-text summary, for the text part of an email that carries the PDF."""
    view = invoice_view(inv)
    lines = [f"{view.title} {inv.number} from {inv.issuer}", ""]
    lines += [f"{label}: {value}" for label, value in view.facts]
    lines += ["", *(f"{row.label}: {row.amount}" for row in view.summary), ""]
    lines += [view.payment.request, *(f"{label}: {value}" for label, value in view.payment.rows), ""]
    lines += ["The complete invoice is attached as a PDF.", ""]
    return "\n".join(lines)


# --- PDF ----------------------------------------------------------------------------------

# DejaVu covers most scripts; reportlab's bundled Vera (Latin-1 and a few more) is the fallback.
_FONT_FILES = (
    ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"),
    ("Vera.ttf", "VeraBd.ttf"),
)
_BLUE = colors.HexColor("#1f4e79")
_HEAD = colors.HexColor("#e8eef4")
_ZEBRA = colors.HexColor("#f7f9fb")
_RULE = colors.HexColor("#9aa9b8")


@functools.cache
def _fonts() -> tuple[str, str]:
    for regular, bold in _FONT_FILES:
        if regular.startswith("/") and not (Path(regular).exists() and Path(bold).exists()):
            continue
        pdfmetrics.registerFont(TTFont("InvoiceSans", regular))
        pdfmetrics.registerFont(TTFont("InvoiceSans-Bold", bold))
        pdfmetrics.registerFontFamily("InvoiceSans", normal="InvoiceSans", bold="InvoiceSans-Bold")
        return "InvoiceSans", "InvoiceSans-Bold"
    raise RuntimeError("no font for invoices")  # unreachable: Vera ships with reportlab


class _Styles:
    def __init__(self) -> None:
        self.font, self.bold = _fonts()
        base = ParagraphStyle("body", fontName=self.font, fontSize=9, leading=11.5)
        self.body = base
        self.strong = ParagraphStyle("strong", base, fontName=self.bold)
        self.issuer = ParagraphStyle("issuer", base, fontName=self.bold, fontSize=15, leading=19, textColor=_BLUE)
        self.title = ParagraphStyle("title", self.issuer, alignment=TA_RIGHT, textColor=colors.black)
        self.title_left = ParagraphStyle("title_left", self.issuer, textColor=colors.black, spaceAfter=2)
        self.h2 = ParagraphStyle(
            "h2", base, fontName=self.bold, fontSize=12, leading=15, textColor=_BLUE, spaceBefore=12, spaceAfter=4
        )
        self.h3 = ParagraphStyle("h3", base, fontName=self.bold, fontSize=10, leading=13, spaceBefore=8, spaceAfter=3)
        self.empty = ParagraphStyle("empty", base, textColor=colors.HexColor("#666666"))
        self.small_head = ParagraphStyle("small_head", base, fontName=self.bold, fontSize=7.5, leading=9)
        self.small_head_right = ParagraphStyle("small_head_right", self.small_head, alignment=TA_RIGHT)
        self.head_right = ParagraphStyle("head_right", self.strong, alignment=TA_RIGHT)
        for heading in (self.h2, self.h3):
            heading.keepWithNext = True


def _p(text: str, style: ParagraphStyle) -> Paragraph:
    return Paragraph(escape(text), style)  # names may contain markup characters: never interpret them


def _fit(text: str, font: str, size: float, width: float) -> str:
    """Cut a one-line cell to its column with an ellipsis, so it never runs into the next one."""
    if pdfmetrics.stringWidth(text, font, size) <= width:
        return text
    while text and pdfmetrics.stringWidth(text + "…", font, size) > width:
        text = text[:-1]
    return text + "…"


class _NumberedCanvas(Canvas):
    """Holds every page until the end so each footer can say "page n of N"."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held: list[dict[str, Any]] = []

    def showPage(self) -> None:
        self._held.append(dict(self.__dict__))
        self._startPage()  # type: ignore[attr-defined]  # reportlab: begin a fresh page, not in the stubs

    def save(self) -> None:
        total = len(self._held)
        for number, state in enumerate(self._held, start=1):
            self.__dict__.update(state)
            self.setFont(_fonts()[0], 7.5)
            self.setFillColor(colors.HexColor("#555555"))
            self.drawRightString(A4[0] - 18 * mm, 10 * mm, f"Page {number} of {total}")
            super().showPage()
        super().save()


_CONTENT_WIDTH = A4[0] - 36 * mm
_CHARGE_WIDTHS = (_CONTENT_WIDTH - 70 * mm, 30 * mm, 40 * mm)
_ITEM_WIDTHS = (27 * mm, 23 * mm, 28 * mm, 50 * mm, 24 * mm, _CONTENT_WIDTH - 152 * mm)


def _grid(st: _Styles, header: bool, footer: bool, rows: int, zebra: bool = False) -> TableStyle:
    cmds: list[Any] = [
        ("FONT", (0, 0), (-1, -1), st.font, 9),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("LEFTPADDING", (0, 0), (-1, -1), 3),
        ("RIGHTPADDING", (0, 0), (-1, -1), 3),
        ("TOPPADDING", (0, 0), (-1, -1), 2),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
    ]
    if header:
        cmds += [
            ("FONT", (0, 0), (-1, 0), st.bold, 9),
            ("BACKGROUND", (0, 0), (-1, 0), _HEAD),
            ("LINEBELOW", (0, 0), (-1, 0), 0.6, _RULE),
        ]
    if zebra and rows > 2:
        cmds.append(("ROWBACKGROUNDS", (0, 1), (-1, -2 if footer else -1), [colors.white, _ZEBRA]))
    if footer:
        cmds += [("FONT", (0, -1), (-1, -1), st.bold, 9), ("LINEABOVE", (0, -1), (-1, -1), 0.6, _RULE)]
    return TableStyle(cmds)


def _charges_table(st: _Styles, rows: list[tuple[str, str, str]], total_label: str, total: str) -> Flowable:
    if not rows:
        return _p("No charges in this period.", st.empty)
    data: list[list[Any]] = [[_p("Description", st.strong), _p("Quantity", st.head_right), _p("Amount", st.head_right)]]
    data += [[_p(d, st.body), q, a] for d, q, a in rows]
    data.append([_p(total_label, st.strong), "", total])
    t = Table(data, colWidths=_CHARGE_WIDTHS, repeatRows=1, hAlign="LEFT")
    t.setStyle(_grid(st, header=True, footer=True, rows=len(data)))
    t.setStyle(TableStyle([("ALIGN", (1, 0), (-1, -1), "RIGHT")]))
    return t


class _PagedRows(Flowable):
    """Itemised rows laid out a page at a time: each page gets a table of the rows that fit,
    under a repeated header, and the totals row closes the last one. Every row has the same
    height, so what fits is arithmetic; a platypus Table instead re-measures all remaining
    rows at every page break, which grows with the square of the row count."""

    SIZE = 7.5
    ROW = 10.5  # points: 7.5 pt text with 1.5 pt above and below

    def __init__(self, st: _Styles, head: list[Paragraph], rows: list[list[str]], total: list[str]) -> None:
        super().__init__()
        self.st, self.head, self.rows, self.total = st, head, rows, total
        self.head_height = max(p.wrap(w - 6, 1000)[1] for p, w in zip(head, _ITEM_WIDTHS, strict=True)) + 4

    def _height(self, n: int, last: bool) -> float:
        return self.head_height + (n + last) * self.ROW

    def wrap(self, aW: float, aH: float) -> tuple[float, float]:
        self.width, self.height = _CONTENT_WIDTH, self._height(len(self.rows), True)
        return self.width, self.height

    def split(self, aW: float, aH: float) -> list[Flowable]:
        fit = int((aH - self.head_height) // self.ROW)
        if fit > len(self.rows):
            return [self._table(self.rows, last=True)]
        if fit < 1 or (fit == len(self.rows) and len(self.rows) == 1):
            return []  # not even a row and the totals here: start on the next page
        fit = min(fit, len(self.rows) - 1)  # keep at least one row with the totals
        return [self._table(self.rows[:fit], last=False), _PagedRows(self.st, self.head, self.rows[fit:], self.total)]

    def draw(self) -> None:
        table = self._table(self.rows, last=True)
        table.wrapOn(self.canv, self.width, self.height)
        table.drawOn(self.canv, 0, 0)

    def _table(self, rows: list[list[str]], last: bool) -> Table:
        st, size = self.st, self.SIZE
        data: list[list[Any]] = [list(self.head), *rows]
        if last:
            data.append(self.total)
        heights = [self.head_height] + [self.ROW] * (len(data) - 1)
        t = Table(data, colWidths=_ITEM_WIDTHS, rowHeights=heights, hAlign="LEFT")
        t.setStyle(_grid(st, header=True, footer=last, rows=len(data), zebra=True))
        t.setStyle(
            TableStyle(
                [
                    ("FONT", (0, 1), (-1, -1), st.bold if last else st.font, size),
                    ("FONT", (0, 1), (-1, -2 if last else -1), st.font, size),
                    ("VALIGN", (0, 1), (-1, -1), "MIDDLE"),
                    ("TOPPADDING", (0, 1), (-1, -1), 0),
                    ("BOTTOMPADDING", (0, 1), (-1, -1), 1.5),
                    ("ALIGN", (4, 0), (-1, -1), "RIGHT"),
                ]
            )
        )
        return t


def _itemised_table(st: _Styles, view: ItemisedView, currency: str, time_zone: str) -> Flowable:
    size = _PagedRows.SIZE
    head = [f"Date and time ({time_zone})", "Service", "Type", "Destination", "Quantity", f"Cost ({currency})"]
    rows = []
    for row in view.rows:
        cells = list(row)
        for i in (1, 2, 3):  # free text columns; the others are short formatted figures
            cells[i] = _fit(cells[i], st.font, size, _ITEM_WIDTHS[i] - 6)
        rows.append(cells)
    total = ["Total itemised usage", "", "", "", "", view.total]
    return _PagedRows(
        st, [_p(h, st.small_head_right if i >= 4 else st.small_head) for i, h in enumerate(head)], rows, total
    )


def _story(inv: Invoice, view: InvoiceView, st: _Styles) -> list[Flowable]:
    money_col = 45 * mm
    summary = Table(
        [[_p(r.label, st.strong if r.strong else st.body), r.amount] for r in view.summary],
        colWidths=(_CONTENT_WIDTH - money_col, money_col),
        hAlign="LEFT",
    )
    summary.setStyle(_grid(st, header=False, footer=False, rows=len(view.summary)))
    style: list[Any] = [("ALIGN", (1, 0), (1, -1), "RIGHT")]
    for i, r in enumerate(view.summary):
        if r.strong:
            style += [("FONT", (1, i), (1, i), st.bold, 9), ("LINEABOVE", (0, i), (-1, i), 0.6, _RULE)]
    summary.setStyle(TableStyle(style))

    # The letterhead, address window, facts and payment slip are drawn on the first page
    # at fixed places (``_FirstPage``); the flow starts under them.
    story: list[Flowable] = [NextPageTemplate("later"), _p(f"{view.title} {inv.number}", st.title_left)]
    story += [_p("Summary", st.h2), summary]
    if inv.notes:
        story.append(Spacer(1, 3 * mm))
        story += [_p(note, st.body) for note in inv.notes]
    story.append(PageBreak())
    story.append(_p("Charges per line", st.h2))
    if not view.groups:
        story.append(_p("No lines on this invoice.", st.empty))
    for group in view.groups:
        if group.label:
            story.append(_p(f"Unit: {group.label}", st.h2))
        for line in group.lines:
            story.append(_p(f"Line {line.line} · {line.product}", st.h3))
            story.append(_charges_table(st, line.charges, f"Subtotal line {line.line}", line.subtotal))
        if group.label:
            subtotal = Table(
                [[_p(f"Subtotal unit {group.label}", st.strong), group.subtotal]],
                colWidths=(_CONTENT_WIDTH - money_col, money_col),
                hAlign="LEFT",
            )
            subtotal.setStyle(_grid(st, header=False, footer=True, rows=1))
            subtotal.setStyle(
                TableStyle([("ALIGN", (1, 0), (1, 0), "RIGHT"), ("LINEABOVE", (0, 0), (-1, 0), 1, _BLUE)])
            )
            story += [Spacer(1, 2 * mm), subtotal]
    if view.account_charges:
        story.append(_p("Account charges", st.h2))
        story.append(
            _charges_table(st, view.account_charges, "Subtotal account charges", view.account_subtotal),
        )
    story += [PageBreak(), _p("Itemised usage", st.h2)]
    for item in view.itemised:
        story.append(_p(f"Line {item.line} · {item.count}", st.h3))
        if item.rows:
            story.append(_itemised_table(st, item, inv.currency, inv.time_zone))
        else:
            story.append(_p("No usage recorded in this period.", st.empty))
    return story


# Places on the first page, in mm from the top-left corner of the A4 sheet.
WINDOW_LEFT, WINDOW_TOP, WINDOW_BOTTOM = 20, 45, 90  # DIN 5008 form B address field
FACTS_LEFT, FACTS_TOP = 118, 50
FLOW_TOP = 100  # the title and summary start here
SLIP_TOP = 235  # the payment slip: a rule, the request, bank details and the QR code
QR_SIZE = 34  # EPC QR code, square, its right edge on the right margin
QR_QUIET = 4  # light modules around the code


class _FirstPage:
    """Draws what stands at fixed places on the first page."""

    def __init__(self, inv: Invoice, view: InvoiceView, st: _Styles) -> None:
        self.inv, self.view, self.st = inv, view, st

    def __call__(self, canvas: Canvas, doc: BaseDocTemplate) -> None:
        st, view = self.st, self.view
        top = A4[1]

        def y(mm_from_top: float) -> float:
            return top - mm_from_top * mm

        canvas.saveState()
        # Letterhead: the issuer's name, then its address and VAT id on one line.
        canvas.setFont(st.bold, 15)
        canvas.setFillColor(_BLUE)
        canvas.drawString(18 * mm, y(22), _fit(view.sender[0], st.bold, 15, _CONTENT_WIDTH))
        canvas.setFont(st.font, 8)
        canvas.setFillColor(colors.HexColor("#444444"))
        canvas.drawString(18 * mm, y(28), _fit(" · ".join(view.sender[1:]), st.font, 8, _CONTENT_WIDTH))
        # The address window: the return address in small print, then the recipient.
        width = 85 * mm
        canvas.setFont(st.font, 6.5)
        sender = " · ".join(x for x in view.sender[:-1] if not x.startswith("VAT ID")) or view.sender[0]
        canvas.drawString(WINDOW_LEFT * mm, y(WINDOW_TOP + 4), _fit(sender, st.font, 6.5, width))
        canvas.setFillColor(colors.black)
        canvas.setFont(st.font, 10)
        # Six lines fit the window's address zone; a long name wraps rather than being cut.
        lines = [part for text in view.recipient for part in simpleSplit(text, st.font, 10, width)][:6]
        for i, text in enumerate(lines):
            canvas.drawString(WINDOW_LEFT * mm, y(WINDOW_TOP + 20 + 4.4 * i), _fit(text, st.font, 10, width))
        # The facts beside the window.
        for i, (label, value) in enumerate(view.facts):
            canvas.setFont(st.font, 8.5)
            canvas.drawString(FACTS_LEFT * mm, y(FACTS_TOP + 5 * i), label)
            canvas.setFont(st.bold, 8.5)
            canvas.drawString((FACTS_LEFT + 27) * mm, y(FACTS_TOP + 5 * i), _fit(value, st.bold, 8.5, 47 * mm))
        self._slip(canvas, y)
        canvas.restoreState()

    def _slip(self, canvas: Canvas, y: Any) -> None:
        st, pay = self.st, self.view.payment
        canvas.setStrokeColor(_RULE)
        canvas.setLineWidth(0.6)
        canvas.line(18 * mm, y(SLIP_TOP), A4[0] - 18 * mm, y(SLIP_TOP))
        canvas.setFillColor(_BLUE)
        canvas.setFont(st.bold, 10)
        canvas.drawString(18 * mm, y(SLIP_TOP + 6), "Payment")
        canvas.setFillColor(colors.black)
        text_width = _CONTENT_WIDTH - (QR_SIZE + 4) * mm
        canvas.setFont(st.font, 9)
        canvas.drawString(18 * mm, y(SLIP_TOP + 12), _fit(pay.request, st.font, 9, text_width))
        for i, (label, value) in enumerate(pay.rows):
            canvas.setFont(st.font, 9)
            canvas.drawString(18 * mm, y(SLIP_TOP + 19 + 5 * i), label)
            canvas.setFont(st.bold, 9)
            canvas.drawString(55 * mm, y(SLIP_TOP + 19 + 5 * i), _fit(value, st.bold, 9, text_width - 37 * mm))
        if pay.qr_payload:
            left = A4[0] - 18 * mm - QR_SIZE * mm
            canvas.drawImage(qr_image(pay.qr_payload), left, y(SLIP_TOP + 4 + QR_SIZE), QR_SIZE * mm, QR_SIZE * mm)
            canvas.setFont(st.font, 6.5)
            canvas.drawCentredString(left + QR_SIZE * mm / 2, y(SLIP_TOP + 7 + QR_SIZE), "Scan to pay (SEPA)")


def qr_image(payload: str) -> ImageReader:
    """The EPC QR code as a grey image, one pixel per module with the quiet zone; the
    PDF scales it up without smoothing, so every module stays a sharp square."""
    grid = epc_qr.modules(payload)
    n = len(grid) + 2 * QR_QUIET
    pixels = bytearray(b"\xff" * (n * n))
    for r, row in enumerate(grid):
        for c, dark in enumerate(row):
            if dark:
                pixels[(r + QR_QUIET) * n + c + QR_QUIET] = 0
    return ImageReader(Image.frombytes("L", (n, n), bytes(pixels)))


def render_pdf(inv: Invoice) -> bytes:
    """An A4 PDF: the first page for a window envelope (letterhead, address, facts,
    summary, payment slip with an EPC QR code), then charges per line (by unit) and
    itemised usage; page n of N."""
    st = _Styles()
    view = invoice_view(inv)
    out = io.BytesIO()
    left, right, bottom = 18 * mm, 18 * mm, 18 * mm
    doc = BaseDocTemplate(
        out,
        pagesize=A4,
        leftMargin=left,
        rightMargin=right,
        topMargin=16 * mm,
        bottomMargin=bottom,
        title=f"{view.title} {inv.number}",
        author=inv.issuer,
        invariant=True,  # the same invoice always gives the same bytes
    )

    def footer(canvas: Canvas, _doc: BaseDocTemplate) -> None:
        canvas.saveState()
        canvas.setFont(st.font, 7.5)
        canvas.setFillColor(colors.HexColor("#555555"))
        canvas.drawString(18 * mm, 10 * mm, _fit(f"{view.title} {inv.number} · {inv.issuer}", st.font, 7.5, 120 * mm))
        canvas.restoreState()

    first_page = _FirstPage(inv, view, st)

    def first(canvas: Canvas, d: BaseDocTemplate) -> None:
        first_page(canvas, d)
        footer(canvas, d)

    flow_bottom = A4[1] - (SLIP_TOP - 2) * mm
    first_frame = Frame(left, flow_bottom, _CONTENT_WIDTH, A4[1] - FLOW_TOP * mm - flow_bottom, 0, 0, 0, 0)
    later_frame = Frame(left, bottom, _CONTENT_WIDTH, A4[1] - 16 * mm - bottom, 0, 0, 0, 0)
    doc.addPageTemplates(
        [
            PageTemplate("first", [first_frame], onPage=first),
            PageTemplate("later", [later_frame], onPage=footer),
        ]
    )
    doc.build(_story(inv, view, st), canvasmaker=_NumberedCanvas)
    return out.getvalue()
