"""Customer acquisition, wired: the CRM's orders from claim to decision, and back from
the network.

    SubmitApplication -> onboarding.py    (checks, screening, credit, offer, customer)
    SubmitOrder       -> line_orders.py   (a further line; orders on existing lines)
                         line_accounts.py (each new line's charging account, once)
    the network's acknowledgement -> acknowledgements.py (charging, line, order, billing)
                         quarantine.py    (terminated numbers rest before reuse)

Orders are idempotent on the CRM's order id: the same id returns the same order. Each
order is claimed in the order store (``orders.py``) and run (``runs.py``); a run
interrupted by a crash is resumed by the same order id submitted again once the run's
lease has passed, or by the ``order_resumer`` job's pass here (``resume_stalled``).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from charging.catalogs import CatalogBook
from charging.clock import Clock
from charging.database import Pool
from charging.errors import NotFound
from charging.subscribers import Directory
from provisioning.acknowledgements import Acknowledgements, LineBilling
from provisioning.base import CustomerBase
from provisioning.bureau import HttpCreditBureau
from provisioning.coverage import CoverageBook
from provisioning.customer_records import CustomerRecords
from provisioning.customers import Customers
from provisioning.line_accounts import LineAccounts
from provisioning.line_orders import LineOrderRequest, LineOrders, NewLineRequest
from provisioning.lines import Line, Lines
from provisioning.onboarding import Onboarding
from provisioning.order_store import OrderStore
from provisioning.orders import ORDER_LEASE_MS, Claim, Order, Orders, Superseded
from provisioning.organisation import Organisation
from provisioning.quarantine import Quarantine
from provisioning.runs import OrderRun, Rejected
from provisioning.screening import Screener
from provisioning.sealing import Sealer
from provisioning.worker import ProvisioningWorker

log = logging.getLogger("provisioning.acquisition")

APPLICATION = "APPLICATION"


class Acquisition:
    def __init__(
        self,
        client: aioredis.Redis,
        directory: Directory,
        catalogs: CatalogBook,
        screener: Screener,
        coverage: CoverageBook,
        worker: ProvisioningWorker,
        clock: Clock,
        base: CustomerBase | None = None,
        bureau: HttpCreditBureau | None = None,
        lease_ms: int = ORDER_LEASE_MS,
        *,
        sealer: Sealer,
        database: Pool | None = None,
    ) -> None:
        self.screener = screener
        self.sealer = sealer
        self.coverage = coverage
        self.worker = worker
        self.clock = clock
        self.base = base
        self.bureau = bureau
        self.orders = Orders(client, sealer, lease_ms, clock)
        # customers and their units in the system of record (PostgreSQL), the CRM API's source
        self.records = CustomerRecords(database, sealer, clock) if database is not None else None
        self.customers = Customers(client, screener, sealer, self.records)
        self.organisation = Organisation(client, self.records)
        self.store: OrderStore | None = None  # PostgreSQL's rows (``keep_records``)
        self.lines = Lines(client)
        quarantine = Quarantine(client)
        accounts = LineAccounts(directory, self.orders, self.lines)
        self.line_orders = LineOrders(
            catalogs=catalogs,
            coverage=coverage,
            worker=worker,
            orders=self.orders,
            customers=self.customers,
            organisation=self.organisation,
            lines=self.lines,
            accounts=accounts,
            quarantine=quarantine,
        )
        self.onboarding = Onboarding(
            catalogs=catalogs,
            coverage=coverage,
            screener=screener,
            bureau=bureau,
            orders=self.orders,
            customers=self.customers,
            organisation=self.organisation,
            quarantine=quarantine,
            line_orders=self.line_orders,
        )
        self.acknowledgements = Acknowledgements(
            directory=directory,
            catalogs=catalogs,
            clock=clock,
            orders=self.orders,
            customers=self.customers,
            organisation=self.organisation,
            lines=self.lines,
            quarantine=quarantine,
            base=base,
        )

    def recorded(self) -> CustomerRecords:
        """Customers and units as the system of record has them (what the CRM API and the
        console read); a server always has one."""
        if self.records is None:
            raise NotFound("no customer records here (no database)")
        return self.records

    def keep_records(self, store: OrderStore, hold_ms: int = 0) -> None:
        """Orders with their steps and lines' history as rows in PostgreSQL (the server
        and the worker process); the CRM reads them there. A decision's rows are written
        at once only when Redis holds nothing back (``hold_ms`` 0, ``charging/cdr_hold.py``):
        otherwise a machine death could take the decision from Redis and leave it in
        PostgreSQL, and the resumed run would decide again; the relay writes them after
        the hold instead."""
        self.store = store
        self.orders.write_rows = store.write_entries if hold_ms == 0 else None
        self.orders.decided_rows = store.get
        self.acknowledgements.store = store

    @property
    def billing(self) -> LineBilling | None:
        """Postpaid billing (postpaid/billing.py): told about every acknowledged line change."""
        return self.acknowledgements.billing

    @billing.setter
    def billing(self, billing: LineBilling | None) -> None:
        self.acknowledgements.billing = billing

    async def submit(self, order_id: str, app: dict[str, Any]) -> Order:
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
    ) -> Order:
        """A further line for an existing customer (under one of its units, if corporate),
        offered against the customer's address and credit class."""
        request = NewLineRequest(customer_id, unit_id, plan_id, msisdn_text, imsi_text, initial_balance)
        return await self._start(order_id, request.to_doc())

    async def order(self, order_id: str, msisdn: str, kind: str, plan_id: str = "", reason: str = "") -> Order:
        """An order on an existing line: change product, bar outgoing, suspend, resume,
        terminate (with a reason). Checked against the line's state, then provisioned."""
        request = LineOrderRequest(msisdn, kind, plan_id, reason)
        return await self._start(order_id, request.to_doc())

    async def acknowledged(self, msisdn: str, state: str, product: str = "") -> None:
        """The network acknowledged a line's state and product (the worker's ``on_ack``)."""
        await self.acknowledgements.acknowledged(msisdn, state, product)

    async def _start(self, order_id: str, request: dict[str, Any]) -> Order:
        """Claim the order id and run the order; the same id again returns the order, or
        resumes its run when that was interrupted (its lease has passed)."""
        claim = await self.orders.claim(order_id, request, self.clock.now_ms())
        if claim.outcome == "existing":
            return claim.order
        return await self._run(claim)

    async def resume_stalled(self, limit: int = 100) -> int:
        """Run again the orders whose run was interrupted; returns how many were run. The
        pass of the ``order_resumer`` job."""
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

    async def _run(self, claim: Claim) -> Order:
        run = OrderRun(claim, self.clock.now_ms() // 1000)
        kind = run.request["kind"]
        run.order = replace(run.order, kind=str(run.request["order"]) if kind == LineOrderRequest.KIND else kind)
        if claim.outcome == "resume":
            run.step("resumed", "after an interrupted run")
        try:
            if run.request["kind"] == APPLICATION:
                return await self.onboarding.run(run, run.request["application"])
            if run.request["kind"] == NewLineRequest.KIND:
                return await self.line_orders.new_line(run, NewLineRequest.from_doc(run.request))
            return await self.line_orders.change(run, LineOrderRequest.from_doc(run.request))
        except Rejected as exc:
            run.step(exc.step, "refused", *exc.reasons)
            run.order = replace(run.order, status="REJECTED")

            def undo(pipe: Pipeline) -> None:
                for take_back in run.undo:
                    take_back(pipe)

            try:
                return await self.orders.finish(run.order, undo)
            except Superseded:
                return await self.get_order(run.id) or run.order
        except Superseded:
            return await self.get_order(run.id) or run.order

    async def aclose(self) -> None:
        """Close the network and credit bureau clients."""
        await self.worker.network.aclose()
        if self.bureau is not None:
            await self.bureau.aclose()

    async def get_order(self, order_id: str) -> Order | None:
        """The order's rows; Redis's document while it runs (or when its rows could not be
        written at once: the relay writes them from the outbox)."""
        if self.store is not None and (order := await self.store.get(order_id)) is not None:
            return order
        return await self.orders.get(order_id)

    async def get_line(self, msisdn: str) -> Line | None:
        return await self.lines.get(msisdn)

    async def customer_lines(self, customer_id: str) -> list[Line]:
        """The customer's lines as the lines' history rows have them (Redis's list and
        hashes only where no database keeps the rows)."""
        if self.store is not None:
            return await self.store.all_lines_of(customer_id)
        return await self.lines.of_customer(customer_id)

    async def customer_lines_page(self, customer_id: str, after: int, size: int) -> tuple[list[Line], str]:
        """A page of ``customer_lines`` from the token ``after``, and the next token."""
        if self.store is not None:
            return await self.store.lines_of(customer_id, after, size)
        return await self.lines.page(customer_id, after, size)
