"""Customer search and the customer page: everything a representative needs on one
page, read without JavaScript.

Search reuses the CRM's lookups: a line's number, the customer id, the identity
document (its salted fingerprint: numbers are never stored) and the words of a name
(sealed at rest: found through the keyed blind index of ``provisioning/names.py``).
Staff without a personal-data role search by customer id only and see no personal data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from charging.buckets import Bucket
from charging.errors import ChargingError, NotFound
from charging.subscribers import Account, parse_identity
from console.desk import Desk
from console.web import Visit, guarded, problem
from postpaid.invoices import Invoice
from provisioning.customer_care import Dispute, Interaction, Ticket
from provisioning.customers import Customer
from provisioning.lines import Line
from provisioning.orders import Order
from provisioning.organisation import OrgUnit

NAME_RESULTS = 100
USAGE_PER_LINE = 20
SEARCH_KINDS = ("number", "customer", "document", "name")


def masked(msisdn: str) -> str:
    return "•" * max(len(msisdn) - 4, 0) + msisdn[-4:]


@dataclass(frozen=True)
class LineView:
    line: Line
    account: Account | None
    buckets: tuple[Bucket, ...]
    billing_account: str


@dataclass(frozen=True)
class InvoiceView:
    invoice: Invoice
    state: dict[str, str]


@dataclass(frozen=True)
class BillingView:
    id: str
    info: dict[str, Any]
    invoices: tuple[InvoiceView, ...]
    payments: tuple[dict[str, Any], ...]
    dunning_state: str
    promised_until: str


@dataclass(frozen=True)
class UsageRow:
    at: datetime
    msisdn: str
    service: str
    units: int
    unit: str
    cost_micros: int


@dataclass
class CustomerView:
    customer: Customer
    units: dict[str, OrgUnit] = field(default_factory=dict)
    lines: list[LineView] = field(default_factory=list)
    billing: list[BillingView] = field(default_factory=list)
    orders: list[Order] = field(default_factory=list)
    interactions: list[Interaction] = field(default_factory=list)
    tickets: list[Ticket] = field(default_factory=list)
    disputes: list[Dispute] = field(default_factory=list)
    usage: list[UsageRow] = field(default_factory=list)

    def children(self, parent: str) -> list[OrgUnit]:
        return sorted((u for u in self.units.values() if u.parent == parent), key=lambda u: int(u.id))


async def find(desk: Desk, by: str, value: str, visit: Visit, extra: dict[str, str]) -> list[Customer]:
    # read from the system of record (PostgreSQL), found through Redis's indexes
    customers, records = desk.acquisition.customers, desk.acquisition.recorded()
    if by == "customer":
        found = await records.get(value)
        return [found] if found is not None else []
    if by == "number":
        parse_identity("msisdn", value, "number")
        return (await records.search(customers, msisdn=value))[0]
    if by == "document":
        document = (extra.get("doc_type", ""), extra.get("doc_country", "").upper(), value)
        return (await records.search(customers, document=document))[0]
    return (await records.search(customers, name=value, size=NAME_RESULTS))[0]


@guarded("search")
async def search(visit: Visit) -> Response:
    params = visit.request.query_params
    by, value = params.get("by", "number"), params.get("q", "").strip()
    if not visit.personal:
        by = "customer"
    extra = {k: params.get(k, "").strip() for k in ("doc_type", "doc_country")}
    results: list[Customer] | None = None
    error = ""
    if value and by in SEARCH_KINDS:
        try:
            results = await find(visit.desk, by, value, visit, extra)
        except ChargingError as exc:
            error = problem(exc)[1]
    return visit.render("search.html", by=by, q=value, extra=extra, results=results, error=error, kinds=SEARCH_KINDS)


async def load(desk: Desk, customer_id: str, personal: bool) -> CustomerView:
    acquisition = desk.acquisition
    records = acquisition.recorded()  # the system of record
    customer = await records.get(customer_id)
    if customer is None:
        raise NotFound("no such customer")
    view = CustomerView(customer, units=await records.organisation.units(customer_id))
    accounts: list[str] = []
    for line in await acquisition.customer_lines(customer_id):
        account: Account | None = None
        buckets: tuple[Bucket, ...] = ()
        try:
            account = await desk.topups.balance(parse_identity("msisdn", line.msisdn, "msisdn"))
            buckets = tuple(await desk.topups.buckets(line.account_id))
        except ChargingError:
            pass  # not in charging yet (pending activation) or gone
        ba = await desk.billing.accounts.billed_to(line.account_id) if line.account_id else None
        if ba and ba not in accounts:
            accounts.append(ba)
        view.lines.append(LineView(line, account, buckets, ba or ""))
    if acquisition.store is not None:  # the rows (provisioning/order_store.py)
        view.orders, _ = await acquisition.store.of_customer(customer_id, 0, 50)
    else:
        ids, _ = await acquisition.orders.of_customer(customer_id, 0, 50)
        view.orders = [o for o in [await acquisition.get_order(i) for i in ids] if o is not None]
    view.disputes = await desk.care.disputes(customer_id)
    if not personal:
        return view
    for ba in accounts:
        view.billing.append(await billing_view(desk, ba))
    view.interactions = await desk.care.interactions(customer_id)
    view.tickets = await desk.care.tickets(customer_id)
    view.usage = await recent_usage(desk, [lv.line for lv in view.lines])
    return view


async def billing_view(desk: Desk, ba: str) -> BillingView:
    billing = desk.billing
    info = await billing.account(ba)
    invoices = []
    for number in await billing.invoices_of(ba):
        invoices.append(InvoiceView(await billing.invoice(number), await billing.invoice_state(number)))
    payments = tuple(await billing.payments.records(ba))
    promised = await billing.collection.promised_until(ba)
    return BillingView(ba, info, tuple(invoices), payments, str(info.get("state", "ACTIVE")), promised)


async def recent_usage(desk: Desk, lines: list[Line], per_line: int = USAGE_PER_LINE) -> list[UsageRow]:
    """The newest usage records of each line (at most ``per_line`` each, through the
    index on (msisdn, occurred_at)), newest first. A record counts for a line only with
    the line's charging account too: a number given out again after its quarantine does
    not show its previous holder's usage."""
    pairs = sorted({(line.msisdn, line.account_id) for line in lines if line.account_id})
    if not pairs:
        return []
    async with desk.database.connection() as conn:
        cur = await conn.execute(
            "SELECT r.occurred_at, l.msisdn, r.service, r.units, r.unit, r.cost_micros "
            "FROM unnest(%s::text[], %s::text[]) AS l(msisdn, account) CROSS JOIN LATERAL ("
            "  SELECT occurred_at, service, units, unit, cost_micros, record_id FROM usage_records u"
            "  WHERE u.msisdn = l.msisdn AND u.account = l.account"
            "  ORDER BY u.occurred_at DESC, u.record_id DESC LIMIT %s"
            ") AS r ORDER BY r.occurred_at DESC, l.msisdn, r.record_id DESC",
            ([m for m, _ in pairs], [a for _, a in pairs], per_line),
        )
        rows = await cur.fetchall()
    return [UsageRow(r[0].astimezone(UTC), str(r[1]), str(r[2]), int(r[3]), str(r[4]), int(r[5])) for r in rows]


@guarded("customer")
async def customer_page(visit: Visit) -> Response:
    customer_id = visit.request.path_params["customer_id"]
    try:
        view = await load(visit.desk, customer_id, visit.personal)
    except NotFound:
        return visit.render("missing.html", 404, what=f"customer {customer_id}")
    bundles = sorted(visit.desk.catalogs.current.bundles.values(), key=lambda b: b.id)
    plans = sorted(visit.desk.catalogs.current.plans)
    return visit.render(
        "customer.html",
        view=view,
        masked=masked,
        bundles=bundles,
        plans=plans,
        done=visit.request.query_params.get("done", ""),
    )


@guarded("invoice_pdf")
async def invoice_pdf(visit: Visit) -> Response:
    from postpaid.render import render_pdf

    number = visit.request.path_params["number"]
    customer_id = visit.request.path_params["customer_id"]
    try:
        view = await load(visit.desk, customer_id, True)
    except NotFound:
        return visit.render("missing.html", 404, what=f"customer {customer_id}")
    # Only an invoice of this customer's billing accounts: the URL is not a capability.
    mine = {iv.invoice.number: iv.invoice for b in view.billing for iv in b.invoices}
    if number not in mine:
        return visit.render("missing.html", 404, what=f"invoice {number}")
    await visit.audit("invoice_viewed", number)
    return Response(
        render_pdf(mine[number]),
        media_type="application/pdf",
        headers={"Content-Disposition": f'inline; filename="invoice-{number}.pdf"'},
    )


def routes() -> list[BaseRoute]:
    return [
        Route("/search", search),
        Route("/customers/{customer_id}", customer_page),
        Route("/customers/{customer_id}/invoices/{number}.pdf", invoice_pdf),
    ]
