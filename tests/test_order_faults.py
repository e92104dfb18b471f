"""Orders in PostgreSQL when something goes wrong (the review of issue 11's rows): the
database unavailable while an id is claimed, the relay's hold, a row the database refuses,
two decisions of one order, a line that takes the same state twice under one order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import grpc
import psycopg
import pytest
import redis

from charging import metrics
from charging.cdr_relay import drain
from charging.clock import ManualClock
from charging.server import App
from charging.v1 import crm_pb2, crm_pb2_grpc
from provisioning import keys
from provisioning.order_records import LineChange, OrderRecord, entry
from provisioning.order_store import OrderStore
from provisioning.orders import ORDER_LEASE_MS, Order, Step
from tests.conftest import quiet
from tests.test_acquisition import application
from tests.test_order_records import MSISDN, relay, rows

HOLD_MS = 2_500


async def test_a_claim_the_database_cannot_check_is_taken_back_and_runs_once(
    crm: crm_pb2_grpc.CrmStub, app: App, r: redis.Redis, clock: ManualClock
) -> None:
    assert app.acquisition is not None
    orders = app.acquisition.orders
    looked_up = orders.decided_rows
    assert looked_up is not None

    async def database_down(order_id: str) -> None:
        raise psycopg.OperationalError("the database is not there")

    orders.decided_rows = database_down
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await crm.SubmitApplication(application("d-1"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    # no claim left behind: nothing for the resumer to run a second time
    assert not r.exists(keys.order("d-1"), keys.order_work("d-1")) and r.zcard(keys.SUBMITTED) == 0
    clock.advance(ms=ORDER_LEASE_MS + 1)
    assert await app.acquisition.resume_stalled() == 0
    orders.decided_rows = looked_up
    order = await crm.SubmitApplication(application("d-1"))  # the client asks again
    assert order.status == crm_pb2.ORDER_STATUS_IN_PROGRESS
    assert await rows(app, "SELECT status FROM order_states WHERE crm_order_id = 'd-1'") == [("IN_PROGRESS",)]
    assert await rows(app, "SELECT count(*) FROM orders") == [(1,)]


async def test_with_a_hold_a_decision_reaches_postgresql_only_through_the_relay_after_it(
    crm: crm_pb2_grpc.CrmStub, app: App, r: redis.Redis, clock: ManualClock
) -> None:
    assert app.acquisition is not None and app.database is not None
    app.acquisition.keep_records(OrderStore(app.database), hold_ms=HOLD_MS)  # appendfsync everysec
    quiet(app)  # the test's relay alone on the outboxes
    order = await crm.SubmitApplication(application("h-1"))
    # Redis may still lose the decision: PostgreSQL must not have it yet
    assert await rows(app, "SELECT * FROM order_states") == [] and r.llen(keys.ORDER_ROWS) == 2
    assert (await crm.GetOrder(crm_pb2.OrderRef(crm_order_id="h-1"))) == order  # Redis answers meanwhile
    held = relay(app, hold_ms=HOLD_MS)
    await held.scan()
    await held.relay_waiting()
    assert await rows(app, "SELECT * FROM order_states") == []  # read and marked, held
    clock.advance(ms=HOLD_MS)
    await drain(held)
    assert await rows(app, "SELECT status FROM order_states WHERE crm_order_id = 'h-1'") == [("IN_PROGRESS",)]
    assert not r.exists(keys.ORDER_ROWS)
    assert (await crm.GetOrder(crm_pb2.OrderRef(crm_order_id="h-1"))).status == crm_pb2.ORDER_STATUS_IN_PROGRESS


async def test_a_row_postgresql_refuses_is_set_aside_and_holds_nothing_back(
    crm: crm_pb2_grpc.CrmStub, app: App, r: redis.Redis
) -> None:
    assert app.acquisition is not None
    orders = app.acquisition.orders
    quiet(app)  # the test's relay alone on the outboxes

    async def database_down(entries: Sequence[str]) -> int:
        raise psycopg.OperationalError("the database is not there")

    orders.write_rows = database_down  # the rows wait in the outbox, with the decision's audit entry
    await crm.SubmitApplication(application("b-1"))
    flying = LineChange(MSISDN, "1", "1", "flying", "mobile-prepaid", "b-1", "acknowledged", "", 1_700_000_000_000)
    r.lpush(keys.ORDER_ROWS, entry(flying))  # a state the table's check refuses, ahead of the good rows
    refused = metrics.ORDER_ROWS_REFUSED._value.get()
    await drain(relay(app, documents=(keys.ORDER_RECORDS,)))
    assert not r.exists(keys.ORDER_ROWS)
    assert await rows(app, "SELECT count(*) FROM audit WHERE action = 'order_decided'") == [(1,)]
    assert await rows(app, "SELECT status FROM order_states WHERE crm_order_id = 'b-1'") == [("IN_PROGRESS",)]
    assert await rows(app, "SELECT state FROM line_changes") == [("pending_activation",)]
    aside = await rows(app, "SELECT entry, error FROM order_rows_refused")
    assert [e for e, _ in aside] == [entry(flying)] and "CheckViolation" in aside[0][1]
    assert metrics.ORDER_ROWS_REFUSED._value.get() == refused + 1


async def test_an_order_has_one_decision_the_first_recorded(crm: crm_pb2_grpc.CrmStub, app: App) -> None:
    assert app.database is not None
    store = OrderStore(app.database)
    steps = (Step("order", "accepted", ("SUSPEND",), 1_700_000_000), Step("line", "checked", (), 1_700_000_001))
    first = Order("two-1", "IN_PROGRESS", steps=steps, submitted_at=1_700_000_000, msisdn=MSISDN, kind="SUSPEND")
    again = replace(first, status="REJECTED", steps=(*steps[:1], Step("line", "refused", ("barred",), 1_700_000_002)))
    await store.write([OrderRecord(first, 1_700_000_001_000)])
    await store.write([OrderRecord(again, 1_700_000_002_000)])  # decided a second time (a resumed run)
    await store.write([OrderRecord(again, 1_700_000_002_000)])
    assert await rows(app, "SELECT status FROM order_states WHERE crm_order_id = 'two-1'") == [("IN_PROGRESS",)]
    got = await crm.GetOrder(crm_pb2.OrderRef(crm_order_id="two-1"))
    assert got.status == crm_pb2.ORDER_STATUS_IN_PROGRESS and [s.outcome for s in got.steps] == ["accepted", "checked"]
    assert not (await crm.ListOrders(crm_pb2.OrderQuery(status=crm_pb2.ORDER_STATUS_REJECTED))).orders
    assert await rows(app, "SELECT kind, status, orders FROM orders_per_period") == [("SUSPEND", "IN_PROGRESS", 1)]
    done = replace(first, status="COMPLETED", steps=(*steps, Step("provisioning", "acknowledged", (), 1_700_000_003)))
    await store.write([OrderRecord(done, 1_700_000_003_000)])
    got = await crm.GetOrder(crm_pb2.OrderRef(crm_order_id="two-1"))
    assert got.status == crm_pb2.ORDER_STATUS_COMPLETED and len(got.steps) == 3


async def test_a_line_back_in_a_state_under_the_same_order_has_each_change_in_its_history(
    crm: crm_pb2_grpc.CrmStub, app: App
) -> None:
    assert app.acquisition is not None and app.worker is not None
    await crm.SubmitApplication(application("l-1"))
    await app.worker.reconcile_once()  # acknowledged active
    for state in ("suspended", "active", "suspended", "active"):  # the network's own changes, no new order
        await app.acquisition.acknowledged(MSISDN, state, "mobile-prepaid")
    await app.acquisition.acknowledged(MSISDN, "active", "mobile-prepaid")  # a repeat changes nothing
    page = await crm.ListLineHistory(crm_pb2.LineHistoryRequest(msisdn=MSISDN))
    assert [(c.state, c.crm_order_id) for c in page.changes] == [
        ("pending_activation", "l-1"),
        ("active", "l-1"),
        ("suspended", "l-1"),
        ("active", "l-1"),
        ("suspended", "l-1"),
        ("active", "l-1"),
    ]
