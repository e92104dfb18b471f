"""Customer acquisition: an application becomes a customer, an account and a line that is
activated on the network; charging starts once the network acknowledges.

    application checks -> identity and fraud screening -> credit class (postpaid)
      -> the product is among the offers -> customer, charging account (barred while
      pending), line -> provisioning: desired state "active" -> network ACTIVATE
      -> acknowledged: line active, charging status active, order completed

Orders on existing lines (change product, bar outgoing, suspend, resume, terminate) are
checked against the line's state (``lifecycle.py``) and provisioned the same way; a
terminated number is quarantined before it can be given out again. Each step is recorded
on the order with its outcome and reasons; a refusal at any step
rejects the order and says why. Orders are idempotent on the CRM's order id: the same id
returns the same order. The credit limit of a postpaid account is stored on the
charging account (``credit_limit``) for postpaid charging.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis

from charging import keys
from charging.catalog import Plan
from charging.catalogs import CatalogBook
from charging.clock import Clock
from charging.errors import Conflict, InvalidRequest
from charging.subscribers import Directory, Identity, parse_identity
from provisioning.applications import ApplicationInvalid, check_application
from provisioning.base import CustomerBase
from provisioning.bureau import BureauUnavailable, HttpCreditBureau
from provisioning.credit import CreditDecision, CreditHistory, decide
from provisioning.customers import Organisation
from provisioning.lifecycle import (
    CHARGING_STATUS,
    InvalidTransition,
    LineState,
    OrderKind,
    TerminationReason,
    accept,
    reusable_from,
)
from provisioning.offers import Coverage, offers
from provisioning.screening import Screener
from provisioning.worker import ProvisioningWorker

CUSTOMER_SEQ = "crm:seq:customer"


def order_key(order_id: str) -> str:
    return "crm:order:" + order_id


def line_key(msisdn: str) -> str:
    return "crm:line:" + msisdn


def quarantine_key(msisdn: str) -> str:
    """When a terminated number may be given out again (Unix time, s)."""
    return "crm:quarantine:" + msisdn


class OrderRun:
    """One order being processed: its document, the steps recorded on it, rejection."""

    def __init__(self, acquisition: Acquisition, order_id: str, now_s: int) -> None:
        self.acquisition = acquisition
        self.now_s = now_s
        self.order: dict[str, Any] = {"crm_order_id": order_id, "status": "SUBMITTED", "problems": [], "steps": []}

    async def claim(self) -> bool:
        """Take the order id; False when it was submitted before (orders are idempotent)."""
        text = json.dumps(self.order)
        return bool(await self.acquisition.client.set(order_key(self.order["crm_order_id"]), text, nx=True))

    def step(self, name: str, outcome: str, *reasons: str) -> None:
        self.order["steps"].append({"step": name, "outcome": outcome, "reasons": list(reasons), "at": self.now_s})

    async def reject(self, name: str, *reasons: str) -> dict[str, Any]:
        self.step(name, "refused", *reasons)
        self.order["status"] = "REJECTED"
        await self.acquisition._save(self.order)
        return self.order


@dataclass
class Acquisition:
    client: aioredis.Redis
    directory: Directory
    catalogs: CatalogBook
    screener: Screener
    coverage: Coverage
    worker: ProvisioningWorker
    clock: Clock
    base: CustomerBase | None = None
    bureau: HttpCreditBureau | None = None

    @property
    def organisation(self) -> Organisation:
        return Organisation(self.client)

    async def submit(self, order_id: str, app: dict[str, Any]) -> dict[str, Any]:
        """Process one application; returns the order document."""
        now_s = self.clock.now_ms() // 1000
        run = OrderRun(self, order_id, now_s)
        if not await run.claim():
            return await self.get_order(order_id) or run.order
        order, step, reject = run.order, run.step, run.reject

        today = datetime.fromtimestamp(now_s, UTC).date()
        try:
            check_application(app, today)
            msisdn = parse_identity("msisdn", str(app.get("msisdn", "")), "msisdn")
            imsi = parse_identity("imsi", str(app["imsi"]), "imsi") if app.get("imsi") else None
        except ApplicationInvalid as exc:
            order["problems"] = [list(p) for p in exc.problems]
            return await reject("application", "the application has invalid fields")
        except Exception as exc:  # parse_identity: InvalidRequest
            order["problems"] = [[getattr(exc, "field", "msisdn"), getattr(exc, "message", str(exc))]]
            return await reject("application", "the application has invalid fields")
        step("application", "accepted")

        document = app["identity_document"]
        doc_print = self.screener.document_print(document["type"], document["issuing_country"], document["number"])
        address = app["address"]
        addr_print = self.screener.address_print(address["country"], address["postal_code"], address["street"])
        screening = await self.screener.screen(order_id, doc_print, addr_print, now_s)
        if not screening.approved:
            return await reject("screening", *screening.reasons)
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

        plan = self.catalogs.current.plans.get(str(app.get("plan_id", "")))
        if plan is None:
            return await reject("offer", f"no plan {app.get('plan_id')!r} in the catalog")
        offered, refused = offers(
            [plan],
            country=address["country"],
            postal_code=address["postal_code"],
            coverage=self.coverage,
            credit=credit,
            at_s=now_s,
        )
        if not offered:
            return await reject("offer", *(r.reason for r in refused))
        step("offer", "available", plan.id)

        if await self._quarantined(msisdn.value, now_s):
            return await reject("line", "the number is in quarantine after a termination")
        customer_id = str(await self.client.incr(CUSTOMER_SEQ))
        if not await self.screener.register(doc_print, customer_id):
            return await reject("customer", "this identity already has an active customer")
        customer: dict[Any, Any] = {
            "kind": str(app["customer_kind"]),
            "created": now_s,
            # what offers to new lines are checked against later
            "country": address["country"],
            "postal_code": address["postal_code"],
        }
        if credit is not None:
            customer.update(
                credit_class=credit.credit_class,
                credit_limit=credit.credit_limit_micros,
                deposit=credit.deposit_micros,
                postpaid_allowed=int(credit.postpaid_allowed),
                max_lines=credit.max_lines,
            )
        await self.client.hset(f"crm:customer:{customer_id}", mapping=customer)
        unit_id = ""
        if app["customer_kind"] == "CORPORATE":
            unit = await self.organisation.add_unit(customer_id, "", str(app["company"]["name"]), True)
            unit_id = unit.id
        opened = await self._open_line(
            run, customer_id, unit_id, plan, msisdn, imsi, int(app.get("initial_balance_micros", 0)), credit
        )
        if not opened:
            await self.client.delete(f"crm:identity:{doc_print}")
        return order

    async def _quarantined(self, msisdn: str, now_s: int) -> bool:
        until = await self.client.get(quarantine_key(msisdn))
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
    ) -> bool:
        """Create the charging account (barred until the network acknowledges) and the
        line, and ask the network to activate it. False when the number is taken."""
        try:
            account = await self.directory.create(
                msisdn, imsi, plan, initial_balance, status=CHARGING_STATUS[LineState.PENDING_ACTIVATION]
            )
        except Conflict as exc:
            await run.reject("line", str(exc))
            return False
        if credit is not None:
            await self.client.hset(keys.account(account.account_id), "credit_limit", credit.credit_limit_micros)
        run.order.update(customer_id=customer_id, account_id=account.account_id, msisdn=msisdn.value)
        await self.client.hset(
            line_key(msisdn.value),
            mapping={
                "customer_id": customer_id,
                "account_id": account.account_id,
                "plan_id": plan.id,
                "state": LineState.PENDING_ACTIVATION.value,
                "order_id": run.order["crm_order_id"],
                "customer_type": plan.customer_type.value,
                "unit_id": unit_id,
            },
        )
        await self.client.rpush(f"crm:lines:{customer_id}", msisdn.value)
        run.step("line", "created", "pending activation")
        await self.worker.desire(msisdn.value, LineState.ACTIVE.value, plan.id)
        run.order["status"] = "IN_PROGRESS"
        run.step("provisioning", "requested", "ACTIVATE")
        await self._save(run.order)
        return True

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
        now_s = self.clock.now_ms() // 1000
        run = OrderRun(self, order_id, now_s)
        if not await run.claim():
            return await self.get_order(order_id) or run.order
        customer = {str(k): str(v) for k, v in (await self.client.hgetall(f"crm:customer:{customer_id}")).items()}
        if not customer:
            return await run.reject("order", "no such customer")
        run.order["customer_id"] = customer_id
        if customer["kind"] == "CORPORATE":
            units = await self.organisation.units(customer_id)
            unit_id = unit_id or await self.organisation.root(customer_id)
            if unit_id not in units:
                return await run.reject("order", "org_unit_id is not a unit of this customer")
        try:
            msisdn = parse_identity("msisdn", msisdn_text, "msisdn")
            imsi = parse_identity("imsi", imsi_text, "imsi") if imsi_text else None
        except InvalidRequest as exc:
            run.order["problems"] = [[exc.field, exc.message]]
            return await run.reject("order", "the order has invalid fields")
        if await self._quarantined(msisdn.value, now_s):
            return await run.reject("line", "the number is in quarantine after a termination")
        plan = self.catalogs.current.plans.get(plan_id)
        if plan is None:
            return await run.reject("offer", f"no plan {plan_id!r} in the catalog")
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
            coverage=self.coverage,
            credit=credit,
            at_s=now_s,
        )
        if not offered:
            return await run.reject("offer", *(r.reason for r in refused))
        lines = await self.client.llen(f"crm:lines:{customer_id}")
        if credit is not None and plan.customer_type.value.endswith("POSTPAID") and lines >= credit.max_lines:
            return await run.reject(
                "offer", f"credit class {credit.credit_class} allows at most {credit.max_lines} postpaid line(s)"
            )
        run.step("offer", "available", plan.id)
        await self._open_line(run, customer_id, unit_id, plan, msisdn, imsi, initial_balance, credit)
        return run.order

    async def order(self, order_id: str, msisdn: str, kind: str, plan_id: str = "", reason: str = "") -> dict[str, Any]:
        """An order on an existing line: change product, bar outgoing, suspend, resume,
        terminate (with a reason). Checked against the line's state, then provisioned."""
        now_s = self.clock.now_ms() // 1000
        run = OrderRun(self, order_id, now_s)
        if not await run.claim():
            return await self.get_order(order_id) or run.order
        order, step, reject = run.order, run.step, run.reject

        line = await self.get_line(msisdn)
        if line is None:
            return await reject("order", "no such line")
        order.update(customer_id=line["customer_id"], account_id=line["account_id"], msisdn=msisdn)
        try:
            order_kind = OrderKind(kind)
            termination = TerminationReason(reason) if order_kind is OrderKind.TERMINATE else None
            move = accept(LineState(line["state"]), order_kind, termination)
        except InvalidTransition as exc:
            return await reject("order", str(exc))
        except ValueError:
            return await reject("order", f"unknown order {kind!r} or termination reason {reason!r}")
        product = line["plan_id"]
        if order_kind is OrderKind.CHANGE_PRODUCT:
            plan = self.catalogs.current.plans.get(plan_id)
            current = self.catalogs.current.plans.get(product)
            if plan is None or (current is not None and plan.customer_type != current.customer_type):
                return await reject("order", f"plan {plan_id!r} is not a product this line can change to")
            product = plan.id
        step("order", "accepted", move.network_command)
        await self.client.hset(line_key(msisdn), mapping={"order_id": order_id, "termination_reason": reason})
        await self.worker.desire(msisdn, move.target.value, product)
        order["status"] = "IN_PROGRESS"
        step("provisioning", "requested", move.network_command)
        await self._save(order)
        return order

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
            await self.client.set(quarantine_key(msisdn), reusable_from(now_s, reason))
            if self.base is not None:
                await self.base.disconnected(kind, reason.value, now_s)
        if line_state is LineState.ACTIVE and line["state"] == LineState.PENDING_ACTIVATION.value and self.base:
            await self.base.added(kind, now_s)
        await self.client.hset(line_key(msisdn), mapping=updates)
        order = await self.get_order(line["order_id"]) if line.get("order_id") else None
        if order is not None and order["status"] == "IN_PROGRESS":
            order["status"] = "COMPLETED"
            order["steps"].append(
                {"step": "provisioning", "outcome": "acknowledged", "reasons": [f"network state {state}"], "at": now_s}
            )
            await self._save(order)

    async def aclose(self) -> None:
        """Close the network and credit bureau clients."""
        await self.worker.network.aclose()
        if self.bureau is not None:
            await self.bureau.aclose()

    async def get_order(self, order_id: str) -> dict[str, Any] | None:
        text = await self.client.get(order_key(order_id))
        return None if text is None else dict(json.loads(text))

    async def get_line(self, msisdn: str) -> dict[str, str] | None:
        h = await self.client.hgetall(line_key(msisdn))
        return {str(k): str(v) for k, v in h.items()} or None

    async def _save(self, order: dict[str, Any]) -> None:
        await self.client.set(order_key(order["crm_order_id"]), json.dumps(order))
