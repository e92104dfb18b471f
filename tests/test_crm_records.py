"""The CRM reading PostgreSQL, not Redis, for what the system of record keeps (issue 11):
a customer's lines from the lines' history rows, screening decisions as step rows only,
a customer's credit class changed as a new version, a rejected order's document gone
from Redis once the relay has committed its rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import psycopg
import pytest
import redis

from charging import keys as charging_keys
from charging.cdr_relay import drain
from charging.clock import ManualClock
from charging.server import App
from charging.v1 import crm_pb2, crm_pb2_grpc
from postpaid import keys as bill_keys
from provisioning import keys
from provisioning.lifecycle import LineState
from provisioning.lines import Line
from provisioning.order_records import line_change
from provisioning.order_store import OrderStore
from tests.conftest import quiet
from tests.test_acquisition import application


async def rows(app: App, query: str, *params: object) -> list[tuple[Any, ...]]:
    assert app.database is not None
    async with app.database.connection() as conn:
        return list(await (await conn.execute(query, params)).fetchall())


async def test_a_customer_s_lines_are_read_from_the_history_rows(
    crm: crm_pb2_grpc.CrmStub, app: App, r: redis.Redis, clock: ManualClock
) -> None:
    corp = application("co", contract="PREPAID")
    corp.customer_kind = "CORPORATE"
    corp.company.CopyFrom(crm_pb2.Company(name="Muster GmbH", country="DE", registration_number="HRB 12345"))
    first = await crm.SubmitApplication(corp)
    customer_id = first.customer_id
    root = (await crm.GetCustomer(crm_pb2.CustomerRef(customer_id=customer_id))).units[0]
    sales = await crm.AddOrgUnit(crm_pb2.OrgUnit(customer_id=customer_id, parent_id=root.id, name="Sales"))
    second = crm_pb2.LineOrder(
        crm_order_id="nl-1", kind="NEW_LINE", customer_id=customer_id, org_unit_id=sales.id,
        plan_id="mobile-prepaid", msisdn="491701234599", imsi="262011234567899",
    )  # fmt: skip
    assert (await crm.SubmitOrder(second)).status == crm_pb2.ORDER_STATUS_IN_PROGRESS
    assert app.worker is not None
    await app.worker.reconcile_once()  # both acknowledged: active
    # The rows carry what a line is and which unit it serves.
    assert await rows(
        app, "SELECT msisdn, state, customer_type, unit_id FROM line_changes WHERE customer_id = %s ORDER BY seq",
        customer_id,
    ) == [
        ("491701234567", "pending_activation", "MOBILE_PREPAID", root.id),
        ("491701234599", "pending_activation", "MOBILE_PREPAID", sales.id),
        ("491701234567", "active", "MOBILE_PREPAID", root.id),
        ("491701234599", "active", "MOBILE_PREPAID", sales.id),
    ]  # fmt: skip
    # Redis's list of the customer's numbers is not what the CRM reads.
    r.delete(keys.customer_lines(customer_id))
    expected = [
        ("491701234567", root.id, "active", "mobile-prepaid"),
        ("491701234599", sales.id, "active", "mobile-prepaid"),
    ]
    customer = await crm.GetCustomer(crm_pb2.CustomerRef(customer_id=customer_id))
    assert [(x.msisdn, x.unit_id, x.state, x.plan_id) for x in customer.lines] == expected
    assert {x.account_id for x in customer.lines} == {first.account_id, r.hget(keys.line("491701234599"), "account_id")}
    paged: list[tuple[str, str, str, str]] = []
    token = ""
    for _ in range(3):
        page = await crm.ListCustomerLines(
            crm_pb2.CustomerPageRequest(customer_id=customer_id, page_size=1, page_token=token)
        )
        paged += [(x.msisdn, x.unit_id, x.state, x.plan_id) for x in page.lines]
        token = page.next_page_token
        if not token:
            break
    assert paged == expected
    # A terminated number given to another customer is that one's, and no longer the first's:
    # the line's latest row (an order of the other customer's) names it.
    await crm.SubmitOrder(crm_pb2.LineOrder(crm_order_id="end-2", kind="TERMINATE", msisdn="491701234599",
                                            termination_reason="MOVED_AWAY"))  # fmt: skip
    await app.worker.reconcile_once()
    assert app.database is not None
    store = OrderStore(app.database)
    given = Line("491701234599", "other", "77", "mobile-prepaid", LineState.PENDING_ACTIVATION, "p-2")
    await store.write([line_change(given, "ordered", clock.now_ms() + 86_400_000)])
    customer = await crm.GetCustomer(crm_pb2.CustomerRef(customer_id=customer_id))
    assert [x.msisdn for x in customer.lines] == ["491701234567"]
    assert [(x.msisdn, x.state, x.account_id) for x in await store.all_lines_of("other")] == [
        ("491701234599", LineState.PENDING_ACTIVATION, "77")
    ]


async def test_an_order_rejected_while_the_database_is_down_leaves_redis_once_its_rows_are_in(
    crm: crm_pb2_grpc.CrmStub, app: App, r: redis.Redis
) -> None:
    assert app.acquisition is not None and app.cdr_relay is not None
    orders = app.acquisition.orders
    named = quiet(app)  # the outbox stays until the test hands it to the relay below
    written = orders.write_rows

    async def database_down(entries: Sequence[str]) -> int:
        raise psycopg.OperationalError("the database is not there")

    orders.write_rows = database_down
    poor = {"defaults_5y": 3, "monthly_income_micros": 800_000_000}
    refused = await crm.SubmitApplication(
        application("rj-1", contract="POSTPAID", plan="mobile-postpaid", history=poor)
    )
    assert refused.status == crm_pb2.ORDER_STATUS_REJECTED
    orders.write_rows = written
    running = await crm.SubmitApplication(application("ok-1", msisdn="491701234568", document="T220001293"))
    assert running.status == crm_pb2.ORDER_STATUS_IN_PROGRESS
    # the rejected order's rows wait in the outbox, its document in Redis
    assert r.exists(keys.order("rj-1")) and r.llen(keys.ORDER_ROWS) >= 1
    assert await rows(app, "SELECT crm_order_id FROM orders WHERE crm_order_id = 'rj-1'") == []
    # The server's relay writes them; once they are committed the document goes.
    app.cdr_relay.documents = named
    await app.cdr_relay.scan()
    await drain(app.cdr_relay)
    assert not r.exists(keys.ORDER_ROWS)
    assert await rows(app, "SELECT status FROM order_states WHERE crm_order_id = 'rj-1'") == [("REJECTED",)]
    assert not r.exists(keys.order("rj-1"))
    assert r.exists(keys.order("ok-1"))  # in progress: kept until the network acknowledges it
    got = await crm.GetOrder(crm_pb2.OrderRef(crm_order_id="rj-1"))
    assert (got.status, [s.step for s in got.steps]) == (crm_pb2.ORDER_STATUS_REJECTED, [s.step for s in refused.steps])


async def test_a_credit_class_change_is_a_customer_version_with_its_audit_entry_and_reaches_redis(
    crm: crm_pb2_grpc.CrmStub, app: App, r: redis.Redis
) -> None:
    assert app.worker is not None and app.billing is not None
    good = {"tenure_months": 36, "monthly_income_micros": 4_000_000_000}
    order = await crm.SubmitApplication(application("cc-1", contract="POSTPAID", plan="mobile-postpaid", history=good))
    assert (order.credit_class, order.credit_limit_micros) == ("A", 500_000_000)
    await app.worker.reconcile_once()  # active: billed to its postpaid billing account
    who, account = order.customer_id, order.account_id
    ba = await app.billing.accounts.billed_to(account)
    assert ba is not None and r.hget(bill_keys.billing_account(ba), "credit_limit") == "500000000"
    versions = "SELECT version_no, change, credit_class, credit_limit_micros, max_lines FROM customer_versions "
    versions += "WHERE customer_id = %s ORDER BY version_no"
    before = await rows(app, versions, int(who))

    # Bad input names the field and changes nothing.
    async def refused(change: crm_pb2.CreditClassChange) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await crm.ChangeCreditClass(change)
        return err.value

    for field, change in (
        ("credit_class", crm_pb2.CreditClassChange(customer_id=who, credit_class="Z", reason="review")),
        ("credit_limit_micros", crm_pb2.CreditClassChange(customer_id=who, credit_class="C",
                                                          credit_limit_micros=150_000_001, reason="review")),
        ("credit_limit_micros", crm_pb2.CreditClassChange(customer_id=who, credit_class="C",
                                                          credit_limit_micros=-1, reason="review")),
        ("reason", crm_pb2.CreditClassChange(customer_id=who, credit_class="C", reason=" ")),
    ):  # fmt: skip
        err = await refused(change)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and field in (err.details() or "")
    unknown = await refused(crm_pb2.CreditClassChange(customer_id="999999", credit_class="C", reason="review"))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    assert await rows(app, versions, int(who)) == before

    # Class C, its limit lowered: a new version, audited, in Redis where it acts.
    change = crm_pb2.CreditClassChange(
        customer_id=who, credit_class="C", credit_limit_micros=100_000_000, reason="annual review"
    )
    summary = await crm.ChangeCreditClass(change)
    assert (summary.id, summary.credit_class) == (who, "C")
    after = await rows(app, versions, int(who))
    assert after[:-1] == before and after[-1] == (before[-1][0] + 1, "credit", "C", 100_000_000, 3)
    ((details,),) = await rows(app, "SELECT details FROM audit WHERE subject = %s AND action = 'customer_credit'", who)
    assert (details["credit_class"], details["credit_limit_micros"], details["reason"]) == (
        "C", 100_000_000, "annual review"
    )  # fmt: skip
    assert r.hmget(keys.customer(who), ["credit_class", "credit_limit", "max_lines"]) == ["C", "100000000", "3"]
    assert r.hget(bill_keys.billing_account(ba), "credit_limit") == "100000000"
    assert r.hget(charging_keys.account(account), "credit_limit") == "100000000"  # its one line's share
    # The same change again (a retry): nothing more.
    assert (await crm.ChangeCreditClass(change)).credit_class == "C"
    assert await rows(app, versions, int(who)) == after
    # Class E: postpaid no longer offered, no credit to spend.
    await crm.ChangeCreditClass(crm_pb2.CreditClassChange(customer_id=who, credit_class="E", reason="defaulted"))
    assert r.hmget(keys.customer(who), ["credit_class", "postpaid_allowed", "credit_limit"]) == ["E", "0", "0"]
    assert r.hget(charging_keys.account(account), "credit_limit") == "0"
