"""A postpaid invoice that can be posted and paid, and one dispute seen from both APIs:
real Redis, the real gRPC services, the network simulator and a real SMTP server."""

from __future__ import annotations

import io
from dataclasses import replace

import pypdf

from charging.clock import ManualClock
from charging.server import App
from charging.v1 import billing_pb2, billing_pb2_grpc, crm_pb2, crm_pb2_grpc
from postpaid.billing import postal_address
from postpaid.invoices import Invoice
from postpaid.payment_reference import grouped, is_creditor_reference
from provisioning.customers import Customer
from tests.conftest import Stubs
from tests.test_acquisition import application
from tests.test_postpaid_e2e import DAY, GOOD, mailbox, settle_network, voice, world

__all__ = ["mailbox", "world"]  # fixtures

World = tuple[App, Stubs, crm_pb2_grpc.CrmStub, billing_pb2_grpc.BillingStub]


async def billed(world: World, clock: ManualClock, app_doc: crm_pb2.Application, ba_prefix: str) -> Invoice:
    app, stubs, crm, billing = world
    order = await crm.SubmitApplication(app_doc)
    assert order.status == crm_pb2.ORDER_STATUS_IN_PROGRESS, list(order.steps)
    await settle_network(app)
    ba = ba_prefix + (order.customer_id if ba_prefix == "C" else "")
    if ba_prefix == "U":
        root = (await crm.GetCustomer(crm_pb2.CustomerRef(customer_id=order.customer_id))).units[0]
        ba += root.id
    assert await voice(stubs, app_doc.msisdn, "v1", 185) == 2001
    clock.advance(seconds=31 * DAY)
    assert (await billing.RunBilling(billing_pb2.RunBillingRequest())).issued == 1
    (inv_pb,) = (await billing.ListInvoices(billing_pb2.BillingAccountId(billing_account=ba))).invoices
    return Invoice.from_json(inv_pb.document_json)


async def test_the_invoice_is_addressed_to_the_customer_and_says_how_to_pay(world: World, clock: ManualClock) -> None:
    _app, _stubs, _crm, billing = world
    invoice = await billed(
        world, clock, application("pp-a", contract="POSTPAID", plan="mobile-postpaid", history=GOOD), "C"
    )
    assert invoice.customer_name == "Anna Muster"
    assert invoice.customer_address == ("Hauptstr. 1", "10115 Berlin")  # in the issuer's country: no country line
    assert invoice.issuer_address == ("Musterstrasse 1", "10115 Berlin", "Germany")
    assert (invoice.issuer_tax_id, invoice.iban) == ("DE123456789", "DE89370400440532013000")
    assert is_creditor_reference(invoice.payment_reference)
    assert invoice.payment_reference.endswith(invoice.number.replace("-", ""))
    inv_pb = await billing.GetInvoice(billing_pb2.InvoiceId(number=invoice.number))
    assert inv_pb.payment_reference == invoice.payment_reference

    html = (
        await billing.RenderInvoice(
            billing_pb2.RenderRequest(number=invoice.number, format=billing_pb2.RENDER_FORMAT_HTML)
        )
    ).content.decode()
    for expected in (
        "Anna Muster<br>Hauptstr. 1<br>10115 Berlin<br>",
        "DE89 3704 0044 0532 0130 00",
        "VAT ID DE123456789",
    ):
        assert expected in html, expected
    assert grouped(invoice.payment_reference) in html

    pdf = await billing.RenderInvoice(
        billing_pb2.RenderRequest(number=invoice.number, format=billing_pb2.RENDER_FORMAT_PDF)
    )
    first = pypdf.PdfReader(io.BytesIO(pdf.content)).pages[0]
    text = first.extract_text()
    for expected in ("Anna Muster", "Hauptstr. 1", "10115 Berlin", "DE89 3704 0044 0532 0130 00", "VAT ID DE123456789"):
        assert expected in text, expected
    assert "Customer 1" not in text
    assert len(first.images) == 1  # the EPC QR code


async def test_a_corporate_invoice_is_addressed_to_the_company(world: World, clock: ManualClock) -> None:
    corp = application("corp-a", contract="POSTPAID", plan="mobile-postpaid", history=GOOD)
    corp.customer_kind = "CORPORATE"
    corp.company.CopyFrom(crm_pb2.Company(name="Muster GmbH", country="DE", registration_number="HRB 12345"))
    corp.address.CopyFrom(crm_pb2.Address(street="Am Hafen 3", city="Hamburg", postal_code="20457", country="DE"))
    invoice = await billed(world, clock, corp, "U")
    assert invoice.customer_name == "Muster GmbH"
    assert invoice.customer_address == ("Am Hafen 3", "20457 Hamburg")


def test_a_postal_address_names_the_country_only_abroad() -> None:
    customer = Customer("7", "INDIVIDUAL", 0, name="Jan Novak", street="Karlova 1", city="Praha", postal_code="110 00")
    assert postal_address(replace(customer, country="CZ"), home="DE") == ("Karlova 1", "110 00 Praha", "CZ")
    assert postal_address(replace(customer, country="DE"), home="DE") == ("Karlova 1", "110 00 Praha")
    assert postal_address(Customer("8", "INDIVIDUAL", 0)) == ()
