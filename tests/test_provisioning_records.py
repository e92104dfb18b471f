"""Provisioning's records read back what they write, in the stored format. No server."""

from __future__ import annotations

import json

import pytest

from provisioning.credit import CreditDecision
from provisioning.customer_care import Dispute, Interaction, Ticket, TicketChange
from provisioning.customers import PERSONAL, Customer
from provisioning.lifecycle import LineState
from provisioning.line_orders import LineOrderRequest, NewLineRequest
from provisioning.lines import Line
from provisioning.orders import Order, Step
from provisioning.organisation import OrgUnit
from provisioning.runs import Decision
from tests.conftest import SEALER

TERMS = CreditDecision(0, "B", 300_000_000, 0, True, 5, ())
CUSTOMER_FIELDS = {
    "kind", "created", "name", "street", "city", "country", "postal_code", "document_type", "document_country",
    "document_number", "email",
    "state",
}  # fmt: skip
CREDIT_FIELDS = {"credit_class", "credit_limit", "deposit", "postpaid_allowed", "max_lines"}


def as_stored(h: dict[str, str | int]) -> dict[str, str]:
    """What Redis gives back for a hash written with these values."""
    return {k: str(v) for k, v in h.items()}


@pytest.mark.parametrize(
    ("customer", "fields"),
    [
        (
            Customer(
                "7",
                "INDIVIDUAL",
                1_795_000_000,
                name="Anna Muster",
                street="Hauptstr. 1",
                city="Berlin",
                country="DE",
                postal_code="10115",
                email="a@b.example",
            ),
            set(),
        ),
        (
            Customer("8", "CORPORATE", 1_795_000_000, state="ACTIVE", document_number="***36", credit=TERMS),
            CREDIT_FIELDS,
        ),
    ],
)
def test_a_customer_is_stored_in_its_hash_fields(customer: Customer, fields: set[str]) -> None:
    stored = as_stored(customer.to_redis(SEALER))
    assert set(stored) == CUSTOMER_FIELDS | fields
    assert Customer.from_redis(customer.id, stored, SEALER) == customer
    for name in PERSONAL:  # sealed when there is something to seal
        assert stored[name].startswith("enc:test:") == bool(getattr(customer, name))
    assert customer.credit_limit_micros == (0 if customer.credit is None else 300_000_000)


@pytest.mark.parametrize("reason", ["", "FRAUD"])
def test_a_line_is_stored_in_its_hash_fields(reason: str) -> None:
    line = Line("491701234567", "1", "3", "mobile-prepaid", LineState.SUSPENDED, "o-1", "MOBILE_PREPAID", "", reason)
    stored = line.to_redis()
    assert ("termination_reason" in stored) == bool(reason)
    assert Line.from_redis(line.msisdn, stored) == line


def test_an_order_is_its_json_document() -> None:
    order = Order(
        "o-1",
        "REJECTED",
        problems=(("msisdn", "must be an E.164 number"),),
        steps=(Step("application", "accepted", (), 10), Step("credit", "class E", ("no income",), 11)),
        submitted_at=10,
        customer_id="4",
        credit_class="E",
    )
    doc = json.loads(order.to_redis())
    assert doc["problems"] == [["msisdn", "must be an E.164 number"]]
    assert doc["steps"][1] == {"step": "credit", "outcome": "class E", "reasons": ["no income"], "at": 11}
    assert (doc["credit_limit_micros"], doc["deposit_micros"]) == (0, 0)  # scored, so written
    assert "account_id" not in doc and "msisdn" not in doc  # not made: not written
    assert Order.from_redis(order.to_redis()) == order
    assert Order.from_redis('{"crm_order_id": "x", "status": "SUBMITTED"}') == Order("x")


def test_the_other_records_read_back_what_they_write() -> None:
    unit = OrgUnit("2", "8", "1", "Sales", False)
    assert OrgUnit.from_redis("2", "8", as_stored(unit.to_redis())) == unit
    ticket = Ticket("1", "8", "NETWORK", "no signal", "491701234567", "", "OPEN", (TicketChange("OPEN", 5, ""),))
    assert Ticket.from_redis(ticket.moved("RESOLVED", "fixed", 9).to_redis(SEALER), SEALER).history[-1] == TicketChange(
        "RESOLVED", 9, "fixed"
    )
    for record in (
        Interaction("1", "PHONE", "asked about roaming", ("https://rec/1",), 5),
        Dispute("1", "8", "INV-1", "", "too much", 90_000, "OPEN", 5),
    ):
        assert type(record).from_redis(record.to_redis(SEALER), SEALER) == record
    for decision in (Decision("mobile-postpaid", "3", TERMS), Decision("mobile-prepaid", "3", None, unit_id="")):
        assert Decision.from_doc(json.loads(json.dumps(decision.to_doc()))) == decision
    new_line = NewLineRequest("8", "2", "mobile-prepaid", "491701234599", "", 0)
    assert NewLineRequest.from_doc(json.loads(json.dumps(new_line.to_doc()))) == new_line
    change = LineOrderRequest("491701234599", "TERMINATE", reason="FRAUD")
    assert LineOrderRequest.from_doc(change.to_doc()) == change
