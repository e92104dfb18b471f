"""The Billing gRPC service: protobuf in, domain calls, protobuf out (nothing more)."""

from __future__ import annotations

from datetime import UTC, date
from typing import Any

import grpc

from charging.audit_trail import Position
from charging.cdrs import UsageRow
from charging.errors import InvalidRequest
from charging.status import rpc
from charging.usage_pages import UsageQuery, instant, usage_page
from charging.v1 import billing_pb2, billing_pb2_grpc
from postpaid import as_of, dunning
from postpaid.billing import Billing
from postpaid.render import render_html, render_pdf

# ListInvoices pages (invoices).
PAGE, MAX_PAGE = 100, 1000


def _ba(value: str) -> str:
    if not value:
        raise InvalidRequest("billing_account", "is required")
    return value


def money_pb(record: dict[str, Any]) -> billing_pb2.MoneyRecord:
    return billing_pb2.MoneyRecord(
        kind=record["kind"],
        billing_account=record["ba"],
        amount_minor=record["amount"],
        allocations={str(k): int(v) for k, v in (record.get("allocations") or {}).items()},
        number=record.get("number", ""),
        replayed=record.get("replayed", False),
    )


def dispute_pb(d: dict[str, Any]) -> billing_pb2.BillingDispute:
    return billing_pb2.BillingDispute(
        dispute_id=d["id"],
        invoice_number=d["invoice"],
        amount_minor=d["amount"],
        status=d["status"],
        reason=d["reason"],
        resolution=d.get("resolution", ""),
        credit_note=d.get("credit_note", ""),
        line=d.get("line", ""),
    )


def usage_record_pb(row: UsageRow) -> billing_pb2.UsageRecord:
    return billing_pb2.UsageRecord(
        record_id=row.record_id,
        occurred_at=row.occurred_at.astimezone(UTC).isoformat(),
        account_id=row.account,
        msisdn=row.msisdn,
        plan_id=row.plan_id,
        service=row.service,
        rating_group=row.rating_group or 0,
        called_party=row.called_party,
        zone=row.zone,
        band=row.band,
        visited_network=row.visited_network,
        roaming=row.roaming,
        unit=row.unit,
        units=row.units,
        cost_micros=row.cost_micros,
        money_micros=row.money_micros,
        bucket_units=row.bucket_units,
        session_id=row.session_id,
        request_number=row.request_number or 0,
        event_id=row.event_id,
        cause=row.cause,
    )


class BillingServicer(billing_pb2_grpc.BillingServicer):
    def __init__(self, billing: Billing) -> None:
        self.billing = billing

    async def _invoice(self, number: str) -> billing_pb2.Invoice:
        if not number:
            raise InvalidRequest("number", "is required")
        inv = await self.billing.invoice(number)
        st = await self.billing.invoice_state(number)
        return billing_pb2.Invoice(
            number=inv.number,
            billing_account=inv.billing_account,
            period_start=inv.period_start.isoformat(),
            period_end=inv.period_end.isoformat(),
            issued=inv.issued.isoformat(),
            due=inv.due.isoformat(),
            net_minor=inv.net_total,
            tax_minor=inv.tax_total,
            total_minor=inv.total,
            total_due_minor=inv.total_due,
            open_minor=int(st["open"]),
            disputed_minor=int(st["disputed"]),
            status=st["status"],
            delivery=st["delivery"],
            kind=inv.kind,
            currency=inv.currency,
            document_json=inv.to_json(),
            payment_reference=inv.payment_reference,
        )

    async def _status(self, ba: str) -> billing_pb2.DunningStatus:
        info = await self.billing.account(ba)
        invoices = await self.billing.collection.invoices(ba)
        today = await self.billing.collection.today_for(ba)
        rows = dunning.status(self.billing.config.dunning, invoices, today)
        return billing_pb2.DunningStatus(
            billing_account=ba,
            state=info.get("state", "ACTIVE"),
            overdue_minor=dunning.overdue(invoices, today),
            invoices=[
                billing_pb2.DunningInvoice(
                    number=r.invoice, days_overdue=r.days_overdue, collectible_minor=r.collectible, step=r.step or ""
                )
                for r in rows
            ],
            promised_until=await self.billing.collection.promised_until(ba),
        )

    @rpc("GetBillingAccount")
    async def GetBillingAccount(
        self, request: billing_pb2.BillingAccountId, context: grpc.aio.ServicerContext
    ) -> billing_pb2.BillingAccount:
        info = await self.billing.account(_ba(request.billing_account))
        return billing_pb2.BillingAccount(
            billing_account=request.billing_account,
            customer_id=info.get("customer", ""),
            cycle_day=int(info["cycle_day"]),
            time_zone=info["time_zone"],
            next_period=info["next_period"],
            balance_minor=int(info.get("balance", 0)),
            credit_minor=int(info.get("credit", 0)),
            state=info.get("state", "ACTIVE"),
            lines=info["lines"],
        )

    @rpc("ListInvoices")
    async def ListInvoices(
        self, request: billing_pb2.BillingAccountId, context: grpc.aio.ServicerContext
    ) -> billing_pb2.InvoiceList:
        if not 0 <= request.page_size <= MAX_PAGE:
            raise InvalidRequest("page_size", f"must be 0 (the default, {PAGE}) to {MAX_PAGE}")
        size = request.page_size or PAGE
        numbers = await self.billing.invoices_of(_ba(request.billing_account), request.page_token, size)
        return billing_pb2.InvoiceList(
            invoices=[await self._invoice(n) for n in numbers],
            next_page_token=numbers[-1] if len(numbers) == size else "",
        )

    @rpc("GetInvoice")
    async def GetInvoice(
        self, request: billing_pb2.InvoiceId, context: grpc.aio.ServicerContext
    ) -> billing_pb2.Invoice:
        return await self._invoice(request.number)

    @rpc("RenderInvoice")
    async def RenderInvoice(
        self, request: billing_pb2.RenderRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.RenderedInvoice:
        inv = await self.billing.invoice(request.number)
        if request.format == billing_pb2.RENDER_FORMAT_PDF:
            return billing_pb2.RenderedInvoice(content_type="application/pdf", content=render_pdf(inv))
        if request.format == billing_pb2.RENDER_FORMAT_HTML:
            return billing_pb2.RenderedInvoice(
                content_type="text/html; charset=utf-8", content=render_html(inv).encode()
            )
        raise InvalidRequest("format", "must be HTML or PDF")

    @rpc("ResendInvoice")
    async def ResendInvoice(
        self, request: billing_pb2.InvoiceId, context: grpc.aio.ServicerContext
    ) -> billing_pb2.Invoice:
        await self.billing.resend(request.number)
        return await self._invoice(request.number)

    @rpc("RecordPayment")
    async def RecordPayment(
        self, request: billing_pb2.PaymentRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.MoneyRecord:
        record = await self.billing.payments.pay(
            _ba(request.billing_account), request.amount_minor, request.channel, request.reference
        )
        answer = money_pb(record)
        answer.credit_minor = int((await self.billing.account(request.billing_account)).get("credit", 0))
        return answer

    @rpc("RefundCredit")
    async def RefundCredit(
        self, request: billing_pb2.RefundRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.MoneyRecord:
        record = await self.billing.payments.refund(
            _ba(request.billing_account), request.amount_minor, request.reference, request.reason
        )
        return money_pb(record)

    @rpc("IssueCreditNote")
    async def IssueCreditNote(
        self, request: billing_pb2.CreditNoteRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.MoneyRecord:
        if not request.actor:
            raise InvalidRequest("actor", "is required")
        record = await self.billing.payments.credit_note(
            request.invoice_number, request.amount_minor, request.reason, request.key, actor=request.actor
        )
        return money_pb(record)

    @rpc("OpenDispute")
    async def OpenDispute(
        self, request: billing_pb2.DisputeRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.BillingDispute:
        d = await self.billing.payments.open_dispute(
            request.dispute_id,
            request.invoice_number,
            request.amount_minor,
            request.reason,
            request.actor,
            request.line,
        )
        return dispute_pb(d)

    @rpc("ResolveDispute")
    async def ResolveDispute(
        self, request: billing_pb2.ResolveDisputeRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.BillingDispute:
        d = await self.billing.payments.resolve_dispute(
            request.dispute_id, request.accept, request.reason, request.actor
        )
        return dispute_pb(d)

    @rpc("AddAdjustment")
    async def AddAdjustment(
        self, request: billing_pb2.AdjustmentRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.Adjustment:
        doc = await self.billing.payments.adjust(
            request.adjustment_id, _ba(request.billing_account), request.amount_minor, request.reason, request.actor
        )
        return billing_pb2.Adjustment(
            adjustment_id=doc["id"], billing_account=doc["ba"], amount_minor=doc["amount"], reason=doc["reason"]
        )

    @rpc("PromiseToPay")
    async def PromiseToPay(
        self, request: billing_pb2.PromiseRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.DunningStatus:
        try:
            until = date.fromisoformat(request.until)
        except ValueError:
            raise InvalidRequest("until", "must be a date YYYY-MM-DD") from None
        if not request.actor:
            raise InvalidRequest("actor", "is required")
        ba = _ba(request.billing_account)
        await self.billing.account(ba)
        await self.billing.collection.promise(ba, until, request.actor)
        return await self._status(ba)

    @rpc("RunBilling")
    async def RunBilling(
        self, request: billing_pb2.RunBillingRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.RunBillingReport:
        if request.limit < 0:
            raise InvalidRequest("limit", "must not be negative")
        r = await self.billing.runs.run(limit=request.limit, at_s=self._as_of(request.as_of))
        return billing_pb2.RunBillingReport(
            accounts=r.accounts,
            issued=r.issued,
            already=r.already,
            failed=r.failed,
            seconds=r.seconds,
            as_of=r.as_of,
            skipped=r.skipped,
            invoices=r.invoices,
            failed_accounts=r.failed_accounts,
            next_due=r.next_due,
        )

    def _as_of(self, day: str) -> int:
        return as_of.instant(day, self.billing.clock.now_ms() // 1000, self.billing.config.time_zone)

    @rpc("RunDunning")
    async def RunDunning(
        self, request: billing_pb2.RunDunningRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.RunDunningReport:
        r = await self.billing.collection.run(at_s=self._as_of(request.as_of) if request.as_of else None)
        outcomes = [
            billing_pb2.DunningOutcome(
                billing_account=o.billing_account,
                state=o.state,
                overdue_minor=o.overdue,
                actions=o.actions,
                failed=o.failed,
                as_of=o.as_of,
            )
            for o in r.outcomes
        ]
        return billing_pb2.RunDunningReport(
            accounts=r.accounts, actions=r.actions, as_of=r.as_of, failed=r.failed, outcomes=outcomes
        )

    @rpc("GetDunningStatus")
    async def GetDunningStatus(
        self, request: billing_pb2.BillingAccountId, context: grpc.aio.ServicerContext
    ) -> billing_pb2.DunningStatus:
        return await self._status(_ba(request.billing_account))

    @rpc("GetDispute")
    async def GetDispute(
        self, request: billing_pb2.DisputeId, context: grpc.aio.ServicerContext
    ) -> billing_pb2.BillingDispute:
        if not request.dispute_id:
            raise InvalidRequest("dispute_id", "is required")
        return dispute_pb(await self.billing.payments.dispute(request.dispute_id))

    @rpc("ListMoneyRecords")
    async def ListMoneyRecords(
        self, request: billing_pb2.BillingAccountId, context: grpc.aio.ServicerContext
    ) -> billing_pb2.MoneyRecordList:
        records = await self.billing.payments.records(_ba(request.billing_account))
        return billing_pb2.MoneyRecordList(records=[money_pb(r) for r in records])

    @rpc("ListBillRuns")
    async def ListBillRuns(
        self, request: billing_pb2.ListBillRunsRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.BillRunList:
        if request.limit < 0:
            raise InvalidRequest("limit", "must not be negative")
        runs = []
        for r in await self.billing.run_history(request.limit or 20):
            report = billing_pb2.RunBillingReport(
                accounts=r["accounts"],
                issued=r["issued"],
                already=r["already"],
                failed=r["failed"],
                seconds=r["seconds"],
            )
            runs.append(billing_pb2.BillRun(at=r["at"], report=report))
        return billing_pb2.BillRunList(runs=runs)

    @rpc("ListUsageRecords")
    async def ListUsageRecords(
        self, request: billing_pb2.UsageQuery, context: grpc.aio.ServicerContext
    ) -> billing_pb2.UsagePage:
        if not 0 <= request.page_size <= MAX_PAGE:
            raise InvalidRequest("page_size", f"must be 0 (the default, {PAGE}) to {MAX_PAGE}")
        query = UsageQuery(
            account=request.account_id,
            msisdn=request.msisdn,
            start=instant("from", getattr(request, "from")),
            end=instant("to", request.to),
            page_size=request.page_size or PAGE,
            after=Position.from_token(request.page_token) if request.page_token else None,
        )
        page = await usage_page(self.billing.book.pool, query)
        records = [usage_record_pb(r) for r in page.records]
        return billing_pb2.UsagePage(records=records, next_page_token=page.next_token)
