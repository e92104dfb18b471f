"""Postpaid billing, wired: billing accounts, bill runs, payments, collection and delivery,
and what happens when a postpaid line changes on the network.

``line_changed`` is called by acquisition once the network has acknowledged a line's
state or product: the first activation enrols the line (its charging account becomes
headroom against the credit limit), later changes join the line's history (rentals are
prorated on it), and a termination issues the line's final invoice (prorated rentals,
remaining usage, the deposit offset when it was the account's last line).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from charging import keys
from charging.catalogs import CatalogBook
from charging.clock import Clock
from charging.errors import NotFound
from charging.notifications import Notifier
from postpaid import periods
from postpaid.accounts import BillingAccounts, billing_account_id
from postpaid.bill_run import BillRun
from postpaid.collection import Collection, Lines
from postpaid.config import BillingConfig
from postpaid.invoices import MICROS_PER_MINOR, Invoice
from postpaid.payments import Payments

log = logging.getLogger("postpaid.billing")
Deliver = Callable[[Invoice], Awaitable[str]]
POSTPAID = ("MOBILE_POSTPAID", "FIXED_POSTPAID")


class Billing:
    def __init__(
        self,
        client: aioredis.Redis,
        config: BillingConfig,
        catalogs: CatalogBook,
        clock: Clock,
        notifier: Notifier | None = None,
        deliver: Deliver | None = None,
    ) -> None:
        self.client = client
        self.config = config
        self.clock = clock
        self.deliver = deliver
        self.accounts = BillingAccounts(client, config)
        self.runs = BillRun(client, self.accounts, config, catalogs, clock, on_issued=self._issued)
        self.payments = Payments(client, config, clock)
        self.collection = Collection(client, self.accounts, config, clock, notifier=notifier)
        self.payments.on_change = self._reevaluate

    def attach_lines(self, lines: Lines) -> None:
        """Collection orders lines through the line lifecycle (acquisition)."""
        self.collection.lines = lines

    async def _reevaluate(self, ba: str) -> None:
        await self.collection.evaluate(ba)

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
    ) -> None:
        if line.get("customer_type") not in POSTPAID:
            return
        account_id = line["account_id"]
        now_s = self.clock.now_ms() // 1000
        ba = await self.accounts.billed_to(account_id)
        if ba is None:
            if state != "active":
                return
            ba = billing_account_id(line["customer_id"], paying_unit)
            await self.accounts.enrol(
                ba,
                account_id=account_id,
                line=msisdn,
                customer_id=line["customer_id"],
                label=label,
                unit_path=unit_path,
                plan_id=plan_id,
                credit_limit_micros=int(customer.get("credit_limit", 0)),
                deposit_minor=int(customer.get("deposit", 0)) // MICROS_PER_MINOR,
                at_s=now_s,
            )
            return
        await self.accounts.record_change(account_id, now_s, state, plan_id)
        if state == "terminated":
            await self.final_invoice(ba, account_id)

    async def final_invoice(self, ba: str, account_id: str) -> str | None:
        """The final invoice of a terminated line, then the line leaves the account."""
        lines = [x for x in await self.accounts.lines(ba) if x.account_id == account_id]
        if not lines:
            return None
        info = await self.accounts.get(ba)
        period = periods.by_id(info["next_period"], int(info["cycle_day"]), info["time_zone"])
        number = await self.runs.invoice(ba, info, period, lines, self.clock.now_ms() // 1000, final_line=account_id)
        await self.client.hdel(keys.billing_lines(ba), account_id)
        return number

    async def _issued(self, number: str) -> None:
        if self.deliver is None:
            return
        try:
            outcome = await self.deliver(await self.invoice(number))
        except Exception:  # delivery is retried by ResendInvoice; the invoice stands
            log.exception("invoice delivery failed")
            outcome = "FAILED"
        await self.client.hset(keys.invoice_state(number), "delivery", outcome)

    async def invoice(self, number: str) -> Invoice:
        text = await self.client.get(keys.invoice(number))
        if text is None:
            raise NotFound("no such invoice")
        return Invoice.from_json(str(text))

    async def invoice_state(self, number: str) -> dict[str, str]:
        h = await self.client.hgetall(keys.invoice_state(number))
        if not h:
            raise NotFound("no such invoice")
        return {str(k): str(v) for k, v in h.items()}

    async def resend(self, number: str) -> str:
        await self.invoice(number)
        await self._issued(number)
        return (await self.invoice_state(number))["delivery"]

    async def invoices_of(self, ba: str) -> list[str]:
        return [str(x) for x in await self.client.lrange(keys.billing_invoices(ba), 0, -1)]

    async def account(self, ba: str) -> dict[str, Any]:
        info = await self.accounts.get(ba)
        if not info:
            raise NotFound("no such billing account")
        return {**info, "lines": [x.line for x in await self.accounts.lines(ba)]}
