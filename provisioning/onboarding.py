"""Onboarding: an application becomes a customer with its first line.

    application checks -> identity and fraud screening -> credit class (postpaid)
      -> the product is among the offers -> the number is not in quarantine
      -> customer (its identity registered), the company's root unit (corporate)
      -> charging account and line (``line_orders.open_line``)

Each step is recorded on the order with its outcome and reasons; a refusal at any step
rejects the order, says why and takes back what the run made. The checks are decided
once (``Orders.decided``) and rules apply as of the submission, also when a run
interrupted by a crash is resumed later; every step that makes something (the customer
id, the identity's registration, the root unit) finds what an earlier run of the same
order made instead of making it again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from redis.asyncio.client import Pipeline

from charging.catalogs import CatalogBook
from charging.errors import InvalidRequest
from charging.subscribers import parse_identity
from provisioning import keys
from provisioning.applications import ApplicationInvalid, check_application, customer_name
from provisioning.bureau import BureauUnavailable, HttpCreditBureau
from provisioning.coverage import CoverageBook
from provisioning.credit import CreditHistory, decide
from provisioning.customers import Customer, Customers, mask
from provisioning.line_orders import LineOrders, decided_plan, plan_in_force
from provisioning.offers import offers
from provisioning.orders import Order, Orders
from provisioning.organisation import Organisation
from provisioning.quarantine import Quarantine
from provisioning.runs import Decision, OrderRun, Rejected
from provisioning.screening import Screener


@dataclass
class Onboarding:
    catalogs: CatalogBook
    coverage: CoverageBook
    screener: Screener
    bureau: HttpCreditBureau | None
    orders: Orders
    customers: Customers
    organisation: Organisation
    quarantine: Quarantine
    line_orders: LineOrders

    def _document_print(self, app: dict[str, Any]) -> str:
        document = app["identity_document"]
        return self.screener.document_print(document["type"], document["issuing_country"], document["number"])

    async def run(self, run: OrderRun, app: dict[str, Any]) -> Order:
        """Run an application (the document as the CRM sent it, checked field by field)."""
        decision = await run.decided(self.orders, lambda: self._check(run, app))
        plan, credit = await decided_plan(self.catalogs, decision), decision.credit
        msisdn = parse_identity("msisdn", str(app["msisdn"]), "msisdn")
        imsi = parse_identity("imsi", str(app["imsi"]), "imsi") if app.get("imsi") else None

        customer_id = await self.orders.allocate(run.id, "customer_id", keys.CUSTOMER_SEQ)
        doc_print = self._document_print(app)
        if not await self.screener.register(doc_print, customer_id):
            raise Rejected("customer", "this identity already has an active customer")

        def forget(pipe: Pipeline) -> None:
            self.screener.unregister_in(pipe, doc_print)
            self.customers.forget_in(pipe, customer_id, customer_name(app))

        run.undo.append(forget)
        address, document = app["address"], app["identity_document"]
        customer = Customer(
            id=customer_id,
            kind=str(app["customer_kind"]),
            created=run.decided_s,
            # who invoices are addressed to (postpaid)
            name=customer_name(app),
            street=str(address["street"]).strip(),
            city=str(address["city"]).strip(),
            # what offers to new lines are checked against later
            country=address["country"],
            postal_code=address["postal_code"],
            document_type=document["type"],
            document_country=document["issuing_country"],
            document_number=mask(str(document["number"])),
            # where invoices and billing notices go (postpaid)
            email=str((app.get("contact") or {}).get("email") or ""),
            credit=credit,
        )
        await self.customers.create(customer)
        try:
            unit_id = ""
            if app["customer_kind"] == "CORPORATE":
                unit_id = await self.orders.allocate(run.id, "unit_id", keys.UNIT_SEQ)
                run.undo.append(lambda pipe: Organisation.forget_in(pipe, customer_id, unit_id))
                await self.organisation.add_unit(customer_id, "", str(app["company"]["name"]), True, unit_id=unit_id)
            balance = int(app.get("initial_balance_micros", 0))
            return await self.line_orders.open_line(run, customer_id, unit_id, plan, msisdn, imsi, balance, credit)
        except Rejected:
            await self.customers.withdraw(customer_id)  # in the system of record; Redis's copy by undo
            raise

    async def _check(self, run: OrderRun, app: dict[str, Any]) -> Decision:
        """Fields, screening, credit, offer, number: the plan and credit decided."""
        step = run.step
        today = datetime.fromtimestamp(run.decided_s, UTC).date()
        try:
            check_application(app, today)
            msisdn = parse_identity("msisdn", str(app.get("msisdn", "")), "msisdn")
            if app.get("imsi"):
                parse_identity("imsi", str(app["imsi"]), "imsi")
        except ApplicationInvalid as exc:
            run.problems(*exc.problems)
            raise Rejected("application", "the application has invalid fields") from None
        except InvalidRequest as exc:
            run.problems((exc.field, exc.message))
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
            run.order = replace(
                run.order,
                credit_class=credit.credit_class,
                credit_limit_micros=credit.credit_limit_micros,
                deposit_micros=credit.deposit_micros,
            )
            step("credit", f"class {credit.credit_class}", *credit.reasons)

        plan = plan_in_force(self.catalogs, str(app.get("plan_id", "")))
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
        if await self.quarantine.holds(msisdn.value, run.decided_s):
            raise Rejected("line", "the number is in quarantine after a termination")
        return Decision(plan.id, self.catalogs.current.version, credit)
