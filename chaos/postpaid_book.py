"""What the system of record and the Billing API hold of the postpaid lines after a run,
as the records ``chaos/postpaid_checks.py`` checks."""

from __future__ import annotations

import json
from dataclasses import dataclass

import psycopg

from chaos.postpaid import Line
from chaos.postpaid_checks import AuditedPayment, IssuedInvoice, PaymentRow, Receivable, UsageRecord, UsageRow
from charging.v1 import billing_pb2, billing_pb2_grpc


@dataclass(frozen=True)
class Book:
    invoices: list[IssuedInvoice]
    usage: list[UsageRecord]
    payments: list[PaymentRow]
    audited: list[AuditedPayment]


def invoice_of(row: tuple[object, ...]) -> IssuedInvoice:
    invoice_id, issuer, series, number, ba, kind, start, end, total, document = row
    doc = document if isinstance(document, dict) else json.loads(str(document))
    usage = tuple(
        UsageRow(str(section["line"]), int(u[0]), str(u[1]), str(u[2]), int(u[4]), int(u[6]))
        for section in doc["sections"]
        for u in section["usage"]
    )
    charges = tuple(
        (str(c["category"]), int(c["amount"]))
        for section in doc["sections"]
        for c in section["charges"]
        if c["kind"] == "USAGE"
    )
    return IssuedInvoice(
        str(invoice_id), str(issuer), str(series), int(str(number)), str(ba), str(kind), start, end,  # type: ignore[arg-type]
        int(str(total)), usage, charges,
    )  # fmt: skip


def read(database_url: str, lines: list[Line]) -> Book:
    msisdn = {line.subscriber.account: line.subscriber.msisdn for line in lines}
    with psycopg.connect(database_url) as conn:
        invoices = [
            invoice_of(row)
            for row in conn.execute(
                "SELECT invoice_id, issuer, series, number, billing_account, kind, period_start, period_end, "
                "total_minor, document FROM invoices ORDER BY issuer, series, number"
            )
        ]
        usage = [
            UsageRecord(
                str(rid),
                msisdn[str(account)],
                str(session or event),
                str(service),
                int(ms),
                int(units),
                int(cost),
                int(number or 0),
                bool(roaming),
            )
            for rid, account, session, event, service, ms, units, cost, number, roaming in conn.execute(
                "SELECT record_id, account, session_id, event_id, service, "
                "(extract(epoch FROM occurred_at) * 1000)::bigint, units, cost_micros, request_number, roaming "
                "FROM usage_records WHERE account = ANY(%s)",
                (list(msisdn),),
            )
        ]
        allocated: dict[str, list[tuple[str, int]]] = {}
        for application, invoice, amount in conn.execute(
            "SELECT application_id, invoice_id, amount_minor FROM allocations"
        ):
            allocated.setdefault(str(application), []).append((str(invoice), int(amount)))
        payments = [
            PaymentRow(
                str(ba), str(key), int(amount), outcome == "APPLIED", tuple(sorted(allocated.get(f"PAYMENT:{pid}", [])))
            )
            for pid, ba, key, amount, outcome in conn.execute(
                "SELECT p.payment_id, p.billing_account, p.idempotency_key, p.amount_minor, a.outcome FROM payments p "
                "LEFT JOIN billing_applied a ON a.application_id = 'PAYMENT:' || p.payment_id"
            )
        ]
        audited = [
            AuditedPayment(str(ba), f"{channel}:{ref}")
            for ba, channel, ref in conn.execute(
                "SELECT subject, details->>'channel', details->>'ref' FROM audit WHERE action = 'payment'"
            )
        ]
    return Book(invoices, usage, payments, audited)


async def receivables(stub: billing_pb2_grpc.BillingStub, lines: list[Line]) -> list[Receivable]:
    found = []
    for ba in sorted({line.billing_account for line in lines}):
        account = await stub.GetBillingAccount(billing_pb2.BillingAccountId(billing_account=ba), timeout=30)
        open_by_invoice: list[tuple[str, int]] = []
        token = ""
        while True:
            page = await stub.ListInvoices(
                billing_pb2.BillingAccountId(billing_account=ba, page_size=1000, page_token=token), timeout=30
            )
            open_by_invoice += [(i.number, i.open_minor) for i in page.invoices]
            token = page.next_page_token
            if not token:
                break
        open_minor = sum(amount for _number, amount in open_by_invoice)
        found.append(Receivable(ba, account.balance_minor, account.credit_minor, open_minor, tuple(open_by_invoice)))
    return found
