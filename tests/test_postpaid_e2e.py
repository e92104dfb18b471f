"""Postpaid end to end: real Redis, the real gRPC services, the network simulator through
the provisioning worker, and a real SMTP server on loopback.

Acquire a postpaid customer, activate, call and browse, run the bill, receive the invoice
by mail, do not pay and walk the ladder to barred and suspended, pay, see service
restored; a corporate hierarchy billed on one consolidated invoice; a dispute.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from aiosmtpd.controller import Controller

from charging.clock import ManualClock
from charging.server import App
from charging.settings import Settings
from charging.v1 import (
    billing_pb2,
    billing_pb2_grpc,
    charging_pb2,
    common_pb2,
    crm_pb2,
    crm_pb2_grpc,
)
from postpaid.invoices import Invoice
from tests.conftest import INITIAL, NETWORK_TIMEOUT_S, TERMINATE, Stubs, free_port, session_request
from tests.test_acquisition import application
from tests.test_delivery import Mailbox

DAY = 86_400
NOV_18 = 1_795_000_000  # 2026-11-18 (a Wednesday), 10:13 UTC
GOOD = {"tenure_months": 36, "monthly_income_micros": 4_000_000_000}


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


@pytest.fixture
async def world(
    redis_url: str, database_url: str, clock: ManualClock, mailbox: tuple[Mailbox, int], tmp_path: Path
) -> AsyncIterator[tuple[App, Stubs, crm_pb2_grpc.CrmStub, billing_pb2_grpc.BillingStub]]:
    clock.advance(ms=NOV_18 * 1000 - clock.now_ms())
    settings = Settings(
        grpc_address="127.0.0.1:0",
        metrics_address="",
        nchf_address="",
        redis_url=redis_url,
        database_url=database_url,
        smtp_host="127.0.0.1",
        smtp_port=mailbox[1],
        smtp_sender="billing@operator.example",
        invoice_dir=str(tmp_path / "invoices"),
        shutdown_delay_s=0.0,
        network_timeout_s=NETWORK_TIMEOUT_S,
    )
    app = App(settings, clock=clock, run_background=False)
    await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
    stubs = Stubs.on(channel)
    yield app, stubs, crm_pb2_grpc.CrmStub(channel), billing_pb2_grpc.BillingStub(channel)
    await channel.close()
    await app.stop()


async def voice(stubs: Stubs, msisdn: str, sid: str, seconds: int, to: str = "4915112345678") -> int:
    ask = [{"rating_group": 10, "requested": {"time_s": max(seconds, 60)}}]
    a = await stubs.charging.ChargeSession(session_request(sid, INITIAL, 0, ask, msisdn, called_party=to))
    if a.result_code != 2001:
        return int(a.result_code)
    used = [{"rating_group": 10, "used": {"time_s": seconds}}]
    return int((await stubs.charging.ChargeSession(session_request(sid, TERMINATE, 1, used, msisdn, to))).result_code)


async def incoming(stubs: Stubs, msisdn: str, sid: str) -> int:
    req = session_request(sid, INITIAL, 0, [{"rating_group": 10, "requested": {"time_s": 60}}], msisdn, "4930111")
    req.direction = charging_pb2.DIRECTION_TERMINATING
    return int((await stubs.charging.ChargeSession(req)).result_code)


async def data(stubs: Stubs, msisdn: str, sid: str, volume: int) -> int:
    ask = [{"rating_group": 30, "requested": {"total_octets": volume}}]
    a = await stubs.charging.ChargeSession(session_request(sid, INITIAL, 0, ask, msisdn))
    used = [{"rating_group": 30, "used": {"total_octets": volume}}]
    b = await stubs.charging.ChargeSession(session_request(sid, TERMINATE, 1, used, msisdn))
    return int(a.result_code if a.result_code != 2001 else b.result_code)


async def sms(stubs: Stubs, msisdn: str, event_id: str) -> int:
    req = charging_pb2.EventRequest(
        event_id=event_id,
        action=charging_pb2.REQUESTED_ACTION_DIRECT_DEBITING,
        subscriber=common_pb2.SubscriberId(msisdn=msisdn),
        rating_group=20,
        requested=common_pb2.ServiceUnits(service_specific_units=1),
        called_party="4915199998888",
    )
    return int((await stubs.charging.ChargeEvent(req)).result_code)


async def settle_network(app: App) -> None:
    assert app.worker is not None
    await app.worker.reconcile_once()


async def line_state(crm: crm_pb2_grpc.CrmStub, msisdn: str) -> str:
    return str((await crm.GetLine(crm_pb2.LineRef(msisdn=msisdn))).state)


async def test_postpaid_customer_from_acquisition_to_dunning_and_back(
    world: tuple[App, Stubs, crm_pb2_grpc.CrmStub, billing_pb2_grpc.BillingStub],
    clock: ManualClock,
    mailbox: tuple[Mailbox, int],
    tmp_path: Path,
) -> None:
    app, stubs, crm, billing = world
    msisdn = "491701234567"
    order = await crm.SubmitApplication(application("pp-1", contract="POSTPAID", plan="mobile-postpaid", history=GOOD))
    assert order.credit_class == "A"
    await settle_network(app)
    assert await line_state(crm, msisdn) == "active"
    ba = "C" + order.customer_id
    account = await billing.GetBillingAccount(billing_pb2.BillingAccountId(billing_account=ba))
    assert list(account.lines) == [msisdn] and account.cycle_day == 18

    # Usage: calls, data, an SMS, all charged online against the credit headroom.
    assert await voice(stubs, msisdn, "v1", 185) == 2001
    assert await voice(stubs, msisdn, "v2", 60, to="33123456789") == 2001  # international
    assert await data(stubs, msisdn, "d1", 50 * 2**20) == 2001
    assert await sms(stubs, msisdn, "s1") == 2001

    # The period ends; the bill run issues one invoice, mailed with its PDF.
    clock.advance(seconds=31 * DAY)
    report = await billing.RunBilling(billing_pb2.RunBillingRequest())
    assert (report.accounts, report.issued, report.failed) == (1, 1, 0)
    assert app.billing is not None
    assert await app.billing.deliver_pending() == 1
    (inv_pb,) = (await billing.ListInvoices(billing_pb2.BillingAccountId(billing_account=ba))).invoices
    assert inv_pb.delivery == "DELIVERED" and inv_pb.status == "OPEN"
    invoice = Invoice.from_json(inv_pb.document_json)
    categories = {c.category for c in invoice.sections[0].charges if c.kind == "USAGE"}
    assert categories == {"NATIONAL_CALLS", "INTERNATIONAL_CALLS", "DATA", "SMS"}
    assert len(invoice.sections[0].usage) == 4
    box, _port = mailbox
    (envelope, message) = box.messages[-1]
    assert envelope.rcpt_tos == ["anna@example.org"]
    assert inv_pb.number in str(message["Subject"])
    pdfs = [p for p in message.iter_attachments() if p.get_content_type() == "application/pdf"]
    assert len(pdfs) == 1 and pdfs[0].get_content().startswith(b"%PDF")
    assert (tmp_path / "invoices" / f"{inv_pb.number}.pdf").exists()
    rendered = await billing.RenderInvoice(
        billing_pb2.RenderRequest(number=inv_pb.number, format=billing_pb2.RENDER_FORMAT_HTML)
    )
    assert inv_pb.number.encode() in rendered.content

    # No payment: the ladder from the due date.
    due_days = (invoice.due - invoice.issued).days
    clock.advance(seconds=(due_days + 3) * DAY)
    await billing.RunDunning(billing_pb2.RunDunningRequest())
    status = await billing.GetDunningStatus(billing_pb2.BillingAccountId(billing_account=ba))
    assert (status.state, status.invoices[0].step) == ("ACTIVE", "reminder")
    clock.advance(seconds=17 * DAY)  # +20: outgoing barred
    await billing.RunDunning(billing_pb2.RunDunningRequest())
    await billing.RunDunning(billing_pb2.RunDunningRequest())  # the same day again: nothing more
    await settle_network(app)
    assert await line_state(crm, msisdn) == "barred_outgoing"
    assert await voice(stubs, msisdn, "v3", 30) == 4010
    assert await incoming(stubs, msisdn, "in1") == 2001
    clock.advance(seconds=15 * DAY)  # +35: suspended
    await billing.RunDunning(billing_pb2.RunDunningRequest())
    await settle_network(app)
    assert await line_state(crm, msisdn) == "suspended"
    assert await incoming(stubs, msisdn, "in2") == 4010
    status = await billing.GetDunningStatus(billing_pb2.BillingAccountId(billing_account=ba))
    assert status.state == "SUSPENDED" and status.overdue_minor == inv_pb.total_minor

    # Pay what is due: re-evaluated at once, service restored once the network acknowledges.
    paid = await billing.RecordPayment(
        billing_pb2.PaymentRequest(
            billing_account=ba, amount_minor=inv_pb.total_minor, channel="BANK_TRANSFER", reference="bt-1"
        )
    )
    assert dict(paid.allocations) == {inv_pb.number: inv_pb.total_minor}
    await settle_network(app)
    assert await line_state(crm, msisdn) == "active"
    assert await voice(stubs, msisdn, "v4", 30) == 2001
    status = await billing.GetDunningStatus(billing_pb2.BillingAccountId(billing_account=ba))
    assert (status.state, status.overdue_minor) == ("ACTIVE", 0)


async def test_a_corporate_hierarchy_gets_one_consolidated_invoice_and_a_dispute(
    world: tuple[App, Stubs, crm_pb2_grpc.CrmStub, billing_pb2_grpc.BillingStub], clock: ManualClock
) -> None:
    app, stubs, crm, billing = world
    corp = application("corp-pp", contract="POSTPAID", plan="mobile-postpaid", history=GOOD)
    corp.customer_kind = "CORPORATE"
    corp.company.CopyFrom(crm_pb2.Company(name="Muster GmbH", country="DE", registration_number="HRB 12345"))
    first = await crm.SubmitApplication(corp)
    assert first.status == crm_pb2.ORDER_STATUS_IN_PROGRESS, list(first.steps)
    root = (await crm.GetCustomer(crm_pb2.CustomerRef(customer_id=first.customer_id))).units[0]
    sales = await crm.AddOrgUnit(crm_pb2.OrgUnit(customer_id=first.customer_id, parent_id=root.id, name="Sales"))
    team = await crm.AddOrgUnit(crm_pb2.OrgUnit(customer_id=first.customer_id, parent_id=sales.id, name="Team A"))
    for i, unit in enumerate((sales.id, team.id)):
        order = await crm.SubmitOrder(
            crm_pb2.LineOrder(
                crm_order_id=f"cl-{i}",
                kind="NEW_LINE",
                customer_id=first.customer_id,
                org_unit_id=unit,
                plan_id="mobile-postpaid",
                msisdn=f"49170123450{i}",
            )
        )
        assert order.status == crm_pb2.ORDER_STATUS_IN_PROGRESS, list(order.steps)
    await settle_network(app)
    ba = "U" + root.id
    account = await billing.GetBillingAccount(billing_pb2.BillingAccountId(billing_account=ba))
    assert sorted(account.lines) == ["491701234500", "491701234501", "491701234567"]
    for i, msisdn in enumerate(account.lines):
        assert await voice(stubs, msisdn, f"c{i}", 120 * (i + 1)) == 2001

    clock.advance(seconds=31 * DAY)
    assert (await billing.RunBilling(billing_pb2.RunBillingRequest())).issued == 1
    (inv_pb,) = (await billing.ListInvoices(billing_pb2.BillingAccountId(billing_account=ba))).invoices
    invoice = Invoice.from_json(inv_pb.document_json)
    assert [s.unit_path for s in invoice.sections] == [
        ("Muster GmbH",),
        ("Muster GmbH", "Sales"),
        ("Muster GmbH", "Sales", "Team A"),
    ]
    assert invoice.customer_label == "Muster GmbH"
    assert any(c.description.startswith("Corporate volume discount") for c in invoice.account_charges)
    # Usage on the invoice equals the itemised records, to the micro before the one rounding.
    for section in invoice.sections:
        usage_minor = sum(c.amount for c in section.charges if c.kind == "USAGE")
        micros = sum(u.cost_micros for u in section.usage)
        assert abs(usage_minor * 10_000 - micros) <= 5_000

    # A dispute: held out of dunning, accepted with a credit note.
    line = invoice.sections[0].line
    d = await billing.OpenDispute(
        billing_pb2.DisputeRequest(
            dispute_id="dp-1",
            invoice_number=inv_pb.number,
            amount_minor=500,
            reason="wrong discount",
            actor="agent-1",
            line=line,
        )
    )
    assert (d.status, d.line) == ("OPEN", line)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.OpenDispute(
            billing_pb2.DisputeRequest(
                dispute_id="dp-3", invoice_number=inv_pb.number, amount_minor=1, reason="x", actor="a", line="4999"
            )
        )
    assert "line" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.OpenDispute(
            billing_pb2.DisputeRequest(
                dispute_id="dp-2", invoice_number=inv_pb.number, amount_minor=10**9, reason="x", actor="agent-1"
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "amount_minor" in (err.value.details() or "")
    done = await billing.ResolveDispute(
        billing_pb2.ResolveDisputeRequest(dispute_id="dp-1", accept=True, reason="discount corrected", actor="agent-2")
    )
    assert done.status == "ACCEPTED" and done.credit_note.startswith("CN-")
    assert (await billing.GetDispute(billing_pb2.DisputeId(dispute_id="dp-1"))).status == "ACCEPTED"
    records = (await billing.ListMoneyRecords(billing_pb2.BillingAccountId(billing_account=ba))).records
    assert [(r.kind, r.amount_minor, r.number) for r in records] == [("CREDIT_NOTE", 500, done.credit_note)]
    runs = (await billing.ListBillRuns(billing_pb2.ListBillRunsRequest())).runs
    assert runs[0].report.issued == 1
    after = await billing.GetInvoice(billing_pb2.InvoiceId(number=inv_pb.number))
    assert (after.open_minor, after.disputed_minor, after.total_minor) == (
        inv_pb.total_minor - 500,
        0,
        inv_pb.total_minor,
    )


async def test_a_failure_after_the_network_acknowledged_is_retried_until_billing_has_the_line(
    world: tuple[App, Stubs, crm_pb2_grpc.CrmStub, billing_pb2_grpc.BillingStub], clock: ManualClock
) -> None:
    app, _stubs, crm, billing = world
    assert app.billing is not None
    real = app.billing.line_changed
    calls = []

    async def flaky(**kw: object) -> None:
        calls.append(kw["state"])
        if len(calls) == 1:
            raise ConnectionError("billing store unreachable")
        await real(**kw)  # type: ignore[arg-type]

    app.billing.line_changed = flaky  # type: ignore[method-assign]
    order = await crm.SubmitApplication(application("pp-f", contract="POSTPAID", plan="mobile-postpaid", history=GOOD))
    await settle_network(app)  # acknowledged and recorded, but billing failed
    await settle_network(app)  # backing off: not yet
    assert calls == ["active"]
    clock.advance(seconds=60)
    await settle_network(app)  # acting on the recorded acknowledgement again: billed
    assert calls == ["active", "active"]
    await settle_network(app)
    assert calls == ["active", "active"]
    assert await line_state(crm, "491701234567") == "active"
    account = await billing.GetBillingAccount(billing_pb2.BillingAccountId(billing_account="C" + order.customer_id))
    assert list(account.lines) == ["491701234567"]
