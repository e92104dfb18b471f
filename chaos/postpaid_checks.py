"""The postpaid checkers: pure functions over what the database holds after a run (its
invoices, usage records, payments and audit entries), the billing accounts as the
Billing API answers them, and what the clients saw (``postpaid.Ledger``).

* **Invoice numbers are gapless and unique** per issuer and series: 1..N, each once.
* **One invoice per billing account and period**: no two periods of one account
  overlap, and none is skipped (each starts the day after the one before ends).
* **Bill runs lose nothing they answered**: every invoice an acknowledged run said it
  issued is in the database.
* **Every invoice's usage is exactly the usage records it covers**
  (``chaos/postpaid_usage.py``): some assignment of every usage record of a postpaid line
  to exactly one of its invoices makes each invoice's itemised rows exactly its records
  merged (per session or event and service: the first record's time, in the order they
  were made, and the sums to the unit and the micro), no row left over (the last bill
  run of the run bills everything used). Each usage charge line is its category's
  itemised money rounded once.
* **No acknowledged payment is lost and none applied twice**: every payment a client saw
  acknowledged has its row (its channel and reference, its amount) applied in Redis;
  every answer to one payment is the same (repeats, concurrent duplicates, resolution);
  no payment row stands for a request never made.
* **An audit entry for every payment**, exactly one.
* **Receivables balance**, per billing account: invoiced - paid = what the account owes
  (``balance_minor``) = what its invoices have open - its credit; and per invoice, what
  is paid covers the oldest first (allocation is oldest first, an overpayment's credit
  pays the next invoice when it is issued), and no invoice has more allocated to it (the
  ``allocations`` rows, which must be what the payment's answer said) than it has paid.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from chaos.checks import Violation
from chaos.postpaid import BillingOp, Paid
from chaos.postpaid_usage import IssuedInvoice as IssuedInvoice
from chaos.postpaid_usage import UsageRecord as UsageRecord
from chaos.postpaid_usage import UsageRow as UsageRow
from chaos.postpaid_usage import usage_invoiced as usage_invoiced

DAY = timedelta(days=1)


@dataclass(frozen=True)
class PaymentRow:
    billing_account: str
    key: str  # channel:reference
    amount_minor: int
    applied: bool  # billing_applied says APPLIED
    allocations: tuple[tuple[str, int], ...] = ()  # invoice number -> amount, as kept (sorted)


@dataclass(frozen=True)
class AuditedPayment:
    billing_account: str
    key: str  # channel:reference, from the entry's details


@dataclass(frozen=True)
class Receivable:
    """A billing account as the Billing API answers it."""

    billing_account: str
    balance_minor: int  # what the customer owes
    credit_minor: int
    open_minor: int  # the open amounts of its invoices, summed
    open_by_invoice: tuple[tuple[str, int], ...] = ()  # invoice number -> its open amount


def numbers_gapless(invoices: Iterable[IssuedInvoice]) -> list[Violation]:
    found: list[Violation] = []
    by_series: dict[tuple[str, str], list[int]] = {}
    ids: dict[str, int] = {}
    for inv in invoices:
        by_series.setdefault((inv.issuer, inv.series), []).append(inv.number)
        ids[inv.invoice_id] = ids.get(inv.invoice_id, 0) + 1
    for (issuer, series), numbers in sorted(by_series.items()):
        want = list(range(1, len(numbers) + 1))
        if sorted(numbers) != want:
            missing = sorted(set(want) - set(numbers))
            twice = sorted({n for n in numbers if numbers.count(n) > 1})
            found.append(
                Violation("invoice_numbers", "-", f"{issuer} {series}: missing {missing[:10]}, twice {twice[:10]}")
            )
    for invoice_id, n in sorted(ids.items()):
        if n > 1:
            found.append(Violation("invoice_numbers", "-", f"{invoice_id} issued {n} times"))
    return found


def runs_kept(ledger: Iterable[BillingOp], invoices: Iterable[IssuedInvoice]) -> list[Violation]:
    """Every invoice an acknowledged bill run said it issued is in the database."""
    kept = {inv.invoice_id for inv in invoices}
    return [
        Violation("bill_runs", "-", f"the bill run as of {op.identity} issued {number}, which is not kept")
        for op in ledger
        if op.kind == "bill_run" and op.outcome == "ok"
        for number in op.issued
        if number not in kept
    ]


def one_per_period(invoices: Iterable[IssuedInvoice]) -> list[Violation]:
    found: list[Violation] = []
    by_account: dict[str, list[IssuedInvoice]] = {}
    for inv in invoices:
        by_account.setdefault(inv.billing_account, []).append(inv)
    for ba, mine in sorted(by_account.items()):
        mine.sort(key=lambda i: (i.period_start, i.period_end, i.invoice_id))
        for before, after in itertools.pairwise(mine):
            if after.period_start <= before.period_end:
                found.append(
                    Violation(
                        "one_invoice_per_period",
                        ba,
                        f"{before.invoice_id} ({before.period_start}..{before.period_end}) and {after.invoice_id} "
                        f"({after.period_start}..{after.period_end}) bill the same days",
                    )
                )
            elif after.period_start != before.period_end + DAY:
                gap = f"{before.period_end + DAY}..{after.period_start - DAY}"
                found.append(
                    Violation(
                        "one_invoice_per_period",
                        ba,
                        f"no invoice for {gap} (between {before.invoice_id} and {after.invoice_id})",
                    )
                )
    return found


def payments_kept(ledger: Iterable[BillingOp], rows: Iterable[PaymentRow]) -> list[Violation]:
    found: list[Violation] = []
    by_key: dict[tuple[str, str], list[PaymentRow]] = {}
    for row in rows:
        by_key.setdefault((row.billing_account, row.key), []).append(row)
    made: set[tuple[str, str]] = set()
    answers: dict[tuple[str, str], set[Paid]] = {}
    for op in ledger:
        if op.kind != "pay":
            continue
        key = (op.billing_account, op.identity)
        made.add(key)
        if op.outcome != "ok" or op.paid is None:
            continue
        answers.setdefault(key, set()).add(op.paid)
        kept = by_key.get(key, [])
        if (
            len(kept) != 1
            or not kept[0].applied
            or (kept[0].amount_minor, kept[0].allocations)
            != (
                op.amount_minor,
                op.paid.allocations,
            )
        ):
            found.append(
                Violation(
                    "payments_kept", op.billing_account, f"{op.identity} acknowledged ({op.amount_minor}), kept: {kept}"
                )
            )
    for (ba, identity), seen in sorted(answers.items()):
        if len(seen) > 1:
            found.append(Violation("payments_kept", ba, f"{identity} answered differently: {sorted(map(repr, seen))}"))
    for (ba, identity), kept in sorted(by_key.items()):
        if (ba, identity) not in made:
            found.append(Violation("payments_kept", ba, f"payment {identity} of no request"))
        elif len(kept) > 1:
            found.append(Violation("payments_kept", ba, f"payment {identity} kept {len(kept)} times"))
    return found


def payments_audited(rows: Iterable[PaymentRow], audited: Iterable[AuditedPayment]) -> list[Violation]:
    entries: dict[tuple[str, str], int] = {}
    for entry in audited:
        entries[(entry.billing_account, entry.key)] = entries.get((entry.billing_account, entry.key), 0) + 1
    return [
        Violation("payments_audited", row.billing_account, f"payment {row.key} has {n} audit entries")
        for row in rows
        if (n := entries.get((row.billing_account, row.key), 0)) != 1
    ]


def receivables_balance(
    invoices: Iterable[IssuedInvoice], rows: Iterable[PaymentRow], accounts: Iterable[Receivable]
) -> list[Violation]:
    found: list[Violation] = []
    invoices, rows = list(invoices), list(rows)
    invoiced: dict[str, int] = {}
    paid: dict[str, int] = {}
    for inv in invoices:
        invoiced[inv.billing_account] = invoiced.get(inv.billing_account, 0) + inv.total_minor
    for row in rows:
        if row.applied:
            paid[row.billing_account] = paid.get(row.billing_account, 0) + row.amount_minor
    for acc in accounts:
        owed = invoiced.get(acc.billing_account, 0) - paid.get(acc.billing_account, 0)
        if not owed == acc.balance_minor == acc.open_minor - acc.credit_minor:
            found.append(
                Violation(
                    "receivables",
                    acc.billing_account,
                    f"invoiced {invoiced.get(acc.billing_account, 0)} - paid {paid.get(acc.billing_account, 0)} "
                    f"= {owed}, owes {acc.balance_minor}, open {acc.open_minor} - credit {acc.credit_minor} "
                    f"= {acc.open_minor - acc.credit_minor}",
                )
            )
    # Per invoice: what is paid covers the oldest invoices first (a payment is allocated
    # oldest first, and an overpayment's credit pays the next invoice when it is issued),
    # and no invoice has more allocated to it than it has paid.
    allocated: dict[str, int] = {}
    for row in rows:
        for number, amount in row.allocations if row.applied else ():
            allocated[number] = allocated.get(number, 0) + amount
    for acc in accounts:
        covered = paid.get(acc.billing_account, 0)
        mine = sorted((i for i in invoices if i.billing_account == acc.billing_account), key=lambda i: i.number)
        open_now = dict(acc.open_by_invoice)
        for inv in mine:
            want = inv.total_minor - min(max(covered, 0), inv.total_minor)
            covered -= inv.total_minor
            if inv.invoice_id in open_now and open_now[inv.invoice_id] != want:
                found.append(
                    Violation(
                        "receivables",
                        acc.billing_account,
                        f"{inv.invoice_id}: open {open_now[inv.invoice_id]}, but paid oldest first it has {want} open",
                    )
                )
            if allocated.get(inv.invoice_id, 0) > inv.total_minor - want:
                found.append(
                    Violation(
                        "receivables",
                        acc.billing_account,
                        f"{inv.invoice_id}: {allocated[inv.invoice_id]} allocated to it, "
                        f"{inv.total_minor - want} of it paid",
                    )
                )
    return found
