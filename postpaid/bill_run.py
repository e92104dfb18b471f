"""Bill runs: close the period of every billing account that is due and issue its invoice.

For one account and period:
  1. close the period on each line (``close.lua``): from then on usage goes to the next
     period, and the closed usage no longer counts against the line's headroom;
  2. read the period's usage, the lines' histories and the pending account charges, and
     compose the invoice (``compose.py``, pure);
  3. issue it (``issue.lua``): the next gapless number, the invoice stored immutable, the
     account's balance and open invoices, its next period, in one script; a payment that
     arrived since step 2 makes the script answer STALE and the invoice is composed again;
  4. drop the invoiced usage from the lines (``purge.lua``).
Each step can run again: a repeated or interrupted run finds closed periods closed and the
issued invoice issued (``{bill}:run:BA:PERIOD``), and completes what is left. No
duplicate invoice, nothing billed twice, nothing lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import redis.asyncio as aioredis

from charging import keys, metrics
from charging.catalogs import CatalogBook
from charging.clock import Clock
from charging.store import storage_errors
from postpaid import periods
from postpaid.accounts import BillingAccounts, BillingLine
from postpaid.compose import AccountBill, LineBill, Product, compose
from postpaid.config import BillingConfig
from postpaid.invoices import DEPOSIT, Charge, Invoice
from postpaid.scripts import CLOSE, ISSUE, PURGE
from postpaid.usage import aggregates, records

log = logging.getLogger("postpaid.bill_run")
NUMBER = "@@NUMBER@@"
Issued = Callable[[str], Awaitable[None]]


@dataclass
class RunReport:
    accounts: int = 0
    issued: int = 0
    already: int = 0
    failed: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "accounts": self.accounts,
            "issued": self.issued,
            "already": self.already,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
        }


class BillRun:
    def __init__(
        self,
        client: aioredis.Redis,
        accounts: BillingAccounts,
        config: BillingConfig,
        catalogs: CatalogBook,
        clock: Clock,
        on_issued: Issued | None = None,
    ) -> None:
        self.client = client
        self.accounts = accounts
        self.config = config
        self.catalogs = catalogs
        self.clock = clock
        self.on_issued = on_issued

    async def run(self, limit: int = 0, concurrency: int = 16) -> RunReport:
        """Bill every account whose period has ended (at most ``limit``, 0: all)."""
        started = time.perf_counter()
        now_s = self.clock.now_ms() // 1000
        report = RunReport()
        with storage_errors():
            due = [str(x) for x in await self.client.zrangebyscore(keys.BILL_DUE, "-inf", now_s)]
        if limit:
            due = due[:limit]
        report.accounts = len(due)
        queue: asyncio.Queue[str] = asyncio.Queue()
        for ba in due:
            queue.put_nowait(ba)

        async def worker() -> None:
            while not queue.empty():
                ba = queue.get_nowait()
                try:
                    # An account more than one period behind is billed period by period.
                    while (outcome := await self.bill(ba, now_s)) is not None:
                        if outcome.startswith("ALREADY"):
                            report.already += 1
                        else:
                            report.issued += 1
                except Exception:
                    report.failed += 1
                    log.exception("bill run failed for an account", extra={"billing_account": ba})

        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
        report.seconds = time.perf_counter() - started
        metrics.BILL_RUN_INVOICES.inc(report.issued)
        with storage_errors():
            await self.client.rpush(keys.BILL_RUNS, json.dumps({"at": now_s, **report.as_dict()}))
        return report

    async def bill(self, ba: str, now_s: int) -> str | None:
        """Bill the account's next period if it has ended; the invoice number (prefixed
        ALREADY when it was issued before), or None when nothing is due."""
        info = await self.accounts.get(ba)
        if not info:
            return None
        tz, cycle_day = info["time_zone"], int(info["cycle_day"])
        period = periods.by_id(info["next_period"], cycle_day, tz)
        if now_s < period.end_s:
            await self.client.zadd(keys.BILL_DUE, {ba: period.end_s})
            return None
        lines = await self.accounts.lines(ba)
        if not lines and not await self.client.llen(keys.billing_pending(ba)):
            # Every line ended with its final invoice: the account has nothing more to bill.
            await self.client.zrem(keys.BILL_DUE, ba)
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
        """Close, compose, issue, purge (see the module docstring)."""
        tz = info["time_zone"]
        ahead = periods.open_periods(period, tz, periods.OPEN_AHEAD + 1)[-1]
        bills = [await self._close(line, period, ahead) for line in lines]
        run_key = keys.bill_run(ba, period.id if not final_line else f"final-{final_line}")
        nxt = periods.following(period, tz) if not final_line else None
        for _attempt in range(5):
            state = await self.accounts.get(ba)
            pending = [json.loads(x) for x in await self.client.lrange(keys.billing_pending(ba), 0, -1)]
            received = int(state.get("paid_since", 0)) + int(state.get("credited_since", 0))
            extra: list[Charge] = [Charge(**c) for c in pending]
            if final_line and len(lines) >= 1 and int(state.get("deposit", 0)) and await self._last_line(ba, lines):
                extra.append(Charge(DEPOSIT, "Deposit offset", -int(state["deposit"]), tax_code="exempt"))
            bill = AccountBill(
                billing_account=ba,
                customer_label=state.get("label", ba),
                period=period,
                lines=bills,
                pending=extra,
                previous_balance=int(state.get("balance", 0)) + received,
                payments_received=received,
                kind="FINAL" if final_line else "REGULAR",
            )
            invoice = compose(self.config, self._products(period), self._units(), bill, _today(now_s, tz))
            reply = await ISSUE(
                self.client,
                (
                    run_key,
                    keys.invoice_seq(self.config.issuer.id),
                    keys.billing_account(ba),
                    keys.billing_pending(ba),
                    keys.billing_invoices(ba),
                    keys.billing_open(ba),
                    keys.BILL_DUNNING,
                    keys.BILL_DUE,
                    keys.BILL_DELIVERY,
                ),
                (
                    _with_placeholder(invoice),
                    invoice.total,
                    _midnight(invoice.due, tz),
                    int(state.get("moves", 0)),
                    len(pending),
                    self.config.issuer.number_prefix + "-",
                    now_s,
                    keys.invoice(""),
                    keys.invoice_state(""),
                    period.id,
                    nxt.id if nxt else "",
                    nxt.end_s if nxt else 0,
                ),
            )
            if reply[0] == "STALE":
                continue
            number = str(reply[1])
            for line in lines:
                await PURGE(
                    self.client, (keys.usage(line.account_id), keys.usage_records(line.account_id)), (period.id,)
                )
            if reply[0] == "ISSUED" and self.on_issued is not None:
                await self.on_issued(number)
            return number if reply[0] == "ISSUED" else "ALREADY " + number
        raise RuntimeError("the billing account kept changing while its invoice was issued")

    async def _last_line(self, ba: str, lines: list[BillingLine]) -> bool:
        return len(await self.accounts.lines(ba)) <= len(lines)

    async def _close(self, line: BillingLine, period: periods.Period, ahead: periods.Period) -> LineBill:
        acct = line.account_id
        await CLOSE(self.client, (keys.account(acct), keys.usage(acct)), (period.id, f"{ahead.id}:{ahead.end_s}"))
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(keys.usage(acct))
        pipe.lrange(keys.usage_records(acct), 0, -1)
        pipe.hget(keys.account(acct), "plan")
        flat, raw, plan = await pipe.execute()
        return LineBill(
            account_id=acct,
            line=line.line,
            plan_id=str(plan or ""),
            history=await self.accounts.history(acct),
            aggregates=aggregates({str(k): str(v) for k, v in flat.items()}, period.id),
            records=records([str(r) for r in raw], period.id),
            unit_path=line.unit_path,
        )

    def _products(self, period: periods.Period) -> dict[str, Product]:
        out = {}
        for plan in self.catalogs.current.plans.values():
            version = plan.version_at(period.start_s) or plan.version_at(period.end_s - 1)
            rental = version.rental_micros if version else 0
            included = (version.recurring.bundle_id,) if version and version.recurring else ()
            out[plan.id] = Product(plan.name, rental, included)
        return out

    def _units(self) -> dict[str, Any]:
        return {name: s.unit for name, s in self.catalogs.current.services.items()}


def _with_placeholder(invoice: Invoice) -> str:
    text = invoice.to_json()
    # The number is assigned by the issuing script; the document says where it goes.
    return text.replace('"number":""', f'"number":"{NUMBER}"', 1)


def _today(now_s: int, tz: str) -> date:
    return datetime.fromtimestamp(now_s, ZoneInfo(tz)).date()


def _midnight(d: date, tz: str) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=ZoneInfo(tz)).timestamp())
