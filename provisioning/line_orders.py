"""Line orders: a customer's further lines, and orders on existing lines.

A new line (NEW_LINE, under one of a corporate customer's units) is offered against the
customer's address and credit class, which also caps the number of postpaid lines; the
first line of an application is opened the same way (``open_line``). An order on an
existing line (CHANGE_PRODUCT, BAR_OUTGOING, SUSPEND, RESUME, TERMINATE with a reason)
is checked against the line's state (``lifecycle.accept``). Either way the order goes
IN_PROGRESS in the transaction that asks the network for the line's new state, so each
is provisioned once; the network's acknowledgement completes it
(``acknowledgements.py``). A line takes one order at a time: while the order it names
is undecided (its first line's application too) another order on it is REJECTED, "the
line has an order in progress (<id>)"; check and taking are one transaction on the line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar, TypeVar

from redis.asyncio.client import Pipeline

from charging.catalog import Plan
from charging.catalogs import CatalogBook
from charging.errors import InvalidRequest
from charging.subscribers import Identity, parse_identity
from provisioning import keys
from provisioning.coverage import CoverageBook
from provisioning.credit import CreditDecision
from provisioning.customers import Customers
from provisioning.lifecycle import InvalidTransition, LineState, Move, OrderKind, TerminationReason, accept
from provisioning.line_accounts import LineAccounts
from provisioning.lines import Line, Lines
from provisioning.offers import offers
from provisioning.order_records import ordered_entry
from provisioning.orders import Order, Orders
from provisioning.organisation import Organisation
from provisioning.quarantine import Quarantine
from provisioning.runs import Decision, OrderRun, Rejected
from provisioning.worker import ProvisioningWorker

T = TypeVar("T")
UNDECIDED = ("SUBMITTED", "IN_PROGRESS")  # an order the line waits for


@dataclass(frozen=True)
class NewLineRequest:
    """A further line for an existing customer, as kept with the order to resume it."""

    KIND: ClassVar[str] = "NEW_LINE"
    customer_id: str
    unit_id: str
    plan_id: str
    msisdn: str
    imsi: str
    initial_balance: int

    def to_doc(self) -> dict[str, Any]:
        return {"kind": self.KIND, **asdict(self)}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> NewLineRequest:
        return cls(
            customer_id=str(doc["customer_id"]),
            unit_id=str(doc["unit_id"]),
            plan_id=str(doc["plan_id"]),
            msisdn=str(doc["msisdn"]),
            imsi=str(doc["imsi"]),
            initial_balance=int(doc["initial_balance"]),
        )


@dataclass(frozen=True)
class LineOrderRequest:
    """An order on an existing line (``order``: its kind), as kept with the order."""

    KIND: ClassVar[str] = "LINE_ORDER"
    msisdn: str
    order: str
    plan_id: str = ""
    reason: str = ""

    def to_doc(self) -> dict[str, Any]:
        return {"kind": self.KIND, **asdict(self)}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> LineOrderRequest:
        return cls(str(doc["msisdn"]), str(doc["order"]), str(doc["plan_id"]), str(doc["reason"]))


def plan_in_force(catalogs: CatalogBook, plan_id: str) -> Plan:
    """The plan as the running catalog has it; refuses the offer when there is none."""
    plan = catalogs.current.plans.get(plan_id)
    if plan is None:
        raise Rejected("offer", f"no plan {plan_id!r} in the catalog")
    return plan


async def decided_plan(catalogs: CatalogBook, decision: Decision) -> Plan:
    """The plan offered, from the catalog in force when the order was decided."""
    catalog = await catalogs.version(decision.catalog)
    plan = None if catalog is None else catalog.plans.get(decision.plan_id)
    if plan is None:
        raise Rejected("offer", f"no plan {decision.plan_id!r} in catalog {decision.catalog}")
    return plan


@dataclass
class LineOrders:
    catalogs: CatalogBook
    coverage: CoverageBook
    worker: ProvisioningWorker
    orders: Orders
    customers: Customers
    organisation: Organisation
    lines: Lines
    accounts: LineAccounts
    quarantine: Quarantine

    async def open_line(
        self,
        run: OrderRun,
        customer_id: str,
        unit_id: str,
        plan: Plan,
        msisdn: Identity,
        imsi: Identity | None,
        initial_balance: int,
        credit: CreditDecision | None,
    ) -> Order:
        """Create the charging account (barred until the network acknowledges) and the
        line; the order goes IN_PROGRESS together with asking the network to activate it."""
        credit_limit = None if credit is None else credit.credit_limit_micros
        account_id = await self.accounts.open(run, msisdn, imsi, plan, initial_balance, credit_limit)
        run.order = replace(run.order, customer_id=customer_id, account_id=account_id, msisdn=msisdn.value)
        line = Line(
            msisdn=msisdn.value,
            customer_id=customer_id,
            account_id=account_id,
            plan_id=plan.id,
            state=LineState.PENDING_ACTIVATION,
            order_id=run.id,
            customer_type=plan.customer_type.value,
            unit_id=unit_id,
        )
        await self.lines.create(line)
        run.step("line", "created", "pending activation")
        run.order = replace(run.order, status="IN_PROGRESS")
        run.step("provisioning", "requested", "ACTIVATE")

        def activate(pipe: Pipeline) -> None:
            self.worker.desire_in(pipe, msisdn.value, LineState.ACTIVE.value, plan.id)

        first = ordered_entry(line, run.now_s * 1000)
        order = await self.orders.finish(run.order, activate, rows=(first,))
        await self.customers.refresh_state(customer_id)  # one whose lines had all gone is pending again
        return order

    async def new_line(self, run: OrderRun, r: NewLineRequest) -> Order:
        decision = await run.decided(self.orders, lambda: self._check_new_line(run, r))
        plan = await decided_plan(self.catalogs, decision)
        msisdn = parse_identity("msisdn", r.msisdn, "msisdn")
        imsi = parse_identity("imsi", r.imsi, "imsi") if r.imsi else None
        unit_id = decision.unit_id or ""
        return await self.open_line(run, r.customer_id, unit_id, plan, msisdn, imsi, r.initial_balance, decision.credit)

    async def _check_new_line(self, run: OrderRun, r: NewLineRequest) -> Decision:
        """The customer, unit, number and offer: the plan, credit and unit decided."""
        customer_id, unit_id = r.customer_id, r.unit_id
        customer = await self.customers.get(customer_id)
        if customer is None:
            raise Rejected("order", "no such customer")
        run.order = replace(run.order, customer_id=customer_id)
        if customer.kind == "CORPORATE":
            units = await self.organisation.units(customer_id)
            unit_id = unit_id or await self.organisation.root(customer_id)
            if unit_id not in units:
                raise Rejected("order", "org_unit_id is not a unit of this customer")
        try:
            msisdn = parse_identity("msisdn", r.msisdn, "msisdn")
            if r.imsi:
                parse_identity("imsi", r.imsi, "imsi")
        except InvalidRequest as exc:
            run.problems((exc.field, exc.message))
            raise Rejected("order", "the order has invalid fields") from None
        if await self.quarantine.holds(msisdn.value, run.decided_s):
            raise Rejected("line", "the number is in quarantine after a termination")
        plan = plan_in_force(self.catalogs, r.plan_id)
        credit = customer.credit
        offered, refused = offers(
            [plan],
            country=customer.country,
            postal_code=customer.postal_code,
            coverage=(await self.coverage.current()).coverage,
            credit=credit,
            at_s=run.decided_s,
        )
        if not offered:
            raise Rejected("offer", *(r.reason for r in refused))
        lines = await self.lines.count(customer_id)
        if credit is not None and plan.customer_type.value.endswith("POSTPAID") and lines >= credit.max_lines:
            raise Rejected(
                "offer", f"credit class {credit.credit_class} allows at most {credit.max_lines} postpaid line(s)"
            )
        run.step("offer", "available", plan.id)
        return Decision(plan.id, self.catalogs.current.version, credit, unit_id)

    async def change(self, run: OrderRun, r: LineOrderRequest) -> Order:
        """An order on an existing line. Checks only read until the order is decided, so
        a resumed run simply checks again; the line's new order and desired state are
        stored with the decision."""
        msisdn, kind, plan_id, reason = r.msisdn, r.order, r.plan_id, r.reason

        def check(line: Line) -> tuple[Move, str]:
            """The order against the line as it stands: where it goes, and its product."""
            try:
                order_kind = OrderKind(kind)
                termination = TerminationReason(reason) if order_kind is OrderKind.TERMINATE else None
                move = accept(line.state, order_kind, termination)
            except InvalidTransition as exc:
                raise Rejected("order", str(exc)) from None
            except ValueError:
                raise Rejected("order", f"unknown order {kind!r} or termination reason {reason!r}") from None
            if order_kind is not OrderKind.CHANGE_PRODUCT:
                return move, line.plan_id
            plan = self.catalogs.current.plans.get(plan_id)
            current = self.catalogs.current.plans.get(line.plan_id)
            if plan is None or (current is not None and plan.customer_type != current.customer_type):
                raise Rejected("order", f"plan {plan_id!r} is not a product this line can change to")
            return move, plan.id

        line = await self.lines.get(msisdn)
        if line is None:
            raise Rejected("order", "no such line")
        run.order = replace(run.order, customer_id=line.customer_id, account_id=line.account_id, msisdn=msisdn)
        move, product = await self._taken(run, msisdn, check)
        run.step("order", "accepted", move.network_command)
        run.order = replace(run.order, status="IN_PROGRESS")
        run.step("provisioning", "requested", move.network_command)

        def provision(pipe: Pipeline) -> None:
            Lines.ordered_in(pipe, msisdn, run.id, reason)
            self.worker.desire_in(pipe, msisdn, move.target.value, product)

        return await self.orders.finish(run.order, provision)

    async def _taken(self, run: OrderRun, msisdn: str, check: Callable[[Line], T]) -> T:
        """Check the order against the line as it stands and take the line for it, in one
        transaction on the line. A line takes one order at a time: the network's
        acknowledgement completes the order the line names, so a second order decided
        while the first is undecided (SUBMITTED or IN_PROGRESS) would leave the first
        IN_PROGRESS for ever, and be checked against a state the line is leaving; it is
        refused instead. A run of the same order again (resumed) finds the line its own."""
        key = keys.line(msisdn)

        async def txn(pipe: Pipeline) -> T:
            h = {str(k): str(v) for k, v in (await pipe.hgetall(key)).items()}
            if not h:
                raise Rejected("order", "no such line")
            line = Line.from_redis(msisdn, h)
            if line.order_id and line.order_id != run.id:
                held = await pipe.get(keys.order(line.order_id))
                if held is not None and Order.from_redis(str(held)).status in UNDECIDED:
                    raise Rejected("order", f"the line has an order in progress ({line.order_id})")
            checked = check(line)
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.hset(key, "order_id", run.id)
            return checked

        taken: T = await self.lines.client.transaction(txn, key, value_from_callable=True)
        return taken
