"""Bill runs: close the period of every billing account that is due and issue its invoice.

For one account and period:
  1. close the period on each line (``close.lua``): from then on usage goes to the next
     period, and the closed usage no longer counts against the line's headroom;
  2. read the period's usage, the lines' histories and the pending account charges, and
     compose the invoice (``compose.py``, pure);
  3. issue it in PostgreSQL (``invoice_book.py``): the next gapless number and the invoice
     (document, charge lines, taxes) in one transaction, unique per account and run, so
     it is written once whatever is repeated; an invoice composed from the same reading
     of the account as one written already (a final invoice racing the run) is refused,
     and composed again once that one is settled;
  4. drop the invoiced usage from the lines (``purge.lua``): it is in the invoice now;
  5. settle it in Redis (``settle.lua``): the account's balance and open invoices, its
     next period, the delivery queue, once (the row keeps what to apply). Last, so that
     until it has run the account is still due and a resumed run purges and settles.
Each step can run again: a repeated or interrupted run finds closed periods closed, the
invoice written (and settles that one, not a new one) and the settlement applied, and
completes what is left. No duplicate invoice, no number skipped, nothing billed twice,
nothing lost: the usage is dropped only once its invoice is written and settled.

A run takes the due accounts in batches and does each step for the whole batch in one
pipelined round trip (reads; close and read per line; one database transaction; purge;
settle), so round trips and client overhead are paid per batch, not per account.
Accounts the batch cannot finish (several periods behind, no lines, an invoice written
meanwhile) are billed one by one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from charging import keys, metrics
from charging.catalogs import CatalogBook
from charging.clock import Clock
from charging.cluster_link import ClusterLink
from charging.money import format_minor
from charging.redis_link import RedisLink
from charging.store import storage_errors
from postpaid import keys as bill_keys
from postpaid import periods
from postpaid.accounts import BillingAccounts, BillingLine
from postpaid.compose import AccountBill, LineBill, Product, compose
from postpaid.config import BillingConfig
from postpaid.invoice_book import Contended, Draft, InvoiceBook, Issued, Overtaken
from postpaid.invoices import DEPOSIT, Charge, Invoice
from postpaid.rentals import Change
from postpaid.scripts import CLOSE, PURGE, SETTLE, CloseArgs, PurgeArgs, SettleArgs
from postpaid.usage import aggregates, itemised_from_records

log = logging.getLogger("postpaid.bill_run")
BATCH = 200


# Why an account the due index named got no invoice (``RunReport.skipped``).
NO_ACCOUNT = "no such account"
NOT_ENDED = "period not ended"
NO_LINES = "no lines"
LISTED = 100  # invoices and failed accounts a report names (it counts them all)


class Stale(Exception):
    """The account changed between reading it and issuing its invoice."""


@dataclass
class RunReport:
    """What a run did: accounts due, invoices issued (and named, up to ``LISTED``),
    already issued, accounts skipped by reason and failed (named), the day it billed as
    of and the next period end after it."""

    accounts: int = 0
    issued: int = 0
    already: int = 0
    failed: int = 0
    seconds: float = 0.0
    as_of: str = ""
    skipped: dict[str, int] = field(default_factory=dict)
    invoices: list[str] = field(default_factory=list)
    failed_accounts: list[str] = field(default_factory=list)
    next_due: str = ""

    def issue(self, number: str) -> None:
        self.issued += 1
        if len(self.invoices) < LISTED:
            self.invoices.append(number)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def fail(self, ba: str) -> None:
        self.failed += 1
        if len(self.failed_accounts) < LISTED:
            self.failed_accounts.append(ba)

    def as_dict(self) -> dict[str, Any]:
        return {
            "accounts": self.accounts,
            "issued": self.issued,
            "already": self.already,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
            "as_of": self.as_of,
        }


class BillRun:
    def __init__(
        self,
        client: aioredis.Redis,
        accounts: BillingAccounts,
        config: BillingConfig,
        catalogs: CatalogBook,
        clock: Clock,
        book: InvoiceBook,
        link: RedisLink | ClusterLink | None = None,
    ) -> None:
        self.client = client
        self.book = book
        self.link = link
        self.accounts = accounts
        self.config = config
        self.catalogs = catalogs
        self.clock = clock
        # Rentals of the plan versions in force at a period's start, by (start, end).
        self._products_cache: dict[tuple[int, int], tuple[Any, dict[str, Product]]] = {}
        # Told of each credit outbox settling may have written to (the relay's wake).
        self.on_credit: Callable[[str], None] | None = None

    async def _load_scripts(self) -> None:
        """Pipelines call scripts by SHA: make sure Redis has them (after a restart too).
        One SCRIPT LOAD each, not a pipeline: redis-py's ``RedisCluster`` refuses SCRIPT
        LOAD in a pipeline and sends it alone to every primary."""
        for script in (CLOSE, SETTLE, PURGE):
            await self.client.script_load(script.source)

    async def run(
        self,
        limit: int = 0,
        concurrency: int = 2,
        batch: int = BATCH,
        shard: int = 0,
        shards: int = 1,
        at_s: int | None = None,
    ) -> RunReport:
        """Bill every account whose period has ended (at most ``limit``, 0: all). With
        ``shards`` > 1 this run takes only its share of the accounts (by a hash of the id),
        so several processes can bill one run side by side; numbers stay gapless because
        each comes from the one counter row, taken in the transaction that writes them.
        ``at_s``: bill as of that instant instead of now (``as_of.py``)."""
        started = time.perf_counter()
        now_s = self.clock.now_ms() // 1000 if at_s is None else at_s
        report = RunReport(as_of=_today(now_s, self.config.time_zone).isoformat())
        with storage_errors():
            due = [
                str(x) for index in bill_keys.DUE_INDEXES for x in await self.client.zrangebyscore(index, "-inf", now_s)
            ]
        if shards > 1:
            due = [ba for ba in due if zlib.crc32(ba.encode()) % shards == shard]
        if limit:
            due = due[:limit]
        report.accounts = len(due)
        batches = [due[i : i + batch] for i in range(0, len(due), batch)]

        async def worker() -> None:
            while batches:
                chunk = batches.pop()
                try:
                    slow = await self._batch(chunk, now_s, report)
                except Exception:
                    log.exception("a bill run batch failed; its accounts are billed one by one")
                    slow = chunk
                for ba in slow:
                    await self._one(ba, now_s, report)

        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
        report.seconds = time.perf_counter() - started
        with storage_errors():
            later: list[int] = []
            for index in bill_keys.DUE_INDEXES:
                after = await self.client.zrangebyscore(index, f"({now_s}", "+inf", start=0, num=1, withscores=True)
                later += [int(pair[1]) for pair in after]
            if later:
                report.next_due = _today(min(later), self.config.time_zone).isoformat()
        await self.book.record_run(now_s, report.as_dict())
        return report

    async def _one(self, ba: str, now_s: int, report: RunReport) -> None:
        why: list[str] = []
        try:
            outcomes = await self.bill_due(ba, now_s, why)
            for outcome in outcomes:
                if outcome.startswith("ALREADY"):
                    report.already += 1
                else:
                    report.issue(outcome)
            if not outcomes and why:
                report.skip(why[-1])
        except Exception:
            report.fail(ba)
            metrics.ACCOUNT_FAILURES.labels("bill_run").inc()
            log.exception("bill run failed for an account", extra={"billing_account": ba})

    async def bill_due(self, ba: str, now_s: int, why: list[str] | None = None) -> list[str]:
        """Bill every period of the account that has ended, one by one; an invoice made
        stale by another change of the account (a payment, a final invoice) is made again
        from what is there now: its lines, their usage, the account. ``why`` gets the
        reason each attempt stopped without an invoice."""
        outcomes: list[str] = []
        for _attempt in range(5):
            try:
                # An account more than one period behind is billed period by period.
                while (outcome := await self.bill(ba, now_s, why)) is not None:
                    outcomes.append(outcome)
                return outcomes
            except Stale:
                continue
        raise RuntimeError("the billing account kept changing while its invoice was issued")

    async def _settle(self, issued: list[Issued]) -> None:
        """settle.lua for written invoices; the relay is told of their credit movements."""
        await self._many([_settle_command(i) for i in issued])
        if self.on_credit is not None:
            for outbox in {bill_keys.credit_outbox(i.billing_account) for i in issued}:
                self.on_credit(outbox)

    async def _many(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send commands in one write and return their replies in order: over the pipelined
        link when there is one (far less client work per command), else a redis-py
        pipeline. Scripts Redis lost (a restart) are loaded and everything is sent again:
        every command here may run twice."""
        for attempt in (1, 2):
            if self.link is not None:
                replies = await self.link.execute_many(commands)
            else:
                pipe = self.client.pipeline(transaction=False)
                for command in commands:
                    pipe.execute_command(*command)
                replies = await pipe.execute(raise_on_error=False)
            missing = any(isinstance(r, redis_errors.NoScriptError) for r in replies)
            if missing and attempt == 1:
                await self._load_scripts()
                continue
            for r in replies:
                if isinstance(r, Exception):
                    raise r
            return list(replies)
        raise AssertionError("unreachable")

    async def _batch(self, bas: list[str], now_s: int, report: RunReport) -> list[str]:
        """Bill a batch in four pipelined round trips; returns the accounts left for ``_one``."""
        commands: list[tuple[Any, ...]] = []
        for ba in bas:
            commands.append(("HGETALL", bill_keys.billing_account(ba)))
            commands.append(("HGETALL", bill_keys.billing_lines(ba)))
            commands.append(("LRANGE", bill_keys.billing_pending(ba), 0, -1))
        raw = await self._many(commands)
        slow: list[str] = []
        jobs = []
        for i, ba in enumerate(bas):
            info, lines_raw, pending = self.accounts.opened(_hash(raw[3 * i])), _hash(raw[3 * i + 1]), raw[3 * i + 2]
            if not info:
                report.skip(NO_ACCOUNT)
                continue
            period = periods.by_id(info["next_period"], int(info["cycle_day"]), info["time_zone"])
            if now_s < period.end_s or not lines_raw:
                slow.append(ba)
                continue
            jobs.append((ba, info, period, _lines(lines_raw), pending))

        commands = []
        for _ba, info, period, lines, _pending in jobs:
            ahead = _after(period, info["time_zone"])
            for line in lines:
                commands += _close_commands(line.account_id, period, ahead)
        raw = await self._many(commands)
        at = 0
        issues = []
        drafts = []
        for ba, info, period, lines, pending in jobs:
            bills = []
            for line in lines:
                bills.append(self._line_bill(line, period, raw[at : at + 2]))
                at += 2
            invoice = self._compose(ba, info, period, bills, pending, now_s)
            nxt = periods.following(period, info["time_zone"])
            drafts.append(self._draft(info, invoice, period, nxt, len(pending), now_s))
            issues.append((ba, period, nxt, lines))
        try:
            issued = await self.book.issue(drafts)
        except Contended:
            return slow + [ba for ba, *_ in issues]
        commands = []
        for (ba, period, nxt, lines), inv in zip(issues, issued, strict=True):
            if inv.already:
                report.already += 1
            else:
                report.issue(inv.number)
                metrics.INVOICES_ISSUED.labels("period").inc()
            for line in lines:
                acct = line.account_id
                purge_keys = (keys.usage(acct), keys.usage_records(acct))
                commands.append(("EVALSHA", PURGE.sha, 2, *purge_keys, *PurgeArgs(period.id).to_argv()))
            if nxt.end_s <= now_s:
                slow.append(ba)  # more periods behind: the next one too
        if commands:
            await self._many(commands)
        await self._settle(issued)
        return slow

    async def bill(self, ba: str, now_s: int, why: list[str] | None = None) -> str | None:
        """Bill the account's next period if it has ended; the invoice number (prefixed
        ALREADY when it was issued before), or None when nothing is due (and why, appended
        to ``why``)."""
        why = [] if why is None else why
        info = await self.accounts.get(ba)
        if not info:
            why.append(NO_ACCOUNT)
            return None
        tz, cycle_day = info["time_zone"], int(info["cycle_day"])
        period = periods.by_id(info["next_period"], cycle_day, tz)
        if now_s < period.end_s:
            await self.client.zadd(bill_keys.due_index(ba), {ba: period.end_s})
            why.append(NOT_ENDED)
            return None
        lines = await self.accounts.lines(ba)
        if not lines and not await self.client.llen(bill_keys.billing_pending(ba)):
            # Every line ended with its final invoice: the account has nothing more to bill.
            await self.client.zrem(bill_keys.due_index(ba), ba)
            why.append(NO_LINES)
            return None
        return await self.invoice(ba, info, period, lines, now_s)

    async def invoice(
        self,
        ba: str,
        info: dict[str, str],
        period: periods.Period,
        lines: list[BillingLine],
        now_s: int,
        final_line: str = "",
    ) -> str:
        """Close, compose, issue, purge for one account (see the module docstring)."""
        tz = info["time_zone"]
        ahead = _after(period, tz)
        raw = await self._many([c for line in lines for c in _close_commands(line.account_id, period, ahead)])
        bills = [self._line_bill(line, period, raw[2 * i : 2 * i + 2]) for i, line in enumerate(lines)]
        nxt = periods.following(period, tz) if not final_line else None
        state = await self.accounts.get(ba)
        pending = [str(x) for x in await self.client.lrange(bill_keys.billing_pending(ba), 0, -1)]
        deposit = 0
        if final_line and int(state.get("deposit", 0)) and len(await self.accounts.lines(ba)) <= len(lines):
            deposit = int(state["deposit"])
        invoice = self._compose(ba, state, period, bills, pending, now_s, final_line, deposit)
        draft = self._draft(state, invoice, period, nxt, len(pending), now_s, final_line, deposit)
        try:
            [issued] = await self.book.issue([draft])
        except Overtaken as exc:
            # Composed from a reading another invoice has overtaken: that one is settled
            # (it may be waiting for it after a crash) and the caller starts over.
            await self._settle([exc.issued])
            raise Stale(ba) from None
        except Contended:
            raise Stale(ba) from None
        if not issued.already:  # counted where issued: bill runs, periods before a final invoice, final invoices
            metrics.INVOICES_ISSUED.labels("final" if final_line else "period").inc()
        for line in lines:
            acct = line.account_id
            await PURGE(self.client, (keys.usage(acct), keys.usage_records(acct)), PurgeArgs(period.id))
        await self._settle([issued])
        return issued.number if not issued.already else "ALREADY " + issued.number

    def _line_bill(self, line: BillingLine, period: periods.Period, raw: list[Any]) -> LineBill:
        """A line's part of the bill from its replies: close.lua's and the history."""
        closed, hist = raw
        if closed[0] not in ("CLOSED", "ALREADY"):
            raise RuntimeError(f"cannot close the period of a line: {closed[0]}")
        _status, _cost, plan, agg, recs, ids = closed
        flat = _hash(agg)
        # A line that joined while an earlier period was being billed: its rental for the
        # days it had in that period is on this invoice too.
        tz = self.config.time_zone
        earlier = tuple(periods.by_id(pid, period.start.day, tz) for pid in ids if pid < period.id)
        history = []
        for entry in hist:
            at, state, plan_id = str(entry).split(",")
            history.append(Change(int(at), state, plan_id))
        return LineBill(
            account_id=line.account_id,
            line=line.line,
            plan_id=str(plan or ""),
            history=history,
            aggregates=aggregates(flat, None),
            records=[],
            items=tuple(itemised_from_records(recs, None, self._units(), self.config.mask_destination_digits)),
            unit_path=line.unit_path,
            earlier=earlier,
        )

    def _compose(
        self,
        ba: str,
        state: dict[str, str],
        period: periods.Period,
        bills: list[LineBill],
        pending: list[str],
        now_s: int,
        final_line: str = "",
        deposit: int = 0,
    ) -> Invoice:
        received = int(state.get("paid_since", 0)) + int(state.get("credited_since", 0))
        notes = tuple(
            f"Credit note {number} of {format_minor(int(amount), self.config.currency)} on invoice {invoice}"
            for number, amount, invoice in (n.split(" ") for n in state.get("credit_notes_since", "").split(";") if n)
        )
        extra = [Charge(**json.loads(c)) for c in pending]
        if deposit:
            extra.append(Charge(DEPOSIT, "Deposit offset", -deposit, tax_code="exempt"))
        bill = AccountBill(
            billing_account=ba,
            customer_label=state.get("label", ba),
            customer_name=state.get("name", ""),
            customer_address=tuple(filter(None, state.get("address", "").split("\n"))),
            period=period,
            lines=bills,
            pending=extra,
            previous_balance=int(state.get("balance", 0)) + received,
            payments_received=received,
            kind="FINAL" if final_line else "REGULAR",
            notes=notes,
        )
        return compose(self.config, self._products(period), self._units(), bill, _today(now_s, state["time_zone"]))

    def _draft(
        self,
        state: dict[str, str],
        invoice: Invoice,
        period: periods.Period,
        nxt: periods.Period | None,
        pending: int,
        now_s: int,
        final_line: str = "",
        deposit: int = 0,
    ) -> Draft:
        """The invoice to write, with the settlement it makes on its account."""
        notes = [n for n in state.get("credit_notes_since", "").split(";") if n]
        settle = SettleArgs(
            number="",
            account_seq=int(state.get("issued", 0)),
            total=invoice.total,
            due_s=_midnight(invoice.due, state["time_zone"]),
            issued_s=now_s,
            period=period.id,
            next_period=nxt.id if nxt else "",
            next_end_s=nxt.end_s if nxt else 0,
            final_line=final_line,
            deposit=deposit,
            pending_taken=pending,
            paid_counted=int(state.get("paid_since", 0)),
            credited_counted=int(state.get("credited_since", 0)),
            notes_counted=len(notes),
            state_prefix=bill_keys.state_prefix(invoice.billing_account),
        )
        run = period.id if not final_line else f"final-{final_line}"
        return Draft(invoice, run, settle)

    def _products(self, period: periods.Period) -> dict[str, Product]:
        cached = self._products_cache.get((period.start_s, period.end_s))
        if cached is not None and cached[0] is self.catalogs.current:
            return cached[1]
        out = {}
        for plan in self.catalogs.current.plans.values():
            version = plan.version_at(period.start_s) or plan.version_at(period.end_s - 1)
            rental = version.rental_micros if version else 0
            included = (version.recurring.bundle_id,) if version and version.recurring else ()
            out[plan.id] = Product(plan.name, rental, included)
        self._products_cache[(period.start_s, period.end_s)] = (self.catalogs.current, out)
        return out

    def _units(self) -> dict[str, Any]:
        return {name: s.unit for name, s in self.catalogs.current.services.items()}


def _hash(reply: Any) -> dict[str, str]:
    """A hash reply as a dict (redis-py gives a dict, the link a flat list)."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2], strict=True))


def _after(period: periods.Period, tz: str) -> str:
    """The periods that stay open once ``period`` closes, packed for close.lua."""
    return periods.pack(periods.open_periods(periods.following(period, tz), tz))


def _close_commands(acct: str, period: periods.Period, ahead: str) -> list[tuple[Any, ...]]:
    """Close the line's period and read its usage (close.lua), and read the line's history."""
    return [
        (
            "EVALSHA",
            CLOSE.sha,
            3,
            keys.account(acct),
            keys.usage(acct),
            keys.usage_records(acct),
            *CloseArgs(period.id, ahead).to_argv(),
        ),
        ("LRANGE", bill_keys.line_history(acct), 0, -1),
    ]


def _lines(raw: dict[str, str]) -> list[BillingLine]:
    out = []
    for account_id, text in raw.items():
        d = json.loads(text)
        out.append(BillingLine(str(account_id), d["line"], tuple(d["unit_path"])))
    return sorted(out, key=lambda x: x.account_id)


def _settle_command(issued: Issued) -> tuple[Any, ...]:
    """settle.lua for an invoice written to the database."""
    ba, number = issued.billing_account, issued.number
    settle_keys = (
        bill_keys.billing_account(ba),
        bill_keys.billing_pending(ba),
        bill_keys.billing_open(ba),
        bill_keys.dunning_index(ba),
        bill_keys.due_index(ba),
        bill_keys.delivery_queue(ba),
        bill_keys.billing_lines(ba),
        bill_keys.recheck(ba),
        bill_keys.invoice_state(ba, number),
        bill_keys.credit_outbox(ba),
        bill_keys.settled(ba),
    )
    return ("EVALSHA", SETTLE.sha, len(settle_keys), *settle_keys, *issued.settle.to_argv())


def _today(now_s: int, tz: str) -> date:
    return datetime.fromtimestamp(now_s, ZoneInfo(tz)).date()


def _midnight(d: date, tz: str) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=ZoneInfo(tz)).timestamp())
