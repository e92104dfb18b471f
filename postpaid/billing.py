"""Postpaid billing, wired: billing accounts, bill runs, payments, collection and delivery,
and what happens when a postpaid line changes on the network.

``line_changed`` is called by provisioning (``provisioning/acknowledgements.py``) with
the line's and its customer's records once the network has acknowledged a line's
state or product: the first activation enrols the line (its charging account becomes
headroom against the credit limit), later changes join the line's history (rentals are
prorated on it), and a termination issues the line's final invoice (prorated rentals,
remaining usage, the deposit offset when it was the account's last line).

Issuing an invoice queues it for delivery in the same script (its account's shard's
queue, ``{bill.<n>}:deliver``); ``deliver_pending`` renders and sends what every shard
has queued, records the outcome on the invoice, and takes it off the queue only then:
delivery is at least once, never lost, and a bill run never waits for rendering or a
mail server. ``resend`` queues it again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from charging import keys, metrics
from charging.catalogs import CatalogBook
from charging.clock import Clock
from charging.cluster_link import ClusterLink
from charging.database import Pool
from charging.errors import NotFound
from charging.money import to_minor
from charging.notifications import Notifier
from charging.redis_link import RedisLink
from charging.security.identity import caller_name
from charging.settings import Settings
from charging.store import storage_errors
from postpaid import keys as bill_keys
from postpaid import periods
from postpaid.accounts import BillingAccounts, billing_account_id
from postpaid.bill_run import BillRun, Stale
from postpaid.collection import Collection, Lines
from postpaid.config import BillingConfig, load
from postpaid.delivery import (
    Delivery,
    DeliveryResult,
    DirectoryDelivery,
    RenderedInvoice,
    SmtpDelivery,
    SmtpSettings,
)
from postpaid.dunning_record import DunningRecord
from postpaid.invoice_book import InvoiceBook
from postpaid.invoices import Invoice
from postpaid.payments import IDEMPOTENCY_TTL_S, Payments
from postpaid.scripts import DELIVERED, PREPAID_CLOSE, REDELIVER, DeliveredArgs, PrepaidCloseArgs, RedeliverArgs
from provisioning.customers import Customer
from provisioning.lines import Line
from provisioning.sealing import Sealer, load_sealer

log = logging.getLogger("postpaid.billing")
POSTPAID = ("MOBILE_POSTPAID", "FIXED_POSTPAID")
# Passes an invoice may wait for a channel that fails for a reason that may pass (with the
# billing jobs every minute: about a day).
DELIVERY_ATTEMPTS = 1440
DELIVERY_LEASE_MS = 120_000


class DeliveryStalled(Exception):
    """A delivery pass tried queued invoices and could deliver none (a mail server down)."""


class Billing:
    def __init__(
        self,
        client: aioredis.Redis,
        config: BillingConfig,
        catalogs: CatalogBook,
        clock: Clock,
        notifier: Notifier | None = None,
        deliveries: Sequence[tuple[str, Delivery]] = (),
        link: RedisLink | ClusterLink | None = None,
        *,
        database: Pool,
        sealer: Sealer,
        idempotency_ttl_s: int = IDEMPOTENCY_TTL_S,
    ) -> None:
        self.client = client
        # Issued invoices live in the system of record (PostgreSQL); who they are addressed
        # to is sealed there and in the billing account (``sealer``).
        self.book = InvoiceBook(database, config.issuer.id, config.issuer.number_prefix, sealer)
        self.config = config
        self.clock = clock
        self.deliveries = tuple(deliveries)
        self._retried = 0  # invoices whose delivery is to be tried again, counted for deliver_queued
        self.accounts = BillingAccounts(client, config, sealer)
        self.runs = BillRun(client, self.accounts, config, catalogs, clock, self.book, link)
        self.payments = Payments(client, config, clock, self.book, idempotency_ttl_s)
        self.collection = Collection(
            client,
            self.accounts,
            config,
            clock,
            notifier=notifier,
            record=DunningRecord(database),
            ledger=self.payments.ledger,
        )
        self.payments.on_change = self._reevaluate
        # Set by the server: told the account when a script left an audit entry in its
        # record outbox (a prepaid closure), so the relay moves it soon.
        self.on_records: Callable[[str], None] | None = None

    def attach_lines(self, lines: Lines) -> None:
        """Collection orders lines through the line lifecycle (acquisition)."""
        self.collection.lines = lines

    async def _reevaluate(self, ba: str) -> None:
        await self.collection.evaluate(ba)

    async def credit_changed(self, account_ids: Sequence[str], credit_limit_micros: int) -> None:
        """A customer's credit class changed: the billing accounts its lines (``account_ids``)
        are billed to take its new credit limit, shared over their lines; again, the same."""
        done: set[str] = set()
        for account_id in account_ids:
            ba = await self.accounts.billed_to(account_id)
            if ba is not None and ba not in done:
                done.add(ba)
                await self.accounts.set_credit_limit(ba, credit_limit_micros)

    async def line_changed(
        self,
        *,
        line: Line,
        state: str,
        plan_id: str,
        customer: Customer,
        paying_unit: str,
        unit_path: tuple[str, ...],
        label: str,
    ) -> None:
        account_id = line.account_id
        now_s = self.clock.now_ms() // 1000
        if line.customer_type not in POSTPAID:
            if state == "terminated":
                await self.close_prepaid(account_id, now_s)
            return
        ba = await self.accounts.billed_to(account_id)
        if ba is None:
            if state != "active":
                return
            ba = await self.accounts.open_account_for(billing_account_id(line.customer_id, paying_unit))
            await self.accounts.enrol(
                ba,
                account_id=account_id,
                line=line.msisdn,
                customer_id=line.customer_id,
                label=label,
                unit_path=unit_path,
                plan_id=plan_id,
                credit_limit_micros=customer.credit_limit_micros,
                deposit_minor=to_minor(customer.deposit_micros),
                at_s=now_s,
                email=customer.email,
                name=customer.name,
                address=postal_address(customer, home=self.config.issuer.iban[:2]),
            )
            return
        await self.accounts.record_change(account_id, now_s, state, plan_id)
        if state == "terminated":
            await self.final_invoice(ba, account_id)

    async def close_prepaid(self, account_id: str, now_s: int) -> int:
        """A terminated prepaid line's remaining money: recorded once with the policy of
        the billing settings, and audited. Returns the closing balance (micros)."""
        policy = self.config.prepaid_termination
        script_keys = (keys.account(account_id), keys.cdr_outbox(account_id))
        reply = await PREPAID_CLOSE(self.client, script_keys, PrepaidCloseArgs(policy, now_s, caller_name()))
        if reply[0] == "UNKNOWN":
            return 0
        if reply[0] == "DONE" and self.on_records is not None:
            self.on_records(account_id)  # the closure's audit entry is in the account's record outbox
        return int(reply[1])

    async def final_invoice(self, ba: str, account_id: str) -> str | None:
        """The final invoice of a terminated line, then the line leaves the account."""
        now_s = self.clock.now_ms() // 1000
        try:
            for _attempt in range(5):
                # Periods that ended before the termination are billed first, as usual (the
                # line's usage in them is on their invoices); the final invoice covers the
                # period running.
                await self.runs.bill_due(ba, now_s)
                lines = [x for x in await self.accounts.lines(ba) if x.account_id == account_id]
                if not lines:
                    return None
                info = await self.accounts.get(ba)
                period = periods.by_id(info["next_period"], int(info["cycle_day"]), info["time_zone"])
                try:
                    # settle.lua takes the line off the account when it settles the final invoice.
                    return await self.runs.invoice(ba, info, period, lines, now_s, final_line=account_id)
                except Stale:
                    continue
            raise RuntimeError("the billing account kept changing while the final invoice was issued")
        finally:
            await self.accounts.share_credit_limit(ba)  # the lines left share the whole limit

    async def deliver_pending(self, limit: int = 100) -> int:
        """Deliver queued invoices (oldest first); returns how many left the queue. An
        invoice whose delivery failed for a reason that may pass (the mail server is down)
        goes to the back of the queue for a later pass, so it never holds up the others,
        and is recorded FAILED after ``DELIVERY_ATTEMPTS``; one that cannot succeed is
        recorded FAILED at once."""
        handled = 0
        left: dict[int, set[str]] = {}  # the invoices that left the queue, by shard
        for shard, queue in enumerate(bill_keys.DELIVERY_QUEUES):
            for raw in await self.client.lrange(queue, 0, limit - 1):
                if await self._deliver_listed(shard, str(raw)):
                    handled += 1
                    left.setdefault(shard, set()).add(str(raw))
        # Delivered (or given up) and paid: those invoices' states may go (settled.py);
        # only these: the shards' backlog is the billing_applications job's.
        for shard, numbers in sorted(left.items()):
            await self.payments.settled.sweep_invoices(shard, numbers)
        if handled and not self.deliveries:
            log.warning(
                "invoices issued with no delivery channel configured: they stay PENDING",
                extra={"invoices": handled, "configure": "CHARGING_SMTP_HOST or CHARGING_INVOICE_DIR"},
            )
        return handled

    async def deliver_queued(self) -> None:
        """The pass of the ``invoice_delivery`` job: ``deliver_pending``, failing
        (``DeliveryStalled``) when it tried invoices and each is to be tried again, so that
        a mail server that is down shows in the job's metrics. The invoices stay queued."""
        before = self._retried
        handled = await self.deliver_pending()
        if self._retried > before and not handled:
            raise DeliveryStalled(f"no queued invoice could be delivered ({self._retried - before} to retry)")

    async def _deliver_listed(self, shard: int, number: str) -> int:
        """Deliver an invoice this pass listed on its shard's queue, under its lease; 1
        when it left the queue."""
        # One process at a time delivers an invoice (several may run the billing jobs).
        lease = bill_keys.delivery_lease(shard, number)
        if not await self.client.set(lease, "1", nx=True, px=DELIVERY_LEASE_MS):
            return 0
        try:
            # Still queued? Another pass may have delivered it (and the sweep dropped its
            # state) since this one listed the queue: it is not delivered twice.
            if await self.client.lpos(bill_keys.DELIVERY_QUEUES[shard], number) is None:
                return 0
            return await self._deliver_queued(shard, number)
        finally:
            await self.client.delete(lease)

    async def _deliver_queued(self, shard: int, number: str) -> int:
        """Deliver one queued invoice; 1 when it left the queue."""
        try:
            outcome = await self.deliver(number)
        except Exception:
            log.exception("invoice delivery failed")
            outcome = "RETRYING"
        if outcome == "RETRYING":
            self._retried += 1
            # Only on a state Redis still holds (redeliver.lua): a pass that raced another
            # makes no partial state and queues no settled invoice again.
            retry_keys = (
                bill_keys.invoice_state_in(shard, number),
                bill_keys.DELIVERY_QUEUES[shard],
                bill_keys.SETTLED_SETS[shard],
            )
            with storage_errors():
                reply = await REDELIVER(self.client, retry_keys, RedeliverArgs(number, DELIVERY_ATTEMPTS))
            return 0 if str(reply) == "AGAIN" else 1
        async with self.client.pipeline(transaction=True) as pipe:
            # Off the queue, and a candidate to leave Redis if it is paid (settled.py).
            pipe.lrem(bill_keys.DELIVERY_QUEUES[shard], 1, number)
            pipe.sadd(bill_keys.SETTLED_SETS[shard], number)
            await pipe.execute()
        return 1

    async def deliver(self, number: str, again: bool = False) -> str:
        """Render the invoice and send it on every configured channel it has not reached
        yet (``again``: on every channel); the outcome is recorded on the invoice:
        DELIVERED, RETRYING (a failure that may pass) or FAILED, with the reasons."""
        inv = await self.invoice(number)
        if not self.deliveries:
            # Nothing would ever send it: counted here, logged once per delivery pass, for an
            # operator to configure a channel (CHARGING_SMTP_HOST, CHARGING_INVOICE_DIR) and resend.
            metrics.UNDELIVERABLE_INVOICES.inc()
            return "PENDING"
        state = bill_keys.invoice_state(inv.billing_account, number)
        done = (
            set() if again else set(filter(None, str(await self.client.hget(state, "delivered_on") or "").split(",")))
        )
        recipient = (await self.accounts.get(inv.billing_account)).get("email", "")
        rendered = await asyncio.to_thread(RenderedInvoice.of, inv)
        failures, retry = [], False
        attempts: list[tuple[str, bool, str]] = []
        for channel, delivery in self.deliveries:
            if channel in done:
                continue
            if channel == "email" and not recipient:
                result = DeliveryResult(False, "no email address on the billing account")
            else:
                result = await delivery.deliver(rendered, recipient)
            metrics.INVOICE_DELIVERIES.labels(channel, "delivered" if result.delivered else "failed").inc()
            attempts.append((channel, result.delivered, "" if result.delivered else result.reason))
            if result.delivered:
                done.add(channel)
            else:
                failures.append(f"{channel}: {result.reason}")
                retry = retry or result.retry
        outcome = "DELIVERED" if not failures else ("RETRYING" if retry else "FAILED")
        # The history of attempts is kept in the system of record; the state that decides
        # the next attempt stays on the invoice's state in Redis.
        await self.book.record_deliveries(number, self.clock.now_ms() // 1000, attempts)
        # Only on a state Redis still holds: a settled invoice's (ResendInvoice) went,
        # and its attempts are PostgreSQL's alone (settled.py reads them).
        outcome_args = DeliveredArgs(outcome, "; ".join(failures), ",".join(sorted(done)))
        with storage_errors():
            await DELIVERED(self.client, (state,), outcome_args)
        return outcome

    async def invoice(self, number: str) -> Invoice:
        found = await self.book.get(number)
        if found is None:
            raise NotFound("no such invoice")
        return found

    async def invoice_state(self, number: str) -> dict[str, str]:
        """The invoice's open and disputed amounts, status and delivery: Redis's while it
        can still change money there, PostgreSQL's once it is settled (settled.py)."""
        found = await self.payments.settled.state(number)
        if found is None:
            raise NotFound("no such invoice")
        return found

    async def resend(self, number: str) -> str:
        """Deliver the invoice again now, on every channel."""
        return await self.deliver(number, again=True)

    async def run_history(self, limit: int) -> list[dict[str, Any]]:
        """The latest bill runs' reports, newest first."""
        return await self.book.runs(limit)

    async def invoices_of(self, ba: str, after: str = "", limit: int = 0) -> list[str]:
        """The account's invoice numbers, oldest first: a page after ``after`` when given."""
        return await self.book.numbers_of(ba, after, limit)

    async def account(self, ba: str) -> dict[str, Any]:
        info = await self.accounts.get(ba)
        if not info:
            raise NotFound("no such billing account")
        return {**info, "lines": [x.line for x in await self.accounts.lines(ba)]}

    def passes(self) -> dict[str, Callable[[], Awaitable[Any]]]:
        """The passes of the billing jobs, by job name: bill the accounts due, walk the
        dunning ladder, deliver the queued invoices. Each is safe to run again, so several
        processes may run them; each is its own job, so one failing (the mail server is
        down) holds up neither of the others. ``billing_applications`` applies payments and
        credit notes committed in PostgreSQL that a crash kept from Redis."""
        return {
            "bill_run": self.runs.run,
            "dunning": self.collection.run,
            "invoice_delivery": self.deliver_queued,
            "billing_applications": self.apply_pending,
        }

    async def apply_pending(self) -> int:
        """What was committed in PostgreSQL and a crash kept from Redis: payments, credit
        notes, refunds, adjustments and disputes, then dunning decisions."""
        applied = await self.payments.apply_pending() + await self.collection.apply_pending()
        # Then what is settled leaves Redis (also what a crash left after its switch).
        await self.payments.settled.sweep()
        return applied


def postal_address(customer: Customer, home: str = "") -> tuple[str, ...]:
    """The customer's postal address as the lines under the name in an address window:
    street, postal code and city, and the country (ISO code) unless it is ``home``."""
    town = f"{customer.postal_code} {customer.city}".strip()
    country = customer.country if customer.country != home else ""
    return tuple(x for x in (customer.street, town, country) if x)


def build_billing(
    settings: Settings,
    client: aioredis.Redis,
    catalogs: CatalogBook,
    clock: Clock,
    notifier: Notifier | None,
    link: RedisLink | ClusterLink | None = None,
    *,
    database: Pool,
) -> Billing:
    """Billing with its settings file and the configured delivery channels; bill runs
    pipeline over ``link`` when given."""
    deliveries: list[tuple[str, Delivery]] = []
    if settings.smtp_host:
        deliveries.append(("email", SmtpDelivery(SmtpSettings.of(settings), clock)))
    if settings.invoice_dir:
        deliveries.append(("directory", DirectoryDelivery(Path(settings.invoice_dir))))
    config = load(settings.billing_file)
    sealer = load_sealer(settings)
    return Billing(
        client,
        config,
        catalogs,
        clock,
        notifier,
        deliveries,
        link,
        database=database,
        sealer=sealer,
        idempotency_ttl_s=settings.idempotency_ttl_s,
    )
