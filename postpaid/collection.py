"""Collection: runs the dunning ladder (``dunning.py``, pure) over billing accounts with
overdue invoices and carries out what it decides.

For one account, on one day:
  1. under the account's lock in PostgreSQL, read its open invoices (open, disputed, due
     day: Redis), its latest promise to pay and the steps taken (PostgreSQL);
  2. ``dunning.evaluate`` decides; the decision is committed first (``dunning_record.py``:
     a row per step per invoice, a promise's outcome, the audit entries, the pending
     application), then ``dunning.lua`` applies its late fees (on the next invoice),
     notifications (billing outbox, relayed to the notification stream) and the account's
     service state in Redis, each once, and the application is marked applied. A crash
     in between is finished by the account's next evaluation or the
     ``billing_applications`` job;
  3. the lines follow the account's state through provisioning orders (bar outgoing,
     suspend, terminate for non-payment, resume), with order ids derived from the
     account's state epoch so a repeat finds its order; the network's acknowledgement
     moves the line, as for any order. This step is level-triggered: run again after a
     crash, it orders what a line still lacks;
  4. every line carries the account's overdue amount against its credit headroom.
Running it twice on the same day does nothing more; after skipped days it catches up to
the right step without sending every missed reminder. A payment, a credit note or a
dispute re-evaluates the account at once (``Payments.on_change``).

A run may be as of a later day (``as_of.py``). The account then keeps that instant
(``{bill.<n>}:as_of``, only ever raised) and every later evaluation of it — a payment, the
periodic run — is as of that day at least: otherwise the next periodic run, as of
today, would find nothing overdue and restore a line the run had just barred.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

import redis.asyncio as aioredis
from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from charging import metrics
from charging.audit_trail import AuditEntry
from charging.clock import Clock
from charging.errors import InvalidRequest
from charging.money import format_minor
from charging.notifications import Notifier
from charging.security.identity import caller_name
from charging.store import storage_errors
from postpaid import as_of, dunning
from postpaid import keys as bill_keys
from postpaid.accounts import BillingAccounts
from postpaid.config import BillingConfig
from postpaid.dunning import ChangeState, LateFee, Notify, OpenInvoice, Restore, ServiceState
from postpaid.dunning_record import Decided, DunningRecord, Promise, PromiseOutcome, TakenStep, args_of
from postpaid.invoices import LATE_FEE, RECONNECTION_FEE, Charge
from postpaid.receivables import Applied, Receivables
from postpaid.scripts import DUNNING, DunningArgs, DunningStep
from provisioning.lines import Line
from provisioning.orders import Order

log = logging.getLogger("postpaid.collection")

# What a line is ordered to do for each account state, and the line states that show it done.
ORDER_FOR = {
    ServiceState.BARRED_OUTGOING: ("BAR_OUTGOING", {"barred_outgoing", "suspended", "terminated"}),
    ServiceState.SUSPENDED: ("SUSPEND", {"suspended", "terminated"}),
    ServiceState.TERMINATED: ("TERMINATE", {"terminated"}),
}
DUNNING_ORDER = "dunning-"
PROMISE_MAX_DAYS = 30


async def watched(client: aioredis.Redis, now_s: int, recheck: bool) -> set[str]:
    """The accounts dunning looks at now, from every shard: an invoice past due by
    ``now_s``, restricted (to restore it once paid) and, with ``recheck``, money moved."""
    found: set[str] = set()
    for shard in range(bill_keys.SHARDS):
        found |= {str(x) for x in await client.zrangebyscore(bill_keys.dunning_shard(shard), "-inf", now_s)}
        found |= {str(x) for x in await client.smembers(bill_keys.restricted_shard(shard))}
        if recheck:
            found |= {str(x) for x in await client.smembers(bill_keys.recheck_shard(shard))}
    return found


class Lines(Protocol):
    """What collection needs of the line lifecycle (``provisioning.acquisition``)."""

    async def get_line(self, msisdn: str) -> Line | None: ...

    async def get_order(self, order_id: str) -> Order | None: ...

    async def order(self, order_id: str, msisdn: str, kind: str, plan_id: str = "", reason: str = "") -> Order: ...


LISTED = 100  # accounts a report describes one by one (it counts them all)


@dataclass(frozen=True)
class Outcome:
    """One account's evaluation in a run: its state and overdue amount after it, what was
    done (``describe``), and the day it was evaluated as of."""

    billing_account: str
    state: str = ""
    overdue: int = 0
    actions: tuple[str, ...] = ()
    failed: bool = False
    as_of: str = ""


@dataclass
class CollectionReport:
    accounts: int = 0
    actions: dict[str, int] = field(default_factory=dict)
    as_of: str = ""
    failed: int = 0
    outcomes: list[Outcome] = field(default_factory=list)


def describe(action: dunning.Action, currency: str) -> str:
    """An action as an operator reads it in a run's report."""
    if isinstance(action, Notify):
        return f"{action.step}: {action.channel.value} for {action.invoice}"
    if isinstance(action, LateFee):
        return f"late fee {format_minor(action.amount, currency)} for {action.invoice} ({action.step})"
    if isinstance(action, ChangeState):
        return f"state {action.target.value}"
    fee = f" (reconnection fee {format_minor(action.reconnection_fee, currency)})" if action.reconnection_fee else ""
    return f"restored{fee}"


class Collection:
    def __init__(
        self,
        client: aioredis.Redis,
        accounts: BillingAccounts,
        config: BillingConfig,
        clock: Clock,
        lines: Lines | None = None,
        notifier: Notifier | None = None,
        *,
        record: DunningRecord,
        ledger: Receivables,
    ) -> None:
        self.client = client
        self.record = record
        self.ledger = ledger
        self.accounts = accounts
        self.config = config
        self.clock = clock
        self.lines = lines
        self.notifier = notifier

    def today(self) -> date:
        return datetime.fromtimestamp(self.clock.now_ms() // 1000, ZoneInfo(self.config.time_zone)).date()

    async def now_ms_for(self, ba: str) -> int:
        """Now for the account: the clock, or the later instant it was dunned as of."""
        with storage_errors():
            raised = await self.client.zscore(bill_keys.as_of(ba), ba)
        return max(self.clock.now_ms(), int(raised or 0) * 1000)

    async def today_for(self, ba: str) -> date:
        """The day the account's dunning stands on (``now_ms_for``)."""
        return as_of.day_of(await self.now_ms_for(ba) // 1000, self.config.time_zone)

    async def run(self, at_s: int | None = None) -> CollectionReport:
        """Evaluate every account with an invoice past due, and every account dunning has
        restricted (to restore it when it has paid). ``at_s``: as of that instant (a later
        day, ``as_of.py``), which each account evaluated keeps."""
        now_s = self.clock.now_ms() // 1000 if at_s is None else max(at_s, self.clock.now_ms() // 1000)
        with storage_errors():
            due = await watched(self.client, now_s, recheck=True)
        report = CollectionReport(accounts=len(due), as_of=as_of.day_of(now_s, self.config.time_zone).isoformat())
        for ba in sorted(due):
            try:
                if at_s is not None:
                    with storage_errors():
                        await self.client.zadd(bill_keys.as_of(ba), {ba: now_s}, gt=True)
                decision, overdue, day = await self.assess(ba)
            except Exception:
                metrics.ACCOUNT_FAILURES.labels("dunning").inc()
                log.exception("dunning failed for an account", extra={"billing_account": ba})
                report.failed += 1
                if len(report.outcomes) < LISTED:
                    report.outcomes.append(Outcome(ba, failed=True))
                continue
            for action in decision.actions:
                name = type(action).__name__
                report.actions[name] = report.actions.get(name, 0) + 1
            if len(report.outcomes) < LISTED:
                done = tuple(describe(a, self.config.currency) for a in decision.actions)
                report.outcomes.append(Outcome(ba, decision.state.value, overdue, done, as_of=day.isoformat()))
        return report

    async def invoices(self, ba: str, conn: AsyncConnection[TupleRow] | None = None) -> list[OpenInvoice]:
        """The account's open invoices, held by its latest promise to pay if not judged yet."""
        promise = await self.record.promise(ba, conn)
        return await self._open(ba, promise.until if promise is not None and not promise.outcome else None)

    async def promised_until(self, ba: str) -> str:
        """The day the account's promise to pay holds dunning to ('' when none holds it)."""
        promise = await self.record.promise(ba)
        return promise.until.isoformat() if promise is not None and not promise.outcome else ""

    async def _open(self, ba: str, until: date | None) -> list[OpenInvoice]:
        tz = ZoneInfo(self.config.time_zone)
        out = []
        for number in [str(x) for x in await self.client.lrange(bill_keys.billing_open(ba), 0, -1)]:
            h = await self.client.hmget(bill_keys.invoice_state(ba, number), ["open", "disputed", "due"])
            due = datetime.fromtimestamp(int(str(h[2])), tz).date()
            out.append(OpenInvoice(number, due, int(str(h[0])), int(str(h[1])), until))
        return out

    async def evaluate(self, ba: str) -> dunning.Decision:
        """One dunning evaluation of the account today (see the module docstring)."""
        return (await self.assess(ba))[0]

    async def assess(self, ba: str) -> tuple[dunning.Decision, int, date]:
        """``evaluate``, with the overdue amount it found and the day it stood on: decided
        and committed in PostgreSQL under the account's lock (``dunning_record.py``), then
        applied in Redis once, then the lines follow."""
        with storage_errors():
            async with self.record.locked(ba) as conn:
                # What a crash left committed and not applied is applied first: the
                # decision below stands on it.
                left = await self.record.pending(ba, conn=conn)
                for pending in left:
                    await self._apply(conn, ba, pending.application_id, args_of(pending.payload))
                async with conn.transaction():
                    decided, decision, overdue, today = await self._decide(conn, ba)
                    if decided is not None:
                        await self.record.commit(conn, decided)
                if decided is not None:
                    await self._apply(conn, ba, decided.application_id, decided.args)
        if self.notifier is not None and (left or (decided is not None and decided.args.steps)):
            await self.notifier.relay_outbox(bill_keys.outbox(ba), "billing")
        for action in decision.actions:
            metrics.DUNNING_ACTIONS.labels(type(action).__name__).inc()
        await self.accounts.set_overdue(ba, overdue)
        unsettled = await self.follow(ba)
        with storage_errors():
            # Restricted accounts, and restored ones whose lines are not all back yet, are
            # looked at on every run until their lines match.
            restricted = decision.state in ORDER_FOR and decision.state is not ServiceState.TERMINATED
            if restricted or unsettled:
                await self.client.sadd(bill_keys.restricted(ba), ba)
            else:
                await self.client.srem(bill_keys.restricted(ba), ba)
            await self.client.srem(bill_keys.recheck(ba), ba)
        return decision, overdue, today

    async def _apply(self, conn: AsyncConnection[TupleRow], ba: str, application_id: str, args: DunningArgs) -> None:
        """Apply a committed decision in Redis once and mark it applied (the outcome rows
        are ``receivables.py``'s, as for payments), on the account's locked connection."""
        async with conn.transaction():
            if await self.ledger.applied(conn, application_id) is not None:
                return
            await self._redis(ba, args)
            await self.ledger.mark(conn, Applied(application_id, "APPLIED"))

    async def _redis(self, ba: str, args: DunningArgs) -> int:
        """dunning.lua: the decision's effects in Redis, each once."""
        keys_ = (
            bill_keys.billing_dunning_done(ba),
            bill_keys.billing_pending(ba),
            bill_keys.billing_account(ba),
            bill_keys.outbox(ba),
            bill_keys.due_index(ba),
        )
        applied: int = await DUNNING(self.client, keys_, args)
        return applied

    async def apply_pending(self) -> int:
        """The ``billing_applications`` job's part: dunning decisions a crash kept from
        Redis, applied; their accounts are evaluated again by the next run."""
        found = await self.record.pending()
        with storage_errors():
            for pending in found:
                ba = pending.billing_account
                async with self.record.locked(ba) as conn:
                    await self._apply(conn, ba, pending.application_id, args_of(pending.payload))
                await self.client.sadd(bill_keys.recheck(ba), ba)
        if found and self.notifier is not None:
            for outbox in bill_keys.OUTBOXES:
                await self.notifier.relay_outbox(outbox, "billing")
        return len(found)

    async def _decide(
        self, conn: AsyncConnection[TupleRow], ba: str
    ) -> tuple[Decided | None, dunning.Decision, int, date]:
        now_ms = await self.now_ms_for(ba)
        now_s = now_ms // 1000
        today = as_of.day_of(now_s, self.config.time_zone)
        info = await self.accounts.get(ba)
        state = ServiceState(info.get("state", "ACTIVE"))
        promise = await self.record.promise(ba, conn)
        held = promise is not None and not promise.outcome
        invoices = await self._open(ba, promise.until if held and promise is not None else None)
        done = await self.record.done(conn, ba)
        decision = dunning.evaluate(
            self.config.dunning, invoices, done, state, today, self.config.reconnection_fee_minor
        )
        overdue = dunning.overdue(invoices, today)
        outcome: PromiseOutcome | None = None
        if held and promise is not None:
            judged = dunning.promise_outcome(await self._open(ba, None), promise.until, today)
            if judged is not None:
                outcome = PromiseOutcome(promise.promise_id, judged, dunning.overdue(await self._open(ba, None), today))
        fees = {(a.invoice, a.step): a for a in decision.actions if isinstance(a, LateFee)}
        notes = {(a.invoice, a.step): a for a in decision.actions if isinstance(a, Notify)}
        application_id = f"DUNNING:{ba}:{uuid.uuid4().hex}"
        audit = _Audit(application_id, ba, now_s)
        steps: list[DunningStep] = []
        taken: list[TakenStep] = []
        for invoice, step in sorted(decision.done):
            fee = fees.get((invoice, step))
            note = notes.get((invoice, step))
            charge = ""
            if fee is not None:
                c = Charge(LATE_FEE, f"Late fee ({step}) for invoice {invoice}", fee.amount, tax_code="exempt")
                charge = json.dumps(c.__dict__)
            text = f"dunning_{step} {invoice} {note.channel.value} {overdue} {now_ms}" if note else ""
            steps.append(DunningStep(f"{invoice}|{step}", charge, text))
            channel = note.channel.value if note else ""
            taken.append(TakenStep(invoice, step, now_s, overdue, fee.amount if fee else 0, channel))
            audit.add("dunning_step", invoice=invoice, step=step, late_fee_minor=taken[-1].late_fee, channel=channel)
        epoch = info.get("epoch", "0")
        for action in decision.actions:
            if isinstance(action, Restore):
                charge = ""
                if action.reconnection_fee:
                    c = Charge(RECONNECTION_FEE, "Reconnection fee", action.reconnection_fee)
                    charge = json.dumps(c.__dict__)
                steps.append(DunningStep(f"restore|{epoch}", charge, f"service_restored {ba} - {overdue} {now_ms}"))
                audit.add("service_restored", reconnection_fee_minor=action.reconnection_fee)
            if isinstance(action, ChangeState):
                changed = f"service_{action.target.value.lower()} {ba} - {overdue} {now_ms}"
                steps.append(DunningStep(f"state|{action.target.value}|{epoch}", "", changed))
                audit.add("dunning_state", action.reason, state=action.target.value, overdue_minor=overdue)
                if action.target is ServiceState.TERMINATED:
                    audit.add("collection_handover", amount_minor=overdue)
        if outcome is not None:
            audit.add(f"promise_{outcome.outcome.lower()}", promise=outcome.promise_id, overdue_minor=outcome.overdue)
        target = decision.state.value if decision.state != state else ""
        if not audit.entries:
            return None, decision, overdue, today
        args = DunningArgs(state=target, steps=tuple(steps), now_s=now_s)
        decided = Decided(application_id, ba, tuple(taken), outcome, args, tuple(audit.entries), now_s)
        return decided, decision, overdue, today

    async def follow(self, ba: str) -> bool:
        """Order each line into the account's dunning state (or out of it once restored);
        True while some line has not got there yet."""
        if self.lines is None:
            return False
        info = await self.accounts.get(ba)
        state = ServiceState(info.get("state", "ACTIVE"))
        epoch = info.get("epoch", "0")
        unsettled = False
        for line in await self.accounts.lines(ba):
            current = await self.lines.get_line(line.line)
            if current is None or current.state.value == "terminated":
                continue
            order_id = f"{DUNNING_ORDER}{ba}-{epoch}-{line.account_id}"
            by_dunning = current.order_id.startswith(DUNNING_ORDER)
            if state in ORDER_FOR:
                kind, reached = ORDER_FOR[state]
                if current.state.value not in reached:
                    reason = "NON_PAYMENT" if kind == "TERMINATE" else ""
                    await self.lines.order(order_id, line.line, kind, reason=reason)
                    unsettled = True
            elif current.state.value in ("barred_outgoing", "suspended") and by_dunning:
                order = await self.lines.order(order_id, line.line, "RESUME")
                unsettled = unsettled or order.status != "COMPLETED"
            elif by_dunning and current.order_id != order_id:
                # A bar or suspension ordered before the payment may still be on its way:
                # look again until it is acknowledged, then resume.
                previous = await self.lines.get_order(current.order_id)
                unsettled = unsettled or (previous is not None and previous.status == "IN_PROGRESS")
        return unsettled

    async def promise(self, ba: str, until: date, actor: str) -> None:
        """A promise to pay: the account's invoices are not dunned until ``until`` (at
        most ``PROMISE_MAX_DAYS`` ahead). Committed with its audit entry; made again the
        same day for the same day, it is the same promise."""
        today = self.today()
        if not today <= until <= today + timedelta(days=PROMISE_MAX_DAYS):
            raise InvalidRequest("until", f"must be a date from today to {PROMISE_MAX_DAYS} days ahead")
        now_s = self.clock.now_ms() // 1000
        promise_id = f"{ba}:{today.isoformat()}:{until.isoformat()}"
        entry = AuditEntry(
            uuid.uuid4().hex, datetime.fromtimestamp(now_s, UTC), caller_name(), "promise_to_pay", ba, "",
            {"until": until.isoformat(), "agent": actor, "promise": promise_id},
        )  # fmt: skip
        await self.record.record_promise(Promise(promise_id, ba, until, actor, now_s), entry)
        await self.evaluate(ba)


class _Audit:
    """The audit entries of one dunning decision: ids derived from its application, the
    actor ``dunning`` (the caller that set it off in the details)."""

    def __init__(self, application_id: str, ba: str, at_s: int) -> None:
        self.application_id = application_id
        self.ba = ba
        self.at = datetime.fromtimestamp(at_s, UTC)
        self.entries: list[AuditEntry] = []

    def add(self, action: str, reason: str = "", **details: object) -> None:
        entry_id = f"{self.application_id}:{len(self.entries)}"
        facts = {**details, "caller": caller_name()}
        self.entries.append(AuditEntry(entry_id, self.at, "dunning", action, self.ba, reason, facts))
