"""End-to-end acquisition through the CRM gRPC service: application -> checks -> credit
class -> offer -> order -> provisioned on the (simulated) network -> first charged call."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from charging import keys
from charging.clock import ManualClock
from charging.server import App
from charging.v1 import crm_pb2, crm_pb2_grpc
from tests.conftest import INITIAL, TERMINATE, Stubs, redis_client, session_request


def application(
    order_id: str, *, contract: str = "PREPAID", plan: str = "mobile-prepaid", **over: object
) -> crm_pb2.Application:
    app = crm_pb2.Application(
        crm_order_id=order_id,
        customer_kind="INDIVIDUAL",
        contract=contract,
        plan_id=plan,
        msisdn=str(over.get("msisdn", "491701234567")),
        imsi=str(over.get("imsi", "262011234567890")),
        applicant=crm_pb2.Person(given_name="Anna", family_name="Muster", date_of_birth="1990-05-17"),
        address=crm_pb2.Address(street="Hauptstr. 1", city="Berlin", postal_code="10115", country="DE"),
        contact=crm_pb2.Contact(email="anna@example.org"),
        identity_document=crm_pb2.IdentityDocument(
            type="PASSPORT",
            number=str(over.get("document", "L898902C36")),
            issuing_country="DE",
            expiry_date="2030-01-01",
        ),
        initial_balance_micros=5_000_000,
    )
    if contract == "POSTPAID":
        app.credit_history.CopyFrom(crm_pb2.CreditHistory(**over.get("history", {})))  # type: ignore[arg-type]
    return app


async def test_from_application_to_the_first_charged_call(stubs: Stubs, crm: crm_pb2_grpc.CrmStub, app: App) -> None:
    order = await crm.SubmitApplication(application("o-1"))
    assert order.status == crm_pb2.ORDER_STATUS_IN_PROGRESS
    assert [s.step for s in order.steps] == ["application", "screening", "offer", "line", "provisioning"]
    assert (await crm.GetLine(crm_pb2.LineRef(msisdn="491701234567"))).state == "pending_activation"

    call = session_request(
        "c1", INITIAL, 0, [{"rating_group": 10, "requested": {}}], msisdn="491701234567", called_party="491711234567"
    )
    assert (await stubs.charging.ChargeSession(call)).result_code == 4010  # not active on the network yet

    assert app.worker is not None
    assert await app.worker.reconcile_once() == 1  # the simulator acknowledges ACTIVATE
    done = await crm.GetOrder(crm_pb2.OrderRef(crm_order_id="o-1"))
    assert done.status == crm_pb2.ORDER_STATUS_COMPLETED
    assert (await crm.GetLine(crm_pb2.LineRef(msisdn="491701234567"))).state == "active"

    call = session_request(
        "c2", INITIAL, 0, [{"rating_group": 10, "requested": {}}], msisdn="491701234567", called_party="491711234567"
    )
    assert (await stubs.charging.ChargeSession(call)).result_code == 2001
    end = session_request(
        "c2",
        TERMINATE,
        1,
        [{"rating_group": 10, "used": {"time_s": 60}}],
        msisdn="491701234567",
        called_party="491711234567",
    )
    assert (await stubs.charging.ChargeSession(end)).rating_groups[0].cost_micros == 90_000  # peak, first minute

    again = await crm.SubmitApplication(application("o-1"))
    assert again.customer_id == order.customer_id and again.status == crm_pb2.ORDER_STATUS_COMPLETED


async def test_postpaid_gets_a_credit_class_and_its_limit_on_the_account(
    crm: crm_pb2_grpc.CrmStub, redis_url: str
) -> None:
    good = {"tenure_months": 36, "monthly_income_micros": 4_000_000_000}
    order = await crm.SubmitApplication(application("p-1", contract="POSTPAID", plan="mobile-postpaid", history=good))
    assert (order.status, order.credit_class, order.credit_limit_micros) == (
        crm_pb2.ORDER_STATUS_IN_PROGRESS,
        "A",
        500_000_000,
    )
    r = redis_client(redis_url)
    assert r.hget(keys.account(order.account_id), "credit_limit") == "500000000"
    r.close()


async def test_poor_credit_is_refused_postpaid_with_the_reasons(crm: crm_pb2_grpc.CrmStub) -> None:
    poor = {"defaults_5y": 3, "monthly_income_micros": 800_000_000}
    order = await crm.SubmitApplication(application("p-2", contract="POSTPAID", plan="mobile-postpaid", history=poor))
    assert order.status == crm_pb2.ORDER_STATUS_REJECTED
    assert order.steps[-1].step == "offer"
    assert list(order.steps[-1].reasons) == ["the credit class does not allow postpaid"]
    assert order.credit_class == "E"


async def test_invalid_applications_are_rejected_naming_each_field(crm: crm_pb2_grpc.CrmStub) -> None:
    bad = application("b-1", document="L898902C35")
    bad.applicant.date_of_birth = "2030-01-01"
    order = await crm.SubmitApplication(bad)
    assert order.status == crm_pb2.ORDER_STATUS_REJECTED
    assert {p.field for p in order.problems} == {"applicant.date_of_birth", "identity_document.number"}


async def test_the_same_identity_cannot_become_a_second_customer(crm: crm_pb2_grpc.CrmStub) -> None:
    assert (await crm.SubmitApplication(application("d-1"))).status == crm_pb2.ORDER_STATUS_IN_PROGRESS
    second = await crm.SubmitApplication(application("d-2", msisdn="491701234568"))
    assert second.status == crm_pb2.ORDER_STATUS_REJECTED
    assert list(second.steps[-1].reasons) == ["this identity already has an active customer"]


async def test_no_coverage_means_no_fixed_line(crm: crm_pb2_grpc.CrmStub) -> None:
    app = application("f-1", plan="fixed-prepaid")
    app.address.postal_code = "99084"  # PSTN only; fixed-prepaid is sold on WiMax
    order = await crm.SubmitApplication(app)
    assert order.status == crm_pb2.ORDER_STATUS_REJECTED
    assert list(order.steps[-1].reasons) == ["no WIMAX coverage at the address"]


async def line_order(crm: crm_pb2_grpc.CrmStub, order_id: str, kind: str, **kw: str) -> crm_pb2.Order:
    return await crm.SubmitOrder(crm_pb2.LineOrder(crm_order_id=order_id, msisdn="491701234567", kind=kind, **kw))


async def test_orders_walk_a_line_through_its_lifecycle(stubs: Stubs, crm: crm_pb2_grpc.CrmStub, app: App) -> None:
    assert app.worker is not None
    await crm.SubmitApplication(application("new"))
    await app.worker.reconcile_once()

    def mo_call(sid: str) -> Any:
        return stubs.charging.ChargeSession(
            session_request(
                sid,
                INITIAL,
                0,
                [{"rating_group": 10, "requested": {}}],
                msisdn="491701234567",
                called_party="491711234567",
            )
        )

    order = await line_order(crm, "s1", "SUSPEND")
    assert order.status == crm_pb2.ORDER_STATUS_IN_PROGRESS
    assert (await mo_call("x1")).result_code == 2001  # not suspended until the network says so
    await app.worker.reconcile_once()
    assert (await crm.GetOrder(crm_pb2.OrderRef(crm_order_id="s1"))).status == crm_pb2.ORDER_STATUS_COMPLETED
    assert (await crm.GetLine(crm_pb2.LineRef(msisdn="491701234567"))).state == "suspended"
    assert (await mo_call("x2")).result_code == 4010

    wrong = await line_order(crm, "s2", "SUSPEND")
    assert wrong.status == crm_pb2.ORDER_STATUS_REJECTED
    assert "cannot take a SUSPEND order" in wrong.steps[-1].reasons[0]

    await line_order(crm, "r1", "RESUME")
    await app.worker.reconcile_once()
    assert (await mo_call("x3")).result_code == 2001

    change = await line_order(crm, "c1", "CHANGE_PRODUCT", plan_id="mobile-prepaid-data")
    assert change.status == crm_pb2.ORDER_STATUS_IN_PROGRESS
    await app.worker.reconcile_once()
    line = await crm.GetLine(crm_pb2.LineRef(msisdn="491701234567"))
    assert (line.state, line.plan_id) == ("active", "mobile-prepaid-data")
    assert (await stubs.balance("491701234567")).plan_id == "mobile-prepaid-data"
    refused = await line_order(crm, "c2", "CHANGE_PRODUCT", plan_id="fixed-postpaid")
    assert refused.status == crm_pb2.ORDER_STATUS_REJECTED

    await line_order(crm, "t1", "TERMINATE", termination_reason="MOVED_AWAY")
    await app.worker.reconcile_once()
    assert (await crm.GetLine(crm_pb2.LineRef(msisdn="491701234567"))).state == "terminated"
    assert (await mo_call("x4")).result_code == 4010
    again = await crm.SubmitApplication(application("new-2", document="T220001293"))
    assert again.status == crm_pb2.ORDER_STATUS_REJECTED
    assert list(again.steps[-1].reasons) == ["the number is in quarantine after a termination"]


async def test_a_line_takes_one_order_at_a_time(crm: crm_pb2_grpc.CrmStub, app: App) -> None:
    """The network's acknowledgement completes the order the line names: a second order
    decided while the first waited for the network left the first IN_PROGRESS for ever
    (the chaos suite's line_orders). It is refused until the first is decided."""
    assert app.worker is not None
    await crm.SubmitApplication(application("new"))
    assert (await line_order(crm, "early", "TERMINATE", termination_reason="MOVED_AWAY")).status == (
        crm_pb2.ORDER_STATUS_REJECTED  # the activation is in progress
    )
    await app.worker.reconcile_once()

    first = await line_order(crm, "s1", "SUSPEND")
    assert first.status == crm_pb2.ORDER_STATUS_IN_PROGRESS
    second = await line_order(crm, "b1", "BAR_OUTGOING")
    assert second.status == crm_pb2.ORDER_STATUS_REJECTED
    assert list(second.steps[-1].reasons) == ["the line has an order in progress (s1)"]
    await app.worker.reconcile_once()
    assert (await crm.GetOrder(crm_pb2.OrderRef(crm_order_id="s1"))).status == crm_pb2.ORDER_STATUS_COMPLETED
    assert (await crm.GetLine(crm_pb2.LineRef(msisdn="491701234567"))).state == "suspended"

    # Two at once: one takes the line, the other is refused; none is left waiting.
    both = await asyncio.gather(
        line_order(crm, "r1", "RESUME"), line_order(crm, "t1", "TERMINATE", termination_reason="MOVED_AWAY")
    )
    assert sorted(o.status for o in both) == [crm_pb2.ORDER_STATUS_IN_PROGRESS, crm_pb2.ORDER_STATUS_REJECTED]
    await app.worker.reconcile_once()
    statuses = [(await crm.GetOrder(crm_pb2.OrderRef(crm_order_id=o))).status for o in ("r1", "t1")]
    assert sorted(statuses) == [crm_pb2.ORDER_STATUS_COMPLETED, crm_pb2.ORDER_STATUS_REJECTED]


async def test_customer_base_and_churn(crm: crm_pb2_grpc.CrmStub, app: App, clock: ManualClock) -> None:
    from provisioning.applications import icao_check_digit
    from provisioning.base import churn_basis_points

    assert app.worker is not None
    documents = [f"P0000000{n}" for n in range(4)]
    for n, doc in enumerate(documents):
        number = doc + str(icao_check_digit(doc))
        app_n = application(f"a{n}", msisdn=f"49170123456{n}", document=number, imsi=f"26201123456789{n}")
        order = await crm.SubmitApplication(app_n)
        assert order.status == crm_pb2.ORDER_STATUS_IN_PROGRESS
    await app.worker.reconcile_once()
    clock.advance(seconds=86_400)
    await crm.SubmitOrder(
        crm_pb2.LineOrder(crm_order_id="t", msisdn="491701234560", kind="TERMINATE", termination_reason="DISSATISFIED")
    )
    await app.worker.reconcile_once()
    day1, day2 = "2026-11-18", "2026-11-19"
    report = await crm.GetCustomerBase(crm_pb2.BaseRequest(first_date=day2, last_date=day2))
    prepaid = next(f for f in report.figures if f.customer_type == "MOBILE_PREPAID")
    assert (prepaid.active_at_start, prepaid.gross_additions, prepaid.disconnections, prepaid.active_at_end) == (
        4,
        0,
        1,
        3,
    )
    assert prepaid.churn_basis_points == 2_500
    both = await crm.GetCustomerBase(crm_pb2.BaseRequest(first_date=day1, last_date=day2))
    prepaid = next(f for f in both.figures if f.customer_type == "MOBILE_PREPAID")
    assert (prepaid.active_at_start, prepaid.gross_additions, prepaid.active_at_end) == (0, 4, 3)
    assert churn_basis_points(1, 3) == 3_333


async def test_interactions_tickets_and_disputes(crm: crm_pb2_grpc.CrmStub) -> None:
    import grpc

    order = await crm.SubmitApplication(application("r-1"))
    who = order.customer_id
    await crm.AddInteraction(
        crm_pb2.Interaction(
            customer_id=who, channel="PHONE", note="asked about roaming", references=["recording://calls/991"]
        )
    )
    ticket = await crm.OpenTicket(
        crm_pb2.Ticket(customer_id=who, topic="NETWORK", summary="no signal at home", line="491701234567")
    )
    assert ticket.state == "OPEN"
    ticket = await crm.MoveTicket(crm_pb2.TicketMove(ticket_id=ticket.id, state="IN_PROGRESS", note="field team sent"))
    ticket = await crm.MoveTicket(crm_pb2.TicketMove(ticket_id=ticket.id, state="RESOLVED", note="antenna fixed"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await crm.MoveTicket(crm_pb2.TicketMove(ticket_id=ticket.id, state="IN_PROGRESS"))
    assert "state" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await crm.OpenTicket(crm_pb2.Ticket(customer_id=who, topic="INVOICE", summary="too high"))
    assert "invoice" in (err.value.details() or "")
    # A dispute is about an invoice (billing's dispute); a line's charges not invoiced are a ticket.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await crm.OpenDispute(
            crm_pb2.Dispute(customer_id=who, line="491701234567", reason="call never made", amount_micros=90_000)
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "invoice" in (err.value.details() or "")
    records = await crm.GetCustomerRecords(crm_pb2.CustomerRef(customer_id=who))
    assert [i.note for i in records.interactions] == ["asked about roaming"]
    assert [h.state for h in records.tickets[0].history] == ["OPEN", "IN_PROGRESS", "RESOLVED"]
    assert list(records.disputes) == []


async def test_a_corporate_customer_is_a_tree_of_units(crm: crm_pb2_grpc.CrmStub) -> None:
    import grpc

    app = application("corp-1", contract="PREPAID")
    app.customer_kind = "CORPORATE"
    app.company.CopyFrom(crm_pb2.Company(name="Muster GmbH", country="DE", registration_number="HRB 12345"))
    order = await crm.SubmitApplication(app)
    assert order.status == crm_pb2.ORDER_STATUS_IN_PROGRESS
    customer = await crm.GetCustomer(crm_pb2.CustomerRef(customer_id=order.customer_id))
    (root,) = customer.units
    assert (customer.kind, root.name, root.pays_itself, root.paying_unit_id) == (
        "CORPORATE",
        "Muster GmbH",
        True,
        root.id,
    )
    assert [(line.msisdn, line.unit_id) for line in customer.lines] == [("491701234567", root.id)]

    branch = await crm.AddOrgUnit(
        crm_pb2.OrgUnit(customer_id=order.customer_id, parent_id=root.id, name="Munich", pays_itself=True)
    )
    sales = await crm.AddOrgUnit(crm_pb2.OrgUnit(customer_id=order.customer_id, parent_id=branch.id, name="Sales"))
    team = await crm.AddOrgUnit(crm_pb2.OrgUnit(customer_id=order.customer_id, parent_id=sales.id, name="Team A"))
    assert (sales.paying_unit_id, team.paying_unit_id) == (branch.id, branch.id)  # they pay through Munich
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await crm.AddOrgUnit(crm_pb2.OrgUnit(customer_id=order.customer_id, parent_id="999", name="Nowhere"))
    assert "parent_id" in (err.value.details() or "")
    customer = await crm.GetCustomer(crm_pb2.CustomerRef(customer_id=order.customer_id))
    assert len(customer.units) == 4


def test_paying_unit_walks_up_to_the_nearest_unit_that_pays() -> None:
    from provisioning.organisation import OrgUnit as Unit
    from provisioning.organisation import paying_unit

    units = {
        "1": Unit("1", "c", "", "HQ", True),
        "2": Unit("2", "c", "1", "Branch", False),
        "3": Unit("3", "c", "2", "Dept", False),
        "4": Unit("4", "c", "2", "Billing dept", True),
    }
    assert [paying_unit(units, u) for u in ("1", "2", "3", "4")] == ["1", "1", "1", "4"]


async def test_new_lines_for_existing_customers(crm: crm_pb2_grpc.CrmStub, app: App) -> None:
    corp = application("co", contract="PREPAID")
    corp.customer_kind = "CORPORATE"
    corp.company.CopyFrom(crm_pb2.Company(name="Muster GmbH", country="DE", registration_number="HRB 12345"))
    first = await crm.SubmitApplication(corp)
    root = (await crm.GetCustomer(crm_pb2.CustomerRef(customer_id=first.customer_id))).units[0]
    sales = await crm.AddOrgUnit(crm_pb2.OrgUnit(customer_id=first.customer_id, parent_id=root.id, name="Sales"))
    order = await crm.SubmitOrder(
        crm_pb2.LineOrder(
            crm_order_id="nl-1",
            kind="NEW_LINE",
            customer_id=first.customer_id,
            org_unit_id=sales.id,
            plan_id="mobile-prepaid",
            msisdn="491701234599",
            imsi="262011234567899",
            initial_balance_micros=1_000_000,
        )
    )
    assert order.status == crm_pb2.ORDER_STATUS_IN_PROGRESS
    assert app.worker is not None
    await app.worker.reconcile_once()
    customer = await crm.GetCustomer(crm_pb2.CustomerRef(customer_id=first.customer_id))
    assert {(line.msisdn, line.unit_id, line.state) for line in customer.lines} == {
        ("491701234567", root.id, "active"),
        ("491701234599", sales.id, "active"),
    }
    wrong = await crm.SubmitOrder(
        crm_pb2.LineOrder(crm_order_id="nl-2", kind="NEW_LINE", customer_id=first.customer_id, org_unit_id="999",
                          plan_id="mobile-prepaid", msisdn="491701234598")
    )  # fmt: skip
    assert wrong.status == crm_pb2.ORDER_STATUS_REJECTED


async def test_the_credit_class_limits_postpaid_lines(crm: crm_pb2_grpc.CrmStub) -> None:
    small = {"late_payments_12m": 2, "monthly_income_micros": 1_000_000_000}  # class D: one line
    first = await crm.SubmitApplication(application("pd-1", contract="POSTPAID", plan="mobile-postpaid", history=small))
    assert (first.status, first.credit_class) == (crm_pb2.ORDER_STATUS_IN_PROGRESS, "D")
    second = await crm.SubmitOrder(
        crm_pb2.LineOrder(crm_order_id="pd-2", kind="NEW_LINE", customer_id=first.customer_id,
                          plan_id="mobile-postpaid", msisdn="491701234597")
    )  # fmt: skip
    assert second.status == crm_pb2.ORDER_STATUS_REJECTED
    assert list(second.steps[-1].reasons) == ["credit class D allows at most 1 postpaid line(s)"]
