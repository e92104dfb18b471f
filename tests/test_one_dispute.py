"""One dispute: a dispute opened through the CRM on an invoice is billing's dispute (held
out of dunning, ended by a credit note or a rejection), seen from both APIs. Real Redis,
the real gRPC services, the network simulator."""

from __future__ import annotations

import grpc
import pytest

from charging.clock import ManualClock
from charging.v1 import billing_pb2, crm_pb2
from tests.test_acquisition import application
from tests.test_invoice_addressed import World, billed
from tests.test_postpaid_e2e import GOOD, mailbox, world

__all__ = ["mailbox", "world"]  # fixtures


async def test_a_crm_dispute_is_the_billing_dispute(world: World, clock: ManualClock) -> None:
    _app, _stubs, crm, billing = world
    invoice = await billed(
        world, clock, application("pp-d", contract="POSTPAID", plan="mobile-postpaid", history=GOOD), "C"
    )
    customer = invoice.billing_account[1:]
    opened = await crm.OpenDispute(
        crm_pb2.Dispute(customer_id=customer, invoice=invoice.number, reason="call never made", amount_minor=150)
    )
    assert (opened.state, opened.amount_minor, opened.amount_micros) == ("OPEN", 150, 1_500_000)
    assert opened.billing_account == invoice.billing_account and opened.id

    # The same dispute, in cents, through the Billing API; its amount is held out of dunning.
    same = await billing.GetDispute(billing_pb2.DisputeId(dispute_id=opened.id))
    assert (same.invoice_number, same.amount_minor, same.status) == (invoice.number, 150, "OPEN")
    inv_pb = await billing.GetInvoice(billing_pb2.InvoiceId(number=invoice.number))
    assert inv_pb.disputed_minor == 150

    # Whole cents given the old way (micros) are the same amount; an id makes the call idempotent.
    again = crm_pb2.Dispute(
        id="agent-7", customer_id=customer, invoice=invoice.number, reason="roaming", amount_micros=200_000
    )
    assert (await crm.OpenDispute(again)).amount_minor == 20
    assert (await crm.OpenDispute(again)).id == "agent-7"
    assert (await billing.GetInvoice(billing_pb2.InvoiceId(number=invoice.number))).disputed_minor == 170

    # Ended through billing, seen through the CRM: rejected, and the credit note of an accepted one.
    await billing.ResolveDispute(
        billing_pb2.ResolveDisputeRequest(dispute_id="agent-7", accept=False, reason="roaming was used", actor="a2")
    )
    await billing.ResolveDispute(
        billing_pb2.ResolveDisputeRequest(dispute_id=opened.id, accept=True, reason="no such call", actor="a2")
    )
    records = await crm.GetCustomerRecords(crm_pb2.CustomerRef(customer_id=customer))
    seen = {d.id: d for d in records.disputes}
    assert set(seen) == {opened.id, "agent-7"}
    assert (seen["agent-7"].state, seen["agent-7"].resolution) == ("REJECTED", "roaming was used")
    assert seen[opened.id].state == "ACCEPTED" and seen[opened.id].credit_note.startswith("CN-")
    # A dispute opened through the Billing API is the customer's too.
    await billing.OpenDispute(
        billing_pb2.DisputeRequest(
            dispute_id="b-1", invoice_number=invoice.number, amount_minor=5, reason="x", actor="a3"
        )
    )
    records = await crm.GetCustomerRecords(crm_pb2.CustomerRef(customer_id=customer))
    assert sorted(d.id for d in records.disputes) == sorted([opened.id, "agent-7", "b-1"])
    assert (await billing.GetInvoice(billing_pb2.InvoiceId(number=invoice.number))).disputed_minor == 5


@pytest.mark.parametrize(
    ("change", "code", "field"),
    [
        ({"invoice": ""}, grpc.StatusCode.INVALID_ARGUMENT, "invoice"),
        ({"amount_minor": 0}, grpc.StatusCode.INVALID_ARGUMENT, "amount_minor"),
        ({"amount_minor": 0, "amount_micros": 1_234}, grpc.StatusCode.INVALID_ARGUMENT, "amount_micros"),
        ({"amount_minor": 10**9}, grpc.StatusCode.INVALID_ARGUMENT, "amount_minor"),
        ({"invoice": "INV-99999999"}, grpc.StatusCode.NOT_FOUND, ""),
        ({"customer_id": "999"}, grpc.StatusCode.NOT_FOUND, ""),
    ],
)
async def test_crm_disputes_that_billing_cannot_hold_are_refused(
    world: World, clock: ManualClock, change: dict[str, object], code: grpc.StatusCode, field: str
) -> None:
    _app, _stubs, crm, billing = world
    invoice = await billed(
        world, clock, application("pp-r", contract="POSTPAID", plan="mobile-postpaid", history=GOOD), "C"
    )
    request = crm_pb2.Dispute(
        customer_id=invoice.billing_account[1:], invoice=invoice.number, reason="r", amount_minor=10
    )
    for name, value in change.items():
        setattr(request, name, value)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await crm.OpenDispute(request)
    assert err.value.code() == code and field in (err.value.details() or "")
    assert (await billing.GetInvoice(billing_pb2.InvoiceId(number=invoice.number))).disputed_minor == 0


async def test_a_customer_cannot_dispute_another_customers_invoice(world: World, clock: ManualClock) -> None:
    _app, _stubs, crm, _billing = world
    invoice = await billed(
        world, clock, application("pp-o", contract="POSTPAID", plan="mobile-postpaid", history=GOOD), "C"
    )
    other = await crm.SubmitApplication(
        application("pp-x", msisdn="491709999999", imsi="262019999999999", document="C01X00T478")
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await crm.OpenDispute(
            crm_pb2.Dispute(customer_id=other.customer_id, invoice=invoice.number, reason="r", amount_minor=10)
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert list((await crm.GetCustomerRecords(crm_pb2.CustomerRef(customer_id=other.customer_id))).disputes) == []
