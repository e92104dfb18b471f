"""The CRM's gRPC service: protobuf in, application documents through, protobuf out."""

from __future__ import annotations

from datetime import date
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from charging.documents import Author
from charging.errors import InvalidRequest, NotFound, StorageUnavailable
from charging.money import MICROS_PER_MINOR
from charging.schemas import parse_json
from charging.security.identity import caller_name
from charging.status import rpc
from charging.subscribers import parse_identity
from charging.v1 import crm_pb2, crm_pb2_grpc
from provisioning.acquisition import Acquisition
from provisioning.base import EPOCH
from provisioning.credit_review import change_credit_class
from provisioning.customer_care import CustomerCare, Dispute, Interaction, Ticket
from provisioning.customer_records import CustomerRecords
from provisioning.customers import KINDS, STATES, Customer, page_size, page_start
from provisioning.lifecycle import OrderKind
from provisioning.lines import Line
from provisioning.order_records import LineChange
from provisioning.order_store import OrderStore
from provisioning.orders import Order
from provisioning.organisation import OrgUnit, paying_unit

ORDER_KINDS = ("APPLICATION", *(k.value for k in OrderKind))
STATUSES = {
    "SUBMITTED": crm_pb2.ORDER_STATUS_SUBMITTED,
    "IN_PROGRESS": crm_pb2.ORDER_STATUS_IN_PROGRESS,
    "COMPLETED": crm_pb2.ORDER_STATUS_COMPLETED,
    "REJECTED": crm_pb2.ORDER_STATUS_REJECTED,
}


def application_doc(app: crm_pb2.Application) -> dict[str, Any]:
    doc = MessageToDict(app, preserving_proto_field_name=True)
    if app.contract != "POSTPAID":
        doc.pop("credit_history", None)
    if "credit_history" in doc:
        doc["credit_history"] = {k: int(v) for k, v in doc["credit_history"].items()}
    return doc


def order_pb(order: Order) -> crm_pb2.Order:
    out = crm_pb2.Order(
        crm_order_id=order.crm_order_id,
        status=STATUSES[order.status],
        customer_id=order.customer_id,
        account_id=order.account_id,
        msisdn=order.msisdn,
        credit_class=order.credit_class,
        credit_limit_micros=order.credit_limit_micros,
        deposit_micros=order.deposit_micros,
        kind=order.kind,
    )
    for field, message in order.problems:
        out.problems.add(field=field, message=message)
    for s in order.steps:
        out.steps.add(step=s.step, outcome=s.outcome, reasons=s.reasons, at=s.at)
    return out


def interaction_pb(customer_id: str, interaction: Interaction) -> crm_pb2.Interaction:
    return crm_pb2.Interaction(
        customer_id=customer_id,
        id=interaction.id,
        channel=interaction.channel,
        note=interaction.note,
        references=interaction.references,
        at=interaction.at,
    )


def ticket_pb(ticket: Ticket) -> crm_pb2.Ticket:
    out = crm_pb2.Ticket(
        id=ticket.id,
        customer_id=ticket.customer_id,
        topic=ticket.topic,
        summary=ticket.summary,
        line=ticket.line,
        invoice=ticket.invoice,
        state=ticket.state,
    )
    for h in ticket.history:
        out.history.add(state=h.state, at=h.at, note=h.note)
    return out


def dispute_pb(dispute: Dispute) -> crm_pb2.Dispute:
    return crm_pb2.Dispute(
        id=dispute.id,
        customer_id=dispute.customer_id,
        invoice=dispute.invoice,
        line=dispute.line,
        reason=dispute.reason,
        # deprecated field, kept for older clients: the same amount in micros
        amount_micros=dispute.amount_micros or dispute.amount_minor * MICROS_PER_MINOR,
        state=dispute.state,
        at=dispute.at,
        amount_minor=dispute.amount_minor,
        billing_account=dispute.billing_account,
        resolution=dispute.resolution,
        credit_note=dispute.credit_note,
    )


def dispute_amount_minor(request: crm_pb2.Dispute) -> int:
    """The disputed amount in minor units: ``amount_minor``, or the deprecated
    ``amount_micros`` when it is whole minor units."""
    if request.amount_minor or not request.amount_micros:
        return request.amount_minor
    if request.amount_micros % MICROS_PER_MINOR:
        raise InvalidRequest("amount_micros", "must be whole cents (use amount_minor)")
    return request.amount_micros // MICROS_PER_MINOR


class CrmServicer(crm_pb2_grpc.CrmServicer):
    def __init__(self, acquisition: Acquisition, care: CustomerCare) -> None:
        self.acquisition = acquisition
        self.care = care

    def _now(self) -> int:
        return self.acquisition.clock.now_ms() // 1000

    @rpc("AddInteraction")
    async def AddInteraction(
        self, request: crm_pb2.Interaction, context: grpc.aio.ServicerContext
    ) -> crm_pb2.Interaction:
        interaction = await self.care.add_interaction(
            request.customer_id, request.channel, request.note, list(request.references), self._now()
        )
        return interaction_pb(request.customer_id, interaction)

    @rpc("OpenTicket")
    async def OpenTicket(self, request: crm_pb2.Ticket, context: grpc.aio.ServicerContext) -> crm_pb2.Ticket:
        ticket = await self.care.open_ticket(
            request.customer_id, request.topic, request.summary, self._now(), line=request.line, invoice=request.invoice
        )
        return ticket_pb(ticket)

    @rpc("MoveTicket")
    async def MoveTicket(self, request: crm_pb2.TicketMove, context: grpc.aio.ServicerContext) -> crm_pb2.Ticket:
        return ticket_pb(await self.care.move_ticket(request.ticket_id, request.state, request.note, self._now()))

    @rpc("OpenDispute")
    async def OpenDispute(self, request: crm_pb2.Dispute, context: grpc.aio.ServicerContext) -> crm_pb2.Dispute:
        dispute = await self.care.open_dispute(
            request.customer_id,
            request.invoice,
            dispute_amount_minor(request),
            request.reason,
            line=request.line,
            dispute_id=request.id,
            actor=request.actor,
        )
        return dispute_pb(dispute)

    @rpc("GetCustomerRecords")
    async def GetCustomerRecords(
        self, request: crm_pb2.CustomerRef, context: grpc.aio.ServicerContext
    ) -> crm_pb2.CustomerRecords:
        out = crm_pb2.CustomerRecords()
        interactions = await self.care.interactions(request.customer_id)
        out.interactions.extend(interaction_pb(request.customer_id, i) for i in interactions)
        out.tickets.extend(ticket_pb(t) for t in await self.care.tickets(request.customer_id))
        out.disputes.extend(dispute_pb(d) for d in await self.care.disputes(request.customer_id))
        return out

    @rpc("SubmitApplication")
    async def SubmitApplication(self, request: crm_pb2.Application, context: grpc.aio.ServicerContext) -> crm_pb2.Order:
        if not request.crm_order_id or len(request.crm_order_id) > 128:
            raise InvalidRequest("crm_order_id", "is required (1-128 characters)")
        order = await self.acquisition.submit(request.crm_order_id, application_doc(request))
        return order_pb(order)

    @rpc("SubmitOrder")
    async def SubmitOrder(self, request: crm_pb2.LineOrder, context: grpc.aio.ServicerContext) -> crm_pb2.Order:
        if not request.crm_order_id or len(request.crm_order_id) > 128:
            raise InvalidRequest("crm_order_id", "is required (1-128 characters)")
        if request.kind == "NEW_LINE":
            order = await self.acquisition.new_line(
                request.crm_order_id,
                request.customer_id,
                request.org_unit_id,
                request.plan_id,
                request.msisdn,
                request.imsi,
                request.initial_balance_micros,
            )
        else:
            order = await self.acquisition.order(
                request.crm_order_id, request.msisdn, request.kind, request.plan_id, request.termination_reason
            )
        return order_pb(order)

    @rpc("GetOrder")
    async def GetOrder(self, request: crm_pb2.OrderRef, context: grpc.aio.ServicerContext) -> crm_pb2.Order:
        order = await self.acquisition.get_order(request.crm_order_id)
        if order is None:
            raise NotFound("no such order")
        return order_pb(order)

    @rpc("GetCustomerBase")
    async def GetCustomerBase(
        self, request: crm_pb2.BaseRequest, context: grpc.aio.ServicerContext
    ) -> crm_pb2.CustomerBaseReport:
        try:
            first = date.fromisoformat(request.first_date)
        except ValueError:
            raise InvalidRequest("first_date", "must be YYYY-MM-DD") from None
        try:
            last = date.fromisoformat(request.last_date)
        except ValueError:
            raise InvalidRequest("last_date", "must be YYYY-MM-DD") from None
        if not EPOCH <= first <= last:
            raise InvalidRequest("last_date", f"must not be before first_date, both from {EPOCH}")
        assert self.acquisition.base is not None
        report = crm_pb2.CustomerBaseReport()
        for f in await self.acquisition.base.figures(first, last):
            report.figures.add(
                customer_type=f.customer_type,
                active_at_start=f.active_at_start,
                active_at_end=f.active_at_end,
                gross_additions=f.gross_additions,
                disconnections=f.disconnections,
                churn_basis_points=f.churn_bp,
            )
        return report

    @rpc("GetLine")
    async def GetLine(self, request: crm_pb2.LineRef, context: grpc.aio.ServicerContext) -> crm_pb2.Line:
        line = await self.acquisition.get_line(request.msisdn)
        if line is None:
            raise NotFound("no such line")
        return line_pb(line)

    @rpc("AddOrgUnit")
    async def AddOrgUnit(self, request: crm_pb2.OrgUnit, context: grpc.aio.ServicerContext) -> crm_pb2.OrgUnit:
        organisation = self.acquisition.organisation
        if not request.parent_id:
            raise InvalidRequest("parent_id", "is required: the company's root unit exists already")
        unit = await organisation.add_unit(request.customer_id, request.parent_id, request.name, request.pays_itself)
        units = await self._records().organisation.units(request.customer_id)
        return unit_pb(unit, paying_unit(units, unit.id))

    @rpc("LoadCoverage")
    async def LoadCoverage(
        self, request: crm_pb2.CoverageDocument, context: grpc.aio.ServicerContext
    ) -> crm_pb2.CoverageInfo:
        author = Author(caller_name(), self.acquisition.clock.now_ms())  # audited with the load (documents.py)
        table = await self.acquisition.coverage.load(parse_json(request.json), author)
        return crm_pb2.CoverageInfo(version=table.version, areas=len(table.coverage.areas))

    @rpc("GetCoverage")
    async def GetCoverage(
        self, request: crm_pb2.CoverageRef, context: grpc.aio.ServicerContext
    ) -> crm_pb2.CoverageDocument:
        book = self.acquisition.coverage
        table = await book.table(request.version) if request.version else await book.current()
        if table is None:
            raise NotFound(f"no coverage version {request.version}")
        return crm_pb2.CoverageDocument(json=table.text, version=table.version)

    @rpc("ListCustomers")
    async def ListCustomers(
        self, request: crm_pb2.CustomerQuery, context: grpc.aio.ServicerContext
    ) -> crm_pb2.CustomerPage:
        if request.kind and request.kind not in KINDS:
            raise InvalidRequest("kind", "must be " + " or ".join(KINDS))
        if request.state and request.state not in STATES:
            raise InvalidRequest("state", "must be one of " + ", ".join(STATES))
        if request.msisdn:
            parse_identity("msisdn", request.msisdn, "msisdn")
        document = None
        if request.HasField("identity_document"):
            d = request.identity_document
            for name in ("type", "issuing_country", "number"):
                if not getattr(d, name):
                    raise InvalidRequest(f"identity_document.{name}", "is required to find a customer by document")
            document = (d.type, d.issuing_country, d.number)
        customers, token = await self._records().search(
            self.acquisition.customers,
            kind=request.kind,
            state=request.state,
            msisdn=request.msisdn,
            document=document,
            name=request.name,
            after=page_start(request.page_token),
            size=page_size(request.page_size),
        )
        return crm_pb2.CustomerPage(customers=[summary_pb(c) for c in customers], next_page_token=token)

    @rpc("ListCustomerLines")
    async def ListCustomerLines(
        self, request: crm_pb2.CustomerPageRequest, context: grpc.aio.ServicerContext
    ) -> crm_pb2.LinePage:
        await self._customer(request.customer_id)
        lines, token = await self.acquisition.customer_lines_page(
            request.customer_id, page_start(request.page_token), page_size(request.page_size)
        )
        return crm_pb2.LinePage(lines=[line_pb(line) for line in lines], next_page_token=token)

    @rpc("ListCustomerOrders")
    async def ListCustomerOrders(
        self, request: crm_pb2.CustomerPageRequest, context: grpc.aio.ServicerContext
    ) -> crm_pb2.OrderPage:
        await self._customer(request.customer_id)
        start, size = page_start(request.page_token), page_size(request.page_size)
        store = self.acquisition.store
        if store is not None:  # the rows (order_store.py)
            found, token = await store.of_customer(request.customer_id, start, size)
            return crm_pb2.OrderPage(orders=[order_pb(o) for o in found], next_page_token=token)
        ids, token = await self.acquisition.orders.of_customer(request.customer_id, start, size)
        orders = [await self.acquisition.get_order(i) for i in ids]
        return crm_pb2.OrderPage(orders=[order_pb(o) for o in orders if o is not None], next_page_token=token)

    def _records(self) -> CustomerRecords:
        """Customers and units as the system of record (PostgreSQL) has them."""
        return self.acquisition.recorded()

    @rpc("ListOrders")
    async def ListOrders(self, request: crm_pb2.OrderQuery, context: grpc.aio.ServicerContext) -> crm_pb2.OrderPage:
        if request.kind and request.kind not in ORDER_KINDS:
            raise InvalidRequest("kind", "must be one of " + ", ".join(ORDER_KINDS))
        statuses = {v: k for k, v in STATUSES.items() if k != "SUBMITTED"}
        if request.status and request.status not in statuses:
            raise InvalidRequest("status", "must be IN_PROGRESS, COMPLETED or REJECTED (running orders are not listed)")
        if request.msisdn:
            parse_identity("msisdn", request.msisdn, "msisdn")
        start, size = page_start(request.page_token), page_size(request.page_size)
        found, token = await self._store().search(
            request.kind, statuses.get(request.status, ""), request.msisdn, start, size
        )
        return crm_pb2.OrderPage(orders=[order_pb(o) for o in found], next_page_token=token)

    @rpc("ListLineHistory")
    async def ListLineHistory(
        self, request: crm_pb2.LineHistoryRequest, context: grpc.aio.ServicerContext
    ) -> crm_pb2.LineHistory:
        msisdn = parse_identity("msisdn", request.msisdn, "msisdn").value
        start, size = page_start(request.page_token), page_size(request.page_size)
        changes, token = await self._store().history(msisdn, start, size)
        if not changes and not start and await self.acquisition.get_line(msisdn) is None:
            raise NotFound("no such line")
        return crm_pb2.LineHistory(changes=[line_change_pb(c) for c in changes], next_page_token=token)

    def _store(self) -> OrderStore:
        if self.acquisition.store is None:
            raise StorageUnavailable("orders are not kept in a database here")
        return self.acquisition.store

    async def _customer(self, customer_id: str) -> Customer:
        customer = await self._records().get(customer_id) if customer_id else None
        if customer is None:
            raise NotFound("no such customer")
        return customer

    @rpc("ChangeCreditClass")
    async def ChangeCreditClass(
        self, request: crm_pb2.CreditClassChange, context: grpc.aio.ServicerContext
    ) -> crm_pb2.CustomerSummary:
        customer = await change_credit_class(
            self.acquisition, request.customer_id, request.credit_class, request.credit_limit_micros, request.reason
        )
        return summary_pb(customer)

    @rpc("GetCustomer")
    async def GetCustomer(self, request: crm_pb2.CustomerRef, context: grpc.aio.ServicerContext) -> crm_pb2.Customer:
        customer = await self._customer(request.customer_id)
        out = crm_pb2.Customer(id=customer.id, kind=customer.kind)
        units = await self._records().organisation.units(customer.id)
        out.units.extend(unit_pb(u, paying_unit(units, u.id)) for u in units.values())
        out.lines.extend(line_pb(line) for line in await self.acquisition.customer_lines(customer.id))
        return out


def summary_pb(customer: Customer) -> crm_pb2.CustomerSummary:
    return crm_pb2.CustomerSummary(
        id=customer.id,
        kind=customer.kind,
        state=customer.state,
        created=customer.created,
        country=customer.country,
        postal_code=customer.postal_code,
        credit_class="" if customer.credit is None else customer.credit.credit_class,
        identity_document=crm_pb2.IdentityDocument(
            type=customer.document_type,
            issuing_country=customer.document_country,
            number=customer.document_number,  # masked when stored
        ),
    )


def line_change_pb(change: LineChange) -> crm_pb2.LineChange:
    return crm_pb2.LineChange(
        state=change.state,
        plan_id=change.plan_id,
        crm_order_id=change.order_id,
        cause=change.cause,
        reason=change.reason,
        at=change.at_ms // 1000,
        customer_id=change.customer_id,
        account_id=change.account_id,
    )


def unit_pb(unit: OrgUnit, paying: str) -> crm_pb2.OrgUnit:
    return crm_pb2.OrgUnit(
        id=unit.id,
        customer_id=unit.customer_id,
        parent_id=unit.parent,
        name=unit.name,
        pays_itself=unit.pays_itself,
        paying_unit_id=paying,
    )


def line_pb(line: Line) -> crm_pb2.Line:
    return crm_pb2.Line(
        msisdn=line.msisdn,
        customer_id=line.customer_id,
        account_id=line.account_id,
        plan_id=line.plan_id,
        state=line.state.value,
        unit_id=line.unit_id,
    )
