"""Postpaid in a chaos run: lines applied for through the CRM, usage on them while bill
runs close periods, and payments against the issued invoices, under the same faults.

* **Lines**: each postpaid line is applied for with ``Crm.SubmitApplication`` (a customer
  of its own, so a billing account ``C<customer>`` of its own) before the faults start;
  the provisioning worker and the bundled network simulator activate it, which enrols it
  in billing (its balance becomes headroom under the credit limit).
* **Usage**: one client per line (``workload.Client``'s voice sessions and SMS debits, in
  the run's history, so the generic checks cover them too).
* **Bill runs** (``Billing.RunBilling``) as of one month ahead, then two months ahead,
  while that usage flows, some sent twice at once; a bill run's outcome is unknown when
  it times out, and a later run completes what it left. After the faults a last run as of
  three months ahead bills everything used, so every usage record is on an invoice.
* **Payments** (``Billing.RecordPayment``, from two payers at once) against the open
  invoices: partial, exact and overpaying amounts, a new reference or one used before
  (the same payment again), some sent twice at once; unknown outcomes are sent again after the faults until answered.

What the client saw is kept in a ``Ledger`` (bill runs and payments; the usage is in the
run's ``History``); ``chaos/postpaid_checks.py`` checks it against the database.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from calendar import monthrange
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from typing import Literal
from zoneinfo import ZoneInfo

import grpc

from chaos.history import History
from chaos.workload import REFUSED, Client, Stubs, Subscriber
from charging.v1 import billing_pb2, billing_pb2_grpc, crm_pb2, crm_pb2_grpc
from postpaid import config as billing_config
from provisioning.applications import icao_check_digit

CALL_TIMEOUT_S = 5.0
CHANNELS = ("BANK_TRANSFER", "CARD", "DIRECT_DEBIT")
PAYERS = 2  # concurrent payers
BillingKind = Literal["bill_run", "pay"]
Outcome = Literal["ok", "refused", "unknown"]


@dataclass(frozen=True)
class Line:
    subscriber: Subscriber
    billing_account: str


@dataclass(frozen=True)
class Paid:
    """The parts of a payment's answer that must be the same on every repeat."""

    amount_minor: int
    allocations: tuple[tuple[str, int], ...]  # invoice number -> amount, sorted


@dataclass
class BillingOp:
    seq: int
    kind: BillingKind
    billing_account: str  # "" for a bill run
    identity: str  # a payment's channel:reference, a bill run's as-of day
    amount_minor: int  # a payment's
    at_s: float
    outcome: Outcome = "unknown"
    paid: Paid | None = None
    issued: tuple[str, ...] = ()  # the invoices a bill run said it issued
    error: str = ""
    resolved: bool = False

    @property
    def channel(self) -> str:
        return self.identity.partition(":")[0]

    @property
    def reference(self) -> str:
        return self.identity.partition(":")[2]


@dataclass
class Ledger:
    operations: list[BillingOp] = field(default_factory=list)

    def add(self, op: BillingOp) -> BillingOp:
        self.operations.append(op)
        return op

    def append_to(self, path: str) -> None:
        """Add the bill runs and payments to a history file (JSON lines)."""
        with open(path, "a") as out:
            for op in self.operations:
                out.write(json.dumps({"billing": asdict(op)}, sort_keys=True) + "\n")

    def counts(self) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = {}
        for op in self.operations:
            row = table.setdefault(op.kind, {})
            label = op.outcome + (" (resolved)" if op.resolved else "")
            row[label] = row.get(label, 0) + 1
        return table


def as_of(months: int, today: date | None = None) -> str:
    """The day ``months`` months after today in the billing time zone (the last of its
    month when shorter), as a bill run's ``as_of``: every period of a line activated
    today that ends by then is billed."""
    start = today or datetime.now(ZoneInfo(billing_config.default().time_zone)).date()
    year, month = divmod(start.month - 1 + months, 12)
    year, month = start.year + year, month + 1
    return date(year, month, min(start.day, monthrange(year, month)[1])).isoformat()


def application(seed: int, n: int) -> crm_pb2.Application:
    msisdn = f"4917099{seed % 1000:03d}{n:03d}"
    body = f"L{seed % 10_000:04d}{n:04d}"
    passport = body + str(icao_check_digit(body))
    return crm_pb2.Application(
        crm_order_id=f"chaos-{seed}-pp{n}",
        customer_kind="INDIVIDUAL",
        contract="POSTPAID",
        plan_id="mobile-postpaid",
        msisdn=msisdn,
        imsi=f"26201{seed % 10_000:04d}{n:06d}",
        applicant=crm_pb2.Person(
            given_name="Chaos", family_name=f"Payer {chr(65 + n % 26)}", date_of_birth="1990-05-17"
        ),
        address=crm_pb2.Address(street=f"Hauptstr. {n + 1}", city="Berlin", postal_code="10115", country="DE"),
        contact=crm_pb2.Contact(email=f"payer{n}@example.org", phone="4915112345678"),
        identity_document=crm_pb2.IdentityDocument(
            type="PASSPORT", number=passport, issuing_country="DE", expiry_date="2031-01-01"
        ),
        credit_history=crm_pb2.CreditHistory(
            defaults_5y=0,
            late_payments_12m=0,
            tenure_months=36,
            monthly_income_micros=4_000_000_000,
            monthly_debt_micros=500_000_000,
        ),
    )


async def open_lines(channel: grpc.aio.Channel, seed: int, count: int, timeout_s: float = 60.0) -> list[Line]:
    """Apply for ``count`` postpaid lines and wait until the network activated each."""
    crm = crm_pb2_grpc.CrmStub(channel)
    billing = billing_pb2_grpc.BillingStub(channel)
    msisdns = []
    for n in range(count):
        app = application(seed, n)
        order = await crm.SubmitApplication(app, timeout=30)
        if order.status == crm_pb2.ORDER_STATUS_REJECTED:
            raise RuntimeError(f"postpaid application {app.crm_order_id} rejected: {order}")
        msisdns.append(app.msisdn)
    lines: list[Line] = []
    deadline = time.monotonic() + timeout_s
    for msisdn in msisdns:
        while True:
            line = await crm.GetLine(crm_pb2.LineRef(msisdn=msisdn), timeout=10)
            if line.state == "active":
                ba = f"C{line.customer_id}"
                if msisdn in await _billed_lines(billing, ba):
                    lines.append(Line(Subscriber(line.account_id, msisdn, sessions=True), ba))
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"postpaid line {msisdn} not active and billed after {timeout_s:g} s: {line.state}")
            await asyncio.sleep(0.2)
    return lines


async def _billed_lines(billing: billing_pb2_grpc.BillingStub, ba: str) -> list[str]:
    """The lines billed to ``ba`` (none while billing has not enrolled its first yet)."""
    try:
        account = await billing.GetBillingAccount(billing_pb2.BillingAccountId(billing_account=ba), timeout=10)
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            return []
        raise
    return list(account.lines)


def _outcome(err: grpc.aio.AioRpcError) -> Outcome:
    return "refused" if err.code() in REFUSED else "unknown"


async def bill(stub: billing_pb2_grpc.BillingStub, op: BillingOp, timeout_s: float = 60.0) -> BillingOp:
    """Run the bill run of ``op`` once and record what the client saw."""
    try:
        report = await stub.RunBilling(billing_pb2.RunBillingRequest(as_of=op.identity), timeout=timeout_s)
        op.outcome, op.error, op.issued = "ok", "", tuple(report.invoices)
        if report.failed:
            op.error = f"{report.failed} account(s) failed: {list(report.failed_accounts)}"
    except grpc.aio.AioRpcError as err:
        op.outcome, op.error = _outcome(err), f"{err.code().name}: {(err.details() or '')[:120]}"
    return op


async def pay(stub: billing_pb2_grpc.BillingStub, op: BillingOp, timeout_s: float = CALL_TIMEOUT_S) -> BillingOp:
    """Send the payment of ``op`` once and record what the client saw."""
    request = billing_pb2.PaymentRequest(
        billing_account=op.billing_account, amount_minor=op.amount_minor, channel=op.channel, reference=op.reference
    )
    try:
        record = await stub.RecordPayment(request, timeout=timeout_s)
        op.outcome, op.error = "ok", ""
        op.paid = Paid(record.amount_minor, tuple(sorted(record.allocations.items())))
    except grpc.aio.AioRpcError as err:
        op.outcome, op.error = _outcome(err), f"{err.code().name}: {(err.details() or '')[:120]}"
    return op


async def open_minor(stub: billing_pb2_grpc.BillingStub, ba: str) -> int | None:
    """What the account's invoices still have open (None when the server did not answer)."""
    try:
        page = await stub.ListInvoices(billing_pb2.BillingAccountId(billing_account=ba), timeout=CALL_TIMEOUT_S)
    except grpc.aio.AioRpcError:
        return None
    return int(sum(i.open_minor for i in page.invoices))


class Postpaid:
    """The postpaid part of the load: usage clients per line, a biller, a payer."""

    def __init__(
        self,
        seed: int,
        channel: grpc.aio.Channel,
        history: History,
        lines: list[Line],
        t0: float,
        now_s: Callable[[], float] = time.time,
    ) -> None:
        self.seed = seed
        # The server's wall clock (the chaos clock's when it jumps): bill runs are dated
        # from the server's today, which refuses an ``as_of`` before it.
        self.now_s = now_s
        self.rnd = random.Random(f"{seed}/postpaid")
        self.stubs = Stubs(channel)
        self.billing = billing_pb2_grpc.BillingStub(channel)
        self.history = history
        self.lines = lines
        self.t0 = t0
        self.ledger = Ledger()
        self.usage = [
            Client(200 + n, seed, self.stubs, history, [line.subscriber], t0, now_s) for n, line in enumerate(lines)
        ]
        self.billed = asyncio.Event()

    def bill_date(self, months: int) -> str:
        """``as_of`` ``months`` after the server's today."""
        zone = ZoneInfo(billing_config.default().time_zone)
        return as_of(months, datetime.fromtimestamp(self.now_s(), zone).date())

    def _op(self, kind: BillingKind, ba: str, identity: str, amount: int = 0) -> BillingOp:
        seq = len(self.ledger.operations)
        return self.ledger.add(BillingOp(seq, kind, ba, identity, amount, time.monotonic() - self.t0))

    async def run(self, until: float) -> None:
        if not self.lines:
            return
        await asyncio.gather(
            *(self._use(c, until) for c in self.usage), self._bill(until), *(self._pay(n, until) for n in range(PAYERS))
        )

    async def _use(self, client: Client, until: float) -> None:
        sub = client.subscribers[0]
        while time.monotonic() < until:
            if client.last is not None and client.last.outcome == "unknown":
                await asyncio.sleep(client.rnd.uniform(0.05, 0.3))
            if client.rnd.random() < 0.7:
                await client.session(sub, client.issued)
            else:
                await client.debit(sub, client.issued)

    async def _bill(self, until: float) -> None:
        """Two bill runs while usage flows (one, two months ahead), each at a random moment of
        its half of the run; some sent twice at once."""
        span = until - time.monotonic()
        for months in (1, 2):
            start = time.monotonic()
            await asyncio.sleep(self.rnd.uniform(0.1, 0.4) * span)
            day = self.bill_date(months)
            ops = [self._op("bill_run", "", day) for _ in range(2 if self.rnd.random() < 0.3 else 1)]
            await asyncio.gather(*(bill(self.billing, op, timeout_s=CALL_TIMEOUT_S * 2) for op in ops))
            # No answer: run it again (as an operator's scheduler would) while the load lasts.
            # Dated again: the server's clock may have jumped past the first date meanwhile.
            while all(op.outcome == "unknown" for op in ops) and time.monotonic() < until:
                await asyncio.sleep(self.rnd.uniform(0.2, 0.5))
                again = self._op("bill_run", "", self.bill_date(months))
                ops = [await bill(self.billing, again, timeout_s=CALL_TIMEOUT_S * 2)]
            self.billed.set()
            await asyncio.sleep(max(0.0, start + span / 2 - time.monotonic()))

    async def _pay(self, number: int, until: float) -> None:
        """A payer (a bank, a card acquirer): payments one after another on any of the
        billing accounts, racing the other payers and the bill runs."""
        rnd = random.Random(f"{self.seed}/payer{number}")
        sent: list[BillingOp] = []
        while time.monotonic() < until:
            if not self.billed.is_set():
                await asyncio.sleep(0.1)
                continue
            down = bool(sent) and sent[-1].outcome == "unknown"  # back off while the server is down
            await asyncio.sleep(rnd.uniform(0.3, 0.6) if down else rnd.uniform(0.05, 0.3))
            if sent and rnd.random() < 0.25:  # the same payment again (a bank's retry)
                old = rnd.choice(sent)
                sent.append(
                    await pay(self.billing, self._op("pay", old.billing_account, old.identity, old.amount_minor))
                )
                continue
            line = rnd.choice(self.lines)
            open_now = await open_minor(self.billing, line.billing_account)
            if not open_now:
                continue
            amount = max(1, rnd.choice([open_now // 3, open_now, open_now + 500, 1]))
            identity = f"{rnd.choice(CHANNELS)}:chaos-{number}-{len(self.ledger.operations)}"
            op = self._op("pay", line.billing_account, identity, amount)
            if rnd.random() < 0.2:
                again = self._op("pay", line.billing_account, identity, amount)
                await asyncio.gather(pay(self.billing, op), pay(self.billing, again))
            else:
                await pay(self.billing, op)
            sent.append(op)

    async def finish(self, deadline: float) -> None:
        """After the faults: every unknown payment sent again until answered, then the last
        bill run (three months after the server's today) until it answers: everything used is
        invoiced."""
        if not self.lines:
            return
        for op in self.ledger.operations:
            if op.kind == "pay" and op.outcome == "unknown":
                op.resolved = True
                await _until_answered(lambda o: pay(self.billing, o), op, deadline)
        last = self._op("bill_run", "", self.bill_date(3))
        last.resolved = True
        await _until_answered(lambda o: bill(self.billing, o), last, deadline)

    def unanswered(self) -> list[BillingOp]:
        """Payments, and the last bill run, that never got an answer (each must have one)."""
        return [op for op in self.ledger.operations if op.outcome == "unknown" and (op.kind == "pay" or op.resolved)]

    def failed_runs(self) -> list[BillingOp]:
        """Bill runs that answered that an account failed, and the last bill run refused
        (it must invoice everything used; one while the load lasts may be refused)."""
        runs = [op for op in self.ledger.operations if op.kind == "bill_run"]
        return [op for op in runs if (op.error and op.outcome == "ok") or (op.resolved and op.outcome == "refused")]


async def _until_answered(send: object, op: BillingOp, deadline: float) -> None:
    delay = 0.05
    while time.monotonic() < deadline:
        await send(op)  # type: ignore[operator]
        if op.outcome != "unknown":
            return
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)
