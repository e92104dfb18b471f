"""Customer acquisition: an application becomes a customer, an account and a line that is
activated on the network; charging starts once the network acknowledges.

    application checks -> identity and fraud screening -> credit class (postpaid)
      -> the product is among the offers -> customer, charging account (barred while
      pending), line -> provisioning: desired state "active" -> network ACTIVATE
      -> acknowledged: line active, charging status active, order completed

Orders on existing lines (change product, bar outgoing, suspend, resume, terminate) are
checked against the line's state (``lifecycle.py``) and provisioned the same way; a
terminated number is quarantined before it can be given out again. Each step is recorded
on the order with its outcome and reasons; a refusal at any step rejects the order and
says why. Orders are idempotent on the CRM's order id: the same id returns the same
order. The credit limit of a postpaid account is stored on the charging account
(``credit_limit``) for postpaid charging.

A run interrupted by a crash is resumed (``orders.py``): the order's checks are decided
once and recorded, and every step that makes something (the customer id, the identity's
registration, the company's root unit, the charging account, the line) finds what an
earlier run of the same order made instead of making it again. Rules are applied as of
the submission, also when the run is resumed later.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from charging import keys
from charging.catalog import Plan
from charging.catalogs import CatalogBook
from charging.clock import Clock
from charging.errors import Conflict, InvalidRequest, StorageUnavailable
from charging.subscribers import Directory, Identity, parse_identity
from provisioning import keys as crm_keys
from provisioning.applications import ApplicationInvalid, check_application
from provisioning.base import CustomerBase
from provisioning.bureau import BureauUnavailable, HttpCreditBureau
from provisioning.coverage import CoverageBook
from provisioning.credit import CreditDecision, CreditHistory, decide
from provisioning.customers import Customers, Organisation, mask, paying_unit, push_once
from provisioning.lifecycle import (
    CHARGING_STATUS,
    InvalidTransition,
    LineState,
    OrderKind,
    TerminationReason,
    accept,
    reusable_from,
)
from provisioning.offers import offers
from provisioning.orders import ORDER_LEASE_MS, Claim, Orders, Rejected, Superseded
from provisioning.screening import Screener
from provisioning.worker import ProvisioningWorker

log = logging.getLogger("provisioning.acquisition")

# How often a server (or ``charging worker``) looks for orders whose run was interrupted.
RESUME_INTERVAL_S = 5.0
APPLICATION, NEW_LINE, LINE_ORDER = "APPLICATION", "NEW_LINE", "LINE_ORDER"


def credit_doc(credit: CreditDecision | None) -> dict[str, Any] | None:
    return None if credit is None else asdict(credit)


def credit_from(doc: dict[str, Any] | None) -> CreditDecision | None:
    return None if doc is None else CreditDecision(**{**doc, "reasons": tuple(doc["reasons"])})


class OrderRun:
    """One run of an order: its document and the steps recorded on it."""

    def __init__(self, claim: Claim, now_s: int) -> None:
        self.request = claim.request
        self.work = claim.work
        decided = claim.work.get("decided")
        # A resumed run continues the document of the run that decided the order.
        self.order: dict[str, Any] = dict(json.loads(decided)["order"]) if decided else claim.order
        self.now_s = now_s
        # Rules (ages, velocity per day, plan versions, quarantine) as of the submission.
        self.decided_s = int(self.order.get("submitted_at", now_s))
        # What a rejection takes back: what this run made for a customer that won't be.
        self.undo: list[Callable[[Pipeline], Any]] = []

    @property
    def id(self) -> str:
        return str(self.order["crm_order_id"])

    def step(self, name: str, outcome: str, *reasons: str) -> None:
        self.order["steps"].append({"step": name, "outcome": outcome, "reasons": list(reasons), "at": self.now_s})


class LineBilling(Protocol):
    async def line_changed(
        self,
        *,
        msisdn: str,
        line: dict[str, str],
        state: str,
        plan_id: str,
        customer: dict[str, str],
        paying_unit: str,
        unit_path: tuple[str, ...],
        label: str,
    ) -> None: ...


@dataclass
class Acquisition:
    client: aioredis.Redis
    directory: Directory
    catalogs: CatalogBook
    screener: Screener
    coverage: CoverageBook
    worker: ProvisioningWorker
    clock: Clock
    base: CustomerBase | None = None
    bureau: HttpCreditBureau | None = None
    lease_ms: int = ORDER_LEASE_MS
    # Postpaid billing (postpaid/billing.py): told about every acknowledged line change.
    billing: LineBilling | None = None
    orders: Orders = field(init=False)
    customers: Customers = field(init=False)

    def __post_init__(self) -> None:
        self.orders = Orders(self.client, self.lease_ms)
        self.customers = Customers(self.client, self.screener)

    @property
    def organisation(self) -> Organisation:
        return Organisation(self.client)

    async def submit(self, order_id: str, app: dict[str, Any]) -> dict[str, Any]:
        """Process one application; returns the order document."""
        return await self._start(order_id, {"kind": APPLICATION, "application": app})

    async def new_line(
        self,
        order_id: str,
        customer_id: str,
        unit_id: str,
        plan_id: str,
        msisdn_text: str,
        imsi_text: str,
        initial_balance: int,
    ) -> dict[str, Any]:
        """A further line for an existing customer (under one of its units, if corporate),
        offered against the customer's address and credit class."""
        request = {
            "kind": NEW_LINE,
            "customer_id": customer_id,
            "unit_id": unit_id,
            "plan_id": plan_id,
            "msisdn": msisdn_text,
            "imsi": imsi_text,
            "initial_balance": initial_balance,
        }
        return await self._start(order_id, request)

    async def order(self, order_id: str, msisdn: str, kind: str, plan_id: str = "", reason: str = "") -> dict[str, Any]:
        """An order on an existing line: change product, bar outgoing, suspend, resume,
        terminate (with a reason). Checked against the line's state, then provisioned."""
        request = {"kind": LINE_ORDER, "msisdn": msisdn, "order": kind, "plan_id": plan_id, "reason": reason}
        return await self._start(order_id, request)

    async def _start(self, order_id: str, request: dict[str, Any]) -> dict[str, Any]:
        """Claim the order id and run the order; the same id again returns the order, or
        resumes its run when that was interrupted (its lease has passed)."""
        claim = await self.orders.claim(order_id, request, self.clock.now_ms())
        if claim.outcome == "existing":
            return claim.order
        return await self._run(claim)

    async def resume_stalled(self, limit: int = 100) -> int:
        """Run again the orders whose run was interrupted; returns how many were run."""
        now = self.clock.now_ms()
        resumed = 0
        for order_id in await self.orders.stalled(now, limit):
            claim = await self.orders.take_over(order_id, now)
            if claim is None:
                continue
            try:
                await self._run(claim)
                resumed += 1
            except Exception:
                log.exception("resuming an order failed", extra={"crm_order_id": order_id})
        return resumed

    async def run_resumer(self, interval_s: float = RESUME_INTERVAL_S) -> None:
        """Background task: resume interrupted orders until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.resume_stalled()
            except (StorageUnavailable, aioredis.ConnectionError, aioredis.TimeoutError) as exc:
                log.warning("order resumer: redis unavailable", extra={"error": str(exc)})

    async def _run(self, claim: Claim) -> dict[str, Any]:
        run = OrderRun(claim, self.clock.now_ms() // 1000)
        if claim.outcome == "resume":
            run.step("resumed", "after an interrupted run")
        try:
            if run.request["kind"] == APPLICATION:
                return await self._application(run)
            if run.request["kind"] == NEW_LINE:
                return await self._new_line(run)
            return await self._line_order(run)
        except Rejected as exc:
            run.step(exc.step, "refused", *exc.reasons)
            run.order["status"] = "REJECTED"

            def undo(pipe: Pipeline) -> None:
                for take_back in run.undo:
                    take_back(pipe)

            return await self.orders.finish(run.order, undo)
        except Superseded:
            return await self.orders.get(run.id) or run.order

    async def _decided(self, run: OrderRun, check: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        """The facts the order's checks decided (plan, credit, unit): checked once; a
        resumed run reads them back, so a velocity count or a line limit that the first
        run's own customer and line now take part in cannot refuse the order later."""
        stored = run.work.get("decided")
        if stored is not None:
            return dict(json.loads(stored)["facts"])
        facts = await check()
        await self.orders.note(run.id, "decided", json.dumps({"order": run.order, "facts": facts}))
        return facts

    def _plan(self, plan_id: str) -> Plan:
        plan = self.catalogs.current.plans.get(plan_id)
        if plan is None:
            raise Rejected("offer", f"no plan {plan_id!r} in the catalog")
        return plan

    async def _decided_plan(self, facts: dict[str, Any]) -> Plan:
        """The plan offered, from the catalog in force when the order was decided."""
        catalog = await self.catalogs.version(facts["catalog"])
        plan = None if catalog is None else catalog.plans.get(facts["plan_id"])
        if plan is None:
            raise Rejected("offer", f"no plan {facts['plan_id']!r} in catalog {facts['catalog']}")
        return plan

    def _document_print(self, app: dict[str, Any]) -> str:
        document = app["identity_document"]
        return self.screener.document_print(document["type"], document["issuing_country"], document["number"])

    async def _application(self, run: OrderRun) -> dict[str, Any]:
        app = run.request["application"]
        facts = await self._decided(run, lambda: self._check_application(run, app))
        plan, credit = await self._decided_plan(facts), credit_from(facts["credit"])
        msisdn = parse_identity("msisdn", str(app["msisdn"]), "msisdn")
        imsi = parse_identity("imsi", str(app["imsi"]), "imsi") if app.get("imsi") else None

        customer_id = await self.orders.allocate(run.id, "customer_id", crm_keys.CUSTOMER_SEQ)
        doc_print = self._document_print(app)
        if not await self.screener.register(doc_print, customer_id):
            raise Rejected("customer", "this identity already has an active customer")

        def forget(pipe: Pipeline) -> None:
            pipe.delete(crm_keys.identity(doc_print))
            Customers.forget_in(pipe, customer_id)

        run.undo.append(forget)
        address, document = app["address"], app["identity_document"]
        customer: dict[str, Any] = {
            "kind": str(app["customer_kind"]),
            "created": run.decided_s,
            # what offers to new lines are checked against later
            "country": address["country"],
            "postal_code": address["postal_code"],
            "document_type": document["type"],
            "document_country": document["issuing_country"],
            "document_number": mask(str(document["number"])),
            # where invoices and billing notices go (postpaid)
            "email": str((app.get("contact") or {}).get("email") or ""),
        }
        if credit is not None:
            customer.update(
                credit_class=credit.credit_class,
                credit_limit=credit.credit_limit_micros,
                deposit=credit.deposit_micros,
                postpaid_allowed=int(credit.postpaid_allowed),
                max_lines=credit.max_lines,
            )
        await self.customers.create(customer_id, customer)
        unit_id = ""
        if app["customer_kind"] == "CORPORATE":
            unit_id = await self.orders.allocate(run.id, "unit_id", crm_keys.UNIT_SEQ)
            run.undo.append(lambda pipe: pipe.delete(crm_keys.unit(unit_id), crm_keys.units(customer_id)))
            await self.organisation.add_unit(customer_id, "", str(app["company"]["name"]), True, unit_id=unit_id)
        balance = int(app.get("initial_balance_micros", 0))
        return await self._open_line(run, customer_id, unit_id, plan, msisdn, imsi, balance, credit)

    async def _check_application(self, run: OrderRun, app: dict[str, Any]) -> dict[str, Any]:
        """Fields, screening, credit, offer, number: the plan and credit decided."""
        order, step = run.order, run.step
        today = datetime.fromtimestamp(run.decided_s, UTC).date()
        try:
            check_application(app, today)
            msisdn = parse_identity("msisdn", str(app.get("msisdn", "")), "msisdn")
            if app.get("imsi"):
                parse_identity("imsi", str(app["imsi"]), "imsi")
        except ApplicationInvalid as exc:
            order["problems"] = [list(p) for p in exc.problems]
            raise Rejected("application", "the application has invalid fields") from None
        except InvalidRequest as exc:
            order["problems"] = [[exc.field, exc.message]]
            raise Rejected("application", "the application has invalid fields") from None
        step("application", "accepted")

        doc_print = self._document_print(app)
        address = app["address"]
        addr_print = self.screener.address_print(address["country"], address["postal_code"], address["street"])
        screening = await self.screener.screen(run.id, doc_print, addr_print, run.decided_s)
        if not screening.approved:
            raise Rejected("screening", *screening.reasons)
        step("screening", "passed", *screening.reasons)

        credit = None
        if app.get("contract") == "POSTPAID":
            declared = CreditHistory(**{k: int(v) for k, v in (app.get("credit_history") or {}).items()})
            history = declared
            if self.bureau is not None:
                try:
                    history = await self.bureau.history(doc_print, declared)
                    step("bureau", "consulted")
                except BureauUnavailable as exc:
                    step("bureau", "unavailable", f"declared history used ({exc})")
            credit = decide(history)
            order.update(
                credit_class=credit.credit_class,
                credit_limit_micros=credit.credit_limit_micros,
                deposit_micros=credit.deposit_micros,
            )
            step("credit", f"class {credit.credit_class}", *credit.reasons)

        plan = self._plan(str(app.get("plan_id", "")))
        offered, refused = offers(
            [plan],
            country=address["country"],
            postal_code=address["postal_code"],
            coverage=(await self.coverage.current()).coverage,
            credit=credit,
            at_s=run.decided_s,
        )
        if not offered:
            raise Rejected("offer", *(r.reason for r in refused))
        step("offer", "available", plan.id)
        if await self._quarantined(msisdn.value, run.decided_s):
            raise Rejected("line", "the number is in quarantine after a termination")
        return {"plan_id": plan.id, "catalog": self.catalogs.current.version, "credit": credit_doc(credit)}

    async def _quarantined(self, msisdn: str, now_s: int) -> bool:
        until = await self.client.get(crm_keys.quarantine(msisdn))
        return until is not None and int(until) > now_s

    async def _open_line(
        self,
        run: OrderRun,
        customer_id: str,
        unit_id: str,
        plan: Plan,
        msisdn: Identity,
        imsi: Identity | None,
        initial_balance: int,
        credit: CreditDecision | None,
    ) -> dict[str, Any]:
        """Create the charging account (barred until the network acknowledges) and the
        line; the order goes IN_PROGRESS together with asking the network to activate it."""
        account_id = await self._account(run, msisdn, imsi, plan, initial_balance)
        if credit is not None:
            await self.client.hset(keys.account(account_id), "credit_limit", credit.credit_limit_micros)
        run.order.update(customer_id=customer_id, account_id=account_id, msisdn=msisdn.value)
        await self.client.hset(
            crm_keys.line(msisdn.value),
            mapping={
                "customer_id": customer_id,
                "account_id": account_id,
                "plan_id": plan.id,
                "state": LineState.PENDING_ACTIVATION.value,
                "order_id": run.id,
                "customer_type": plan.customer_type.value,
                "unit_id": unit_id,
            },
        )
        await push_once(self.client, crm_keys.customer_lines(customer_id), msisdn.value)
        run.step("line", "created", "pending activation")
        run.order["status"] = "IN_PROGRESS"
        run.step("provisioning", "requested", "ACTIVATE")

        def activate(pipe: Pipeline) -> None:
            self.worker.desire_in(pipe, msisdn.value, LineState.ACTIVE.value, plan.id)

        order = await self.orders.finish(run.order, activate)
        await self.customers.refresh_state(customer_id)  # one whose lines had all gone is pending again
        return order

    async def _account(
        self, run: OrderRun, msisdn: Identity, imsi: Identity | None, plan: Plan, initial_balance: int
    ) -> str:
        """The line's charging account: created once per order."""
        work = await self.orders.work(run.id)
        if work.get("account_id"):
            return work["account_id"]
        newest = str(await self.client.get(keys.ACCOUNT_SEQ) or 0)
        seq = await self.orders.note(run.id, "account_seq", newest, keep=True)
        if plan.customer_type.value.endswith("POSTPAID"):
            initial_balance = 0  # a postpaid line spends credit headroom, not money paid in advance
        try:
            account = await self.directory.create(
                msisdn, imsi, plan, initial_balance, status=CHARGING_STATUS[LineState.PENDING_ACTIVATION]
            )
            account_id = account.account_id
        except InvalidRequest as exc:
            run.order["problems"] = [[exc.field, exc.message]]
            raise Rejected("line", "the order has invalid fields") from None
        except Conflict as exc:
            found = await self._left_behind(run, msisdn, imsi, plan, int(seq))
            if found is None:
                raise Rejected("line", str(exc)) from None
            account_id = found
        return await self.orders.note(run.id, "account_id", account_id)

    async def _left_behind(
        self, run: OrderRun, msisdn: Identity, imsi: Identity | None, plan: Plan, seq: int
    ) -> str | None:
        """The account an interrupted run of this order created but did not record: it
        holds the number, is newer than the order's first try, was made for this line
        (number, SIM, plan) and no other order's line uses it."""
        holder = await self.client.get(keys.identity("msisdn", msisdn.value))
        if holder is None or not str(holder).isdigit() or int(holder) <= seq:
            return None
        account_id = str(holder)
        account = {str(k): str(v) for k, v in (await self.client.hgetall(keys.account(account_id))).items()}
        made_for = (account.get("msisdn"), account.get("imsi", ""), account.get("plan"))
        if made_for != (msisdn.value, imsi.value if imsi else "", plan.id):
            return None
        line = await self.get_line(msisdn.value)
        if line is not None and line["account_id"] == account_id and line.get("order_id") != run.id:
            return None
        if imsi is not None:
            # Directory.create claims the MSISDN, then the IMSI; the run may have stopped between.
            key = keys.identity("imsi", imsi.value)
            if not await self.client.set(key, account_id, nx=True) and await self.client.get(key) != account_id:
                await self.client.delete(keys.identity("msisdn", msisdn.value), keys.account(account_id))
                self.directory.forget(msisdn)
                raise Rejected("line", "imsi is already assigned to another subscriber")
        return account_id

    async def _new_line(self, run: OrderRun) -> dict[str, Any]:
        r = run.request
        facts = await self._decided(run, lambda: self._check_new_line(run))
        plan, credit = await self._decided_plan(facts), credit_from(facts["credit"])
        msisdn = parse_identity("msisdn", r["msisdn"], "msisdn")
        imsi = parse_identity("imsi", r["imsi"], "imsi") if r["imsi"] else None
        return await self._open_line(
            run, r["customer_id"], facts["unit_id"], plan, msisdn, imsi, int(r["initial_balance"]), credit
        )

    async def _check_new_line(self, run: OrderRun) -> dict[str, Any]:
        """The customer, unit, number and offer: the plan, credit and unit decided."""
        r = run.request
        customer_id, unit_id = str(r["customer_id"]), str(r["unit_id"])
        customer = {str(k): str(v) for k, v in (await self.client.hgetall(crm_keys.customer(customer_id))).items()}
        if not customer:
            raise Rejected("order", "no such customer")
        run.order["customer_id"] = customer_id
        if customer["kind"] == "CORPORATE":
            units = await self.organisation.units(customer_id)
            unit_id = unit_id or await self.organisation.root(customer_id)
            if unit_id not in units:
                raise Rejected("order", "org_unit_id is not a unit of this customer")
        try:
            msisdn = parse_identity("msisdn", r["msisdn"], "msisdn")
            if r["imsi"]:
                parse_identity("imsi", r["imsi"], "imsi")
        except InvalidRequest as exc:
            run.order["problems"] = [[exc.field, exc.message]]
            raise Rejected("order", "the order has invalid fields") from None
        if await self._quarantined(msisdn.value, run.decided_s):
            raise Rejected("line", "the number is in quarantine after a termination")
        plan = self._plan(str(r["plan_id"]))
        credit = None
        if "credit_class" in customer:
            credit = CreditDecision(
                points=0,
                credit_class=customer["credit_class"],
                credit_limit_micros=int(customer["credit_limit"]),
                deposit_micros=int(customer["deposit"]),
                postpaid_allowed=customer["postpaid_allowed"] == "1",
                max_lines=int(customer["max_lines"]),
                reasons=(),
            )
        offered, refused = offers(
            [plan],
            country=customer.get("country", ""),
            postal_code=customer.get("postal_code", ""),
            coverage=(await self.coverage.current()).coverage,
            credit=credit,
            at_s=run.decided_s,
        )
        if not offered:
            raise Rejected("offer", *(r.reason for r in refused))
        lines = await self.client.llen(crm_keys.customer_lines(customer_id))
        if credit is not None and plan.customer_type.value.endswith("POSTPAID") and lines >= credit.max_lines:
            raise Rejected(
                "offer", f"credit class {credit.credit_class} allows at most {credit.max_lines} postpaid line(s)"
            )
        run.step("offer", "available", plan.id)
        catalog = self.catalogs.current.version
        return {"plan_id": plan.id, "catalog": catalog, "credit": credit_doc(credit), "unit_id": unit_id}

    async def _line_order(self, run: OrderRun) -> dict[str, Any]:
        """Checks only reads until the order is decided, so a resumed run simply checks
        again; the line's new order and desired state are stored with the decision."""
        r, order = run.request, run.order
        msisdn, kind, plan_id, reason = str(r["msisdn"]), str(r["order"]), str(r["plan_id"]), str(r["reason"])
        line = await self.get_line(msisdn)
        if line is None:
            raise Rejected("order", "no such line")
        order.update(customer_id=line["customer_id"], account_id=line["account_id"], msisdn=msisdn)
        try:
            order_kind = OrderKind(kind)
            termination = TerminationReason(reason) if order_kind is OrderKind.TERMINATE else None
            move = accept(LineState(line["state"]), order_kind, termination)
        except InvalidTransition as exc:
            raise Rejected("order", str(exc)) from None
        except ValueError:
            raise Rejected("order", f"unknown order {kind!r} or termination reason {reason!r}") from None
        product = line["plan_id"]
        if order_kind is OrderKind.CHANGE_PRODUCT:
            plan = self.catalogs.current.plans.get(plan_id)
            current = self.catalogs.current.plans.get(product)
            if plan is None or (current is not None and plan.customer_type != current.customer_type):
                raise Rejected("order", f"plan {plan_id!r} is not a product this line can change to")
            product = plan.id
        run.step("order", "accepted", move.network_command)
        order["status"] = "IN_PROGRESS"
        run.step("provisioning", "requested", move.network_command)

        def provision(pipe: Pipeline) -> None:
            pipe.hset(crm_keys.line(msisdn), mapping={"order_id": run.id, "termination_reason": reason})
            self.worker.desire_in(pipe, msisdn, move.target.value, product)

        return await self.orders.finish(order, provision)

    async def acknowledged(self, msisdn: str, state: str, product: str = "") -> None:
        """The network acknowledged a line's state and product: charging, the line and
        the order follow."""
        if state not in {s.value for s in LineState}:
            return
        line_state = LineState(state)
        line = await self.get_line(msisdn)
        if line is None:
            return
        now_s = self.clock.now_ms() // 1000
        identity = Identity("msisdn", msisdn)
        await self.directory.set_status(identity, CHARGING_STATUS[line_state])
        updates: dict[Any, Any] = {"state": line_state.value}
        plan = self.catalogs.current.plans.get(product)
        if plan is not None and product != line["plan_id"]:
            await self.directory.set_plan(identity, plan)
            updates["plan_id"] = plan.id
        kind = line.get("customer_type", "MOBILE_PREPAID")
        if line_state is LineState.TERMINATED and line["state"] != LineState.TERMINATED.value:
            reason = TerminationReason(line.get("termination_reason") or "DISSATISFIED")
            await self.client.set(crm_keys.quarantine(msisdn), reusable_from(now_s, reason))
            if self.base is not None:
                await self.base.disconnected(kind, reason.value, now_s)
        if line_state is LineState.ACTIVE and line["state"] == LineState.PENDING_ACTIVATION.value and self.base:
            await self.base.added(kind, now_s)
        await self.client.hset(crm_keys.line(msisdn), mapping=updates)
        await self.customers.refresh_state(line["customer_id"])
        if self.billing is not None:
            await self._tell_billing(msisdn, line, line_state.value, str(updates.get("plan_id", line["plan_id"])))
        order = await self.orders.get(line["order_id"]) if line.get("order_id") else None
        if order is not None and order["status"] == "IN_PROGRESS":
            order["status"] = "COMPLETED"
            order["steps"].append(
                {"step": "provisioning", "outcome": "acknowledged", "reasons": [f"network state {state}"], "at": now_s}
            )
            await self.orders.save(order)

    async def _tell_billing(self, msisdn: str, line: dict[str, str], state: str, plan_id: str) -> None:
        """Postpaid billing hears of every acknowledged change, with who pays for the line."""
        assert self.billing is not None
        customer_id = line["customer_id"]
        customer = {str(k): str(v) for k, v in (await self.client.hgetall(crm_keys.customer(customer_id))).items()}
        paying, label = "", f"Customer {customer_id}"
        path: tuple[str, ...] = ()
        if line.get("unit_id"):
            units = await self.organisation.units(customer_id)
            if line["unit_id"] in units:
                paying = paying_unit(units, line["unit_id"])
                chain, at = [], units[line["unit_id"]]
                while True:
                    chain.append(at.name)
                    if not at.parent or at.parent not in units:
                        break
                    at = units[at.parent]
                path, label = tuple(reversed(chain)), chain[-1]
        await self.billing.line_changed(
            msisdn=msisdn,
            line=line,
            state=state,
            plan_id=plan_id,
            customer=customer,
            paying_unit=paying,
            unit_path=path,
            label=label,
        )

    async def aclose(self) -> None:
        """Close the network and credit bureau clients."""
        await self.worker.network.aclose()
        if self.bureau is not None:
            await self.bureau.aclose()

    async def get_order(self, order_id: str) -> dict[str, Any] | None:
        return await self.orders.get(order_id)

    async def get_line(self, msisdn: str) -> dict[str, str] | None:
        h = await self.client.hgetall(crm_keys.line(msisdn))
        return {str(k): str(v) for k, v in h.items()} or None
