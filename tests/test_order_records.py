"""Orders with their steps and lines' history as rows in PostgreSQL, the system of record
(issue 11): written by the order run at once and through the ``{crm}:orders:rows``
outbox (the relay keeps each row once, also after a crash between its commit and its
trim), acknowledgements' rows written before Redis hears of them (a retry after a crash
writes nothing twice), the CRM reading the rows, and Redis's orders and lines of before
moved once, resumably."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import grpc
import psycopg
import pytest
import redis

from charging import upgrade
from charging.cdr_relay import CdrRelay, drain
from charging.cdr_store import CdrStore
from charging.server import App
from charging.v1 import crm_pb2, crm_pb2_grpc
from provisioning import keys, line_owners, orders_legacy
from provisioning.lifecycle import LineState
from provisioning.lines import Line
from provisioning.order_records import OrderRecord, line_change
from provisioning.order_store import OrderStore
from provisioning.orders import Order, Step
from tests.conftest import SEALER, quiet
from tests.test_acquisition import application, line_order
from tests.test_cli import cli

MSISDN = "491701234567"


async def rows(app: App, query: str, *params: object) -> list[tuple[Any, ...]]:
    assert app.database is not None
    async with app.database.connection() as conn:
        return list(await (await conn.execute(query, params)).fetchall())


async def history(crm: crm_pb2_grpc.CrmStub) -> list[tuple[str, str, str, str]]:
    page = await crm.ListLineHistory(crm_pb2.LineHistoryRequest(msisdn=MSISDN))
    return [(c.state, c.crm_order_id, c.cause, c.reason) for c in page.changes]


def relay(app: App, **kw: Any) -> CdrRelay:
    assert app.redis is not None and app.database is not None
    return CdrRelay(app.redis, CdrStore(app.database), app.clock, kept=(OrderStore(app.database),), **kw)


async def test_orders_steps_and_a_line_s_history_are_rows_the_crm_reads(
    crm: crm_pb2_grpc.CrmStub, app: App, r: redis.Redis
) -> None:
    assert app.worker is not None
    good = {"tenure_months": 60, "monthly_income_micros": 4_000_000_000}
    order = await crm.SubmitApplication(application("p-1", contract="POSTPAID", plan="mobile-postpaid", history=good))
    assert order.status == crm_pb2.ORDER_STATUS_IN_PROGRESS and order.kind == "APPLICATION"
    # The decision's rows are there at once: the order, every step with its reasons, its status.
    query = "SELECT step, outcome, reasons FROM order_steps WHERE crm_order_id = 'p-1' ORDER BY position"
    steps = await rows(app, query)
    assert [(s, o) for s, o, _ in steps] == [(s.step, s.outcome) for s in order.steps]
    scored = next(s for s in order.steps if s.step == "credit")
    assert ("credit", f"class {order.credit_class}", list(scored.reasons)) in steps
    assert await rows(app, "SELECT status FROM order_states WHERE crm_order_id = 'p-1'") == [("IN_PROGRESS",)]
    await app.worker.reconcile_once()  # the network acknowledges the activation
    await line_order(crm, "bar-1", "BAR_OUTGOING")
    await app.worker.reconcile_once()
    resumed = await line_order(crm, "sus-0", "RESUME")  # a barred line back to active
    await app.worker.reconcile_once()
    await line_order(crm, "end-1", "TERMINATE", termination_reason="FRAUD")
    await app.worker.reconcile_once()
    # Redis kept each order only until the network acknowledged it: the rows answer.
    assert not r.keys("{crm}:order:*") and not r.keys("{crm}:orders:of:*") and r.zcard(keys.SUBMITTED) == 0
    done = await crm.GetOrder(crm_pb2.OrderRef(crm_order_id="p-1"))
    assert done.status == crm_pb2.ORDER_STATUS_COMPLETED and done.credit_class == order.credit_class
    assert [s.step for s in done.steps] == [s.step for s in order.steps] + ["provisioning"]
    assert done.steps[-1].outcome == "acknowledged" and done.customer_id == order.customer_id
    assert resumed.status == crm_pb2.ORDER_STATUS_IN_PROGRESS
    assert await history(crm) == [
        ("pending_activation", "p-1", "ordered", ""),
        ("active", "p-1", "acknowledged", ""),
        ("barred_outgoing", "bar-1", "acknowledged", ""),
        ("active", "sus-0", "acknowledged", ""),
        ("terminated", "end-1", "acknowledged", "FRAUD"),
    ]
    two = await crm.ListLineHistory(crm_pb2.LineHistoryRequest(msisdn=MSISDN, page_size=2))
    rest = await crm.ListLineHistory(crm_pb2.LineHistoryRequest(msisdn=MSISDN, page_token=two.next_page_token))
    assert len(two.changes) == 2 and [c.state for c in rest.changes] == ["barred_outgoing", "active", "terminated"]
    # Lists: a customer's orders, every order by kind, status and line, in decision order.
    mine = await crm.ListCustomerOrders(crm_pb2.CustomerPageRequest(customer_id=order.customer_id, page_size=3))
    assert [o.crm_order_id for o in mine.orders] == ["p-1", "bar-1", "sus-0"] and mine.next_page_token
    last = await crm.ListCustomerOrders(
        crm_pb2.CustomerPageRequest(customer_id=order.customer_id, page_token=mine.next_page_token)
    )
    assert [(o.crm_order_id, o.kind) for o in last.orders] == [("end-1", "TERMINATE")] and not last.next_page_token
    wrong = await line_order(crm, "sus-2", "SUSPEND")  # a terminated line takes no order
    assert wrong.status == crm_pb2.ORDER_STATUS_REJECTED and not r.exists(keys.order("sus-2"))
    # The same order id again is the same order, from its rows: nothing runs again.
    again = await crm.SubmitApplication(application("p-1", contract="POSTPAID", plan="mobile-postpaid", history=good))
    assert again == done and not r.keys("{crm}:order:*") and r.zcard(keys.SUBMITTED) == 0
    assert (await line_order(crm, "sus-2", "SUSPEND")) == wrong
    rejected = await crm.ListOrders(crm_pb2.OrderQuery(status=crm_pb2.ORDER_STATUS_REJECTED))
    assert [(o.crm_order_id, o.kind, o.steps[-1].outcome) for o in rejected.orders] == [("sus-2", "SUSPEND", "refused")]
    terminations = await crm.ListOrders(crm_pb2.OrderQuery(kind="TERMINATE", msisdn=MSISDN))
    assert [o.status for o in terminations.orders] == [crm_pb2.ORDER_STATUS_COMPLETED]
    printed = await cli(app, "crm", "line", MSISDN, "--history")
    assert printed.code == 0 and "terminated" in printed.out.splitlines()[-1]
    assert "order end-1  acknowledged (FRAUD)" in printed.out
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await crm.ListOrders(crm_pb2.OrderQuery(kind="UPGRADE"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "kind" in str(err.value.details())
    # Rows are immutable, for the server's role too.
    with pytest.raises(psycopg.Error):
        await rows(app, "UPDATE order_states SET status = 'REJECTED' WHERE crm_order_id = 'p-1'")


async def test_rows_the_run_could_not_write_reach_the_tables_through_the_outbox_once(
    crm: crm_pb2_grpc.CrmStub, app: App, r: redis.Redis
) -> None:
    assert app.acquisition is not None
    orders = app.acquisition.orders
    quiet(app)  # the test's relays alone on the outboxes

    async def database_down(entries: Sequence[str]) -> int:
        raise psycopg.OperationalError("the database is not there")

    orders.write_rows = database_down
    order = await crm.SubmitApplication(application("o-1"))
    assert order.status == crm_pb2.ORDER_STATUS_IN_PROGRESS
    assert await rows(app, "SELECT * FROM orders") == []
    assert r.llen(keys.ORDER_ROWS) == 2  # the order's rows and the line's first state
    # until the relay has written them, the CRM reads the order from Redis
    assert (await crm.GetOrder(crm_pb2.OrderRef(crm_order_id="o-1"))).status == crm_pb2.ORDER_STATUS_IN_PROGRESS

    async def crash() -> None:
        raise RuntimeError("stopped between the commit and the trim")

    crashing = relay(app, after_commit=crash)
    await crashing.scan()
    with pytest.raises(RuntimeError):
        await crashing.relay_waiting()
    assert r.llen(keys.ORDER_ROWS) == 2  # committed, not trimmed: the next relay writes them again
    await drain(relay(app))
    assert not r.exists(keys.ORDER_ROWS)
    assert await rows(app, "SELECT crm_order_id, kind, msisdn FROM orders") == [("o-1", "APPLICATION", MSISDN)]
    counts = await rows(app, "SELECT (SELECT count(*) FROM order_steps), (SELECT count(*) FROM line_changes)")
    assert counts == [(len(order.steps), 1)]  # each row once
    assert await history(crm) == [("pending_activation", "o-1", "ordered", "")]


async def test_an_acknowledgement_stopped_after_its_rows_is_completed_once(
    crm: crm_pb2_grpc.CrmStub, app: App, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert app.acquisition is not None
    await crm.SubmitApplication(application("a-1"))
    orders = app.acquisition.orders
    drop = orders.drop

    async def killed(order_id: str) -> None:
        raise ConnectionError("the worker died before Redis heard of it")

    monkeypatch.setattr(orders, "drop", killed)
    with pytest.raises(ConnectionError):
        await app.acquisition.acknowledged(MSISDN, "active", "mobile-prepaid")
    assert await rows(app, "SELECT status FROM order_states WHERE crm_order_id = 'a-1' ORDER BY at") == [
        ("IN_PROGRESS",),
        ("COMPLETED",),
    ]
    assert (await orders.get("a-1") or Order("")).status == "IN_PROGRESS"  # Redis not told yet
    monkeypatch.setattr(orders, "drop", drop)
    await app.acquisition.acknowledged(MSISDN, "active", "mobile-prepaid")  # the worker's retry
    await app.acquisition.acknowledged(MSISDN, "active", "mobile-prepaid")  # and a repeated acknowledgement
    assert await orders.get("a-1") is None  # done: the rows answer
    assert (await crm.GetOrder(crm_pb2.OrderRef(crm_order_id="a-1"))).status == crm_pb2.ORDER_STATUS_COMPLETED
    acknowledged = await rows(app, "SELECT count(*) FROM order_steps WHERE outcome = 'acknowledged'")
    assert acknowledged == [(1,)]
    assert [c[:3] for c in await history(crm)] == [
        ("pending_activation", "a-1", "ordered"),
        ("active", "a-1", "acknowledged"),
    ]


async def test_orders_and_lines_redis_kept_before_are_moved_once(
    crm: crm_pb2_grpc.CrmStub, app: App, r: redis.Redis
) -> None:
    assert app.redis is not None and app.database is not None
    # as an older server left them: documents without a kind, a line without a history
    steps = (
        Step("order", "accepted", ("SUSPEND",), 1_700_000_000),
        Step("provisioning", "requested", (), 1_700_000_001),
    )
    old = Order("old-1", "COMPLETED", steps=steps, submitted_at=1_700_000_000, customer_id="9", msisdn="491709999999")
    r.set(keys.order("old-1"), old.to_redis())
    r.set(keys.order("running"), Order("running", submitted_at=1_700_000_000).to_redis())
    line = Line("491709999999", "9", "12", "mobile-prepaid", LineState.SUSPENDED, "old-1", unit_id="3")
    r.hset(keys.line(line.msisdn), mapping=line.to_redis())  # type: ignore[arg-type]
    r.rpush(keys.DECISIONS, '{"application": "old-1", "step": "screening"}')  # what each step row says now
    r.delete(keys.ORDERS_MOVED)
    # a run that stopped after part of its rows: the next one completes them, once
    partly = replace(old, kind="SUSPEND", steps=steps[:1])
    await OrderStore(app.database).write([OrderRecord(partly, 1_700_000_001_000)])
    moved = await orders_legacy.move_once(app.redis, app.database, app.clock.now_ms())
    assert moved is not None and (moved.orders, moved.lines) == (1, 1)
    assert await orders_legacy.move_once(app.redis, app.database, app.clock.now_ms()) is None
    got = await crm.ListOrders(crm_pb2.OrderQuery(msisdn="491709999999"))
    assert [(o.crm_order_id, o.kind, o.status, len(o.steps)) for o in got.orders] == [
        ("old-1", "SUSPEND", crm_pb2.ORDER_STATUS_COMPLETED, 2)
    ]
    assert await rows(app, "SELECT crm_order_id FROM orders WHERE crm_order_id = 'running'") == []
    found = await crm.ListLineHistory(crm_pb2.LineHistoryRequest(msisdn="491709999999"))
    assert [(c.state, c.crm_order_id, c.cause) for c in found.changes] == [("suspended", "old-1", "found")]
    # the customer's lines are read from the rows: the found row says what the line is and serves
    query = "SELECT customer_type, unit_id FROM line_changes WHERE msisdn = '491709999999'"
    assert await rows(app, query) == [("MOBILE_PREPAID", "3")]
    assert not r.exists(keys.DECISIONS)
    # Redis keeps what it acts on (the line, the running order), not what the rows answer
    assert not r.exists(keys.order("old-1")) and r.exists(keys.line(line.msisdn), keys.order("running")) == 2


async def test_lines_whose_rows_came_before_0015_are_given_their_owner_once(app: App, r: redis.Redis) -> None:
    assert app.redis is not None and app.database is not None
    store = OrderStore(app.database)
    # Rows as the 0013-era move and changes before revision 0015 wrote them: no owner.
    named = Line(
        "491709990001",
        "77",
        "12",
        "fixed-postpaid",
        LineState.ACTIVE,
        "o-1",
        customer_type="FIXED_POSTPAID",
        unit_id="5",
    )
    gone = replace(named, msisdn="491709990002", order_id="o-2")
    later = replace(named, msisdn="491709990003", order_id="o-3")
    for line in (named, gone, later):
        await store.write([replace(line_change(line, "found", 1_700_000_000_000), customer_type="", unit_id="")])
    await store.write([line_change(replace(later, changes=1), "acknowledged", 1_700_000_100_000)])  # since 0015
    for line in (named, later):
        r.hset(keys.line(line.msisdn), mapping=line.to_redis())  # type: ignore[arg-type]
    r.delete(keys.LINE_OWNERS_FILLED)
    before = await store.all_lines_of("77")
    assert [(x.msisdn, x.customer_type, x.unit_id) for x in before if x.msisdn == named.msisdn] == [
        (named.msisdn, "MOBILE_PREPAID", "")  # what a reader took it for
    ]
    # The start-time moves fill them (once: a marker), from the lines' Redis hashes.
    await upgrade.move_stored_records(app.redis, app.database, SEALER, app.clock.now_ms())
    assert r.exists(keys.LINE_OWNERS_FILLED)
    owners = {x.msisdn: (x.customer_type, x.unit_id, x.state) for x in await store.all_lines_of("77")}
    assert owners == {
        named.msisdn: ("FIXED_POSTPAID", "5", LineState.ACTIVE),
        gone.msisdn: ("MOBILE_PREPAID", "", LineState.ACTIVE),  # nothing knows it: as before
        later.msisdn: ("FIXED_POSTPAID", "5", LineState.ACTIVE),  # its own latest row said so
    }
    query = "SELECT cause, customer_type, unit_id FROM line_changes WHERE msisdn = %s ORDER BY at, seq"
    assert await rows(app, query, named.msisdn) == [("found", "", ""), ("found", "FIXED_POSTPAID", "5")]
    assert len(await rows(app, query, later.msisdn)) == 2
    # Run again (a mover stopped before its marker): nothing written twice.
    r.delete(keys.LINE_OWNERS_FILLED)
    again = await line_owners.fill_once(app.redis, app.database)
    assert again is not None and (again.lines, again.unknown) == (0, 1)
    assert len(await rows(app, query, named.msisdn)) == 2
    assert await line_owners.fill_once(app.redis, app.database) is None
