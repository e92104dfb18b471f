"""Customers and their organisation units in PostgreSQL, the system of record (issue 11):
versioned rows, each change with its audit entry in one transaction, personal data
sealed, writes of an order resumed after a crash (at each write) made once, a customer
whose order is refused withdrawn, the CRM API reading the records, units moved as new
versions, and the customers Redis kept before recorded once, resumably."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import grpc
import psycopg
import pytest
import redis
import redis.asyncio as aioredis

from charging import migrations
from charging.clock import ManualClock
from charging.errors import InvalidRequest, NotFound
from charging.server import App
from charging.settings import Settings
from charging.v1 import crm_pb2, crm_pb2_grpc
from provisioning import customer_legacy, keys
from provisioning.credit import CreditDecision
from provisioning.customer_records import CustomerRecords
from provisioning.customers import Customer, Customers
from provisioning.organisation import Organisation
from provisioning.screening import Screener
from provisioning.unit_records import UnitRecords
from tests.conftest import SEALER, PostgresServer
from tests.test_acquisition import application
from tests.test_acquisition_resume import corporate as resumable_corporate
from tests.test_acquisition_resume import crash_once_after, crashed_submit
from tests.test_crm_search import document


async def rows(app: App, query: str, *params: object) -> list[tuple[object, ...]]:
    assert app.database is not None
    async with app.database.connection() as conn:
        return list(await (await conn.execute(query, params)).fetchall())


def records(app: App) -> CustomerRecords:
    assert app.acquisition is not None and app.acquisition.records is not None
    return app.acquisition.records


def corporate(order_id: str) -> crm_pb2.Application:
    app = application(order_id)
    app.customer_kind = "CORPORATE"
    app.company.CopyFrom(crm_pb2.Company(name="Muster GmbH", country="DE", registration_number="HRB 12345"))
    return app


async def test_a_customer_and_its_units_are_versioned_rows_with_audit_entries(
    crm: crm_pb2_grpc.CrmStub, app: App, r: redis.Redis
) -> None:
    assert app.worker is not None
    who = (await crm.SubmitApplication(corporate("k-1"))).customer_id
    ((kind, country, by),) = await rows(
        app, "SELECT kind, country, recorded_by FROM customers WHERE customer_id = %s", int(who)
    )
    assert (kind, country) == ("CORPORATE", "DE") and by  # who made it
    ((sealed,),) = await rows(app, "SELECT sealed_personal FROM customer_versions WHERE customer_id = %s", int(who))
    assert str(sealed).startswith("enc:") and "Muster" not in str(sealed) and "anna@" not in str(sealed)
    # its line acknowledged by the network: ACTIVE, as a new version
    await app.worker.reconcile_once()
    history = await records(app).history(who)
    assert [(v.number, v.change, v.state) for v in history] == [(1, "created", "PENDING"), (2, "state", "ACTIVE")]
    customer = await crm.GetCustomer(crm_pb2.CustomerRef(customer_id=who))
    (root,) = customer.units
    branch = await crm.AddOrgUnit(crm_pb2.OrgUnit(customer_id=who, parent_id=root.id, name="Munich", pays_itself=True))
    sales = await crm.AddOrgUnit(crm_pb2.OrgUnit(customer_id=who, parent_id=branch.id, name="Sales"))
    assert sales.paying_unit_id == branch.id
    units = await rows(
        app,
        "SELECT u.unit_id, v.parent_id, v.name FROM org_units u JOIN org_unit_versions v USING (unit_id) "
        "WHERE u.customer_id = %s ORDER BY u.unit_id",
        int(who),
    )
    assert units == [(int(root.id), None, "Muster GmbH"), (int(branch.id), int(root.id), "Munich"),
                     (int(sales.id), int(branch.id), "Sales")]  # fmt: skip
    audit = await rows(app, "SELECT action, details FROM audit WHERE subject = %s", who)
    actions = sorted(str(a[0]) for a in audit if str(a[0]).startswith(("customer_", "unit_")))
    assert actions == ["customer_created", "customer_state", "unit_added", "unit_added", "unit_added"]
    assert not any("Anna" in str(d) or "anna@" in str(d) for _, d in audit)  # no personal data in the trail
    # The CRM API reads the record: Redis's copy of the customer gone, it still answers.
    r.delete(keys.customer(who))
    again = await crm.GetCustomer(crm_pb2.CustomerRef(customer_id=who))
    assert (again.kind, len(again.units)) == ("CORPORATE", 3)
    (listed,) = (await crm.ListCustomers(crm_pb2.CustomerQuery(state="ACTIVE", kind="CORPORATE"))).customers
    assert (listed.id, listed.postal_code, listed.identity_document.number) == (who, "10115", "***36")


async def test_writes_of_an_order_run_again_change_nothing(app: App, clock: ManualClock) -> None:
    rec = records(app)
    credit = CreditDecision(0, "B", 500_000_000, 0, True, 3, ())
    anna = Customer("9001", "INDIVIDUAL", created=1_760_000_000, name="Anna Muster", email="a@x.org", credit=credit)
    assert await rec.create(anna) is True
    assert await rec.create(anna) is False  # the order resumed after a crash
    assert await rec.record_state("9001", "PENDING") is False  # no change: no version
    # four refreshes at once: one new version, numbered after the first
    done = await asyncio.gather(*(rec.record_state("9001", "ACTIVE") for _ in range(4)))
    assert sorted(done) == [False, False, False, True]
    got = await rec.get("9001")
    assert got is not None and (got.state, got.name, got.credit) == ("ACTIVE", "Anna Muster", credit)
    # its order refused after it was made: withdrawn, not found; run again and accepted: back
    assert await rec.withdraw("9001") is True
    assert await rec.get("9001") is None and await rec.record_state("9001", "ACTIVE") is False
    assert await rec.create(anna) is True
    assert [(v.change, v.state) for v in await rec.history("9001")] == [
        ("created", "PENDING"),
        ("state", "ACTIVE"),
        ("withdrawn", "WITHDRAWN"),
        ("created", "PENDING"),
    ]
    assert await rec.rename("9001", "Anna Beispiel") is True
    assert (await rec.get("9001")) == replace(anna, state="PENDING", name="Anna Beispiel")
    audit = await rows(app, "SELECT action FROM audit WHERE subject = '9001' ORDER BY occurred_at")
    assert sorted(str(a[0]) for a in audit) == sorted(
        ["customer_created", "customer_state", "customer_withdrawn", "customer_created", "customer_renamed"]
    )
    with pytest.raises(NotFound):
        await rec.history("x")
    # for analysts: made in October 2025, active since (the test clock's month)
    per_period = await rows(
        app,
        "SELECT month::text, new_customers, activated, terminated FROM customers_per_period WHERE kind = 'INDIVIDUAL'",
    )
    now_month = f"{datetime.fromtimestamp(clock.now_ms() / 1000, UTC):%Y-%m}-01"
    assert sorted(per_period) == sorted([("2025-10-01", 1, 0, 0), (now_month, 0, 1, 0)])
    with pytest.raises(psycopg.Error):  # the server's role appends; a change is a new version
        await rows(app, "UPDATE customer_versions SET state = 'ACTIVE' WHERE customer_id = 9001")


async def test_a_unit_moves_as_a_new_version_never_under_itself(crm: crm_pb2_grpc.CrmStub, app: App) -> None:
    assert app.acquisition is not None
    organisation = app.acquisition.organisation
    who = (await crm.SubmitApplication(corporate("k-2"))).customer_id
    root = await organisation.root(who)
    a = await organisation.add_unit(who, root, "Munich", True)
    b = await organisation.add_unit(who, a.id, "Sales", False)
    assert await organisation.add_unit(who, a.id, "Sales", False, unit_id=b.id) == b  # again: nothing new
    for unit, parent, field in ((root, a.id, "unit_id"), (a.id, b.id, "parent_id"), (a.id, a.id, "parent_id")):
        with pytest.raises(InvalidRequest) as err:
            await organisation.move_unit(who, unit, parent)
        assert err.value.field == field
    moved = await organisation.move_unit(who, b.id, root)
    assert moved.parent == root
    assert (await records(app).organisation.units(who))[b.id].parent == root
    assert (await organisation.units(who))[b.id].parent == root  # Redis's copy, which billing reads
    history = await records(app).organisation.history(b.id)
    assert [(v.number, v.change, v.state) for v in history] == [(1, "added", a.id), (2, "moved", root)]
    unit = (await crm.GetCustomer(crm_pb2.CustomerRef(customer_id=who))).units
    assert {u.id: u.paying_unit_id for u in unit}[b.id] == root  # it pays through the company now
    with pytest.raises(grpc.aio.AioRpcError) as rpc_err:
        await crm.GetCustomer(crm_pb2.CustomerRef(customer_id="424242"))
    assert rpc_err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_customers_redis_kept_before_are_recorded_once(app: App) -> None:
    assert app.redis is not None and app.database is not None and app.acquisition is not None
    sealer = app.acquisition.sealer
    # written as a server before this revision did: Redis only
    old = Customers(app.redis, Screener(app.redis, "salt"), sealer)
    anna = Customer("8001", "CORPORATE", created=1_700_000_000, state="PENDING", name="Anna GmbH", city="Berlin")
    await old.create(anna)
    await old.create(Customer("8002", "INDIVIDUAL", created=1_700_000_100, name="Ben"))
    await app.redis.hset(keys.customer("8002"), "state", "TERMINATED")
    units = Organisation(app.redis)
    root = await units.add_unit("8001", "", "Anna GmbH", True, unit_id="7001")
    await units.add_unit("8001", root.id, "Team", False, unit_id="7002")
    await app.redis.delete(keys.CUSTOMERS_MOVED)
    # a run stopped before its marker (a crash) runs again: nothing recorded twice
    first = await customer_legacy.move(app.redis, app.database, sealer)
    assert (first.customers, first.units) == (2, 2)
    moved = await customer_legacy.move_once(app.redis, app.database, sealer)
    assert moved is not None and await customer_legacy.move_once(app.redis, app.database, sealer) is None
    rec = records(app)
    assert await rec.get("8001") == anna
    assert (await rec.get("8002") or anna).state == "TERMINATED"
    assert [(u.id, u.parent) for u in (await rec.organisation.units("8001")).values()] == [
        ("7001", ""),
        ("7002", "7001"),
    ]
    counted = await rows(
        app, "SELECT count(*) FROM customer_versions WHERE customer_id IN (8001, 8002) AND change = 'moved'"
    )
    assert counted == [(2,)]
    assert await app.redis.exists(keys.customer("8001"))  # Redis keeps its real-time copy


async def test_a_customer_whose_order_is_refused_after_it_was_made_is_withdrawn(
    crm: crm_pb2_grpc.CrmStub, app: App
) -> None:
    first = await crm.SubmitApplication(application("w-1"))
    # another person asking for the same number: screened, decided, made, then refused at the line
    second = await crm.SubmitApplication(application("w-2", document=document(5)))
    assert second.status == crm_pb2.ORDER_STATUS_REJECTED and second.steps[-1].step == "line"
    withdrawn = await rows(app, "SELECT customer_id FROM customer_versions WHERE change = 'withdrawn'")
    ((who,),) = withdrawn
    assert str(who) != first.customer_id
    assert [v.change for v in await records(app).history(str(who))] == ["created", "withdrawn"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await crm.GetCustomer(crm_pb2.CustomerRef(customer_id=str(who)))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await crm.ListCustomers(crm_pb2.CustomerQuery())
    assert [c.id for c in listed.customers] == [first.customer_id]


RECORD_CRASHES = [
    (CustomerRecords, "create"),  # recorded in PostgreSQL, not yet in Redis
    (UnitRecords, "add_unit"),  # the root unit recorded, not yet in Redis
    (Organisation, "add_unit"),  # both
]


@pytest.mark.parametrize(("owner", "name"), RECORD_CRASHES, ids=["customer", "unit-record", "unit"])
async def test_a_crashed_onboarding_records_the_customer_once(
    crm: crm_pb2_grpc.CrmStub,
    app: App,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
    owner: Any,
    name: str,
) -> None:
    assert app.acquisition is not None and app.worker is not None
    crash_once_after(monkeypatch, owner, name)
    await crashed_submit(crm, resumable_corporate("o-1"))
    clock.advance(seconds=31)  # past the crashed run's lease
    assert await app.acquisition.resume_stalled() == 1
    assert await app.worker.reconcile_once() == 1
    who = (await crm.GetOrder(crm_pb2.OrderRef(crm_order_id="o-1"))).customer_id
    assert [(v.change, v.state) for v in await records(app).history(who)] == [
        ("created", "PENDING"),
        ("state", "ACTIVE"),
    ]
    assert await rows(app, "SELECT count(*) FROM customers") == [(1,)]
    assert await rows(app, "SELECT count(*) FROM org_unit_versions") == [(1,)]
    audit = await rows(app, "SELECT action, count(*) FROM audit WHERE subject = %s GROUP BY action", who)
    assert {a: n for a, n in audit if str(a).startswith(("customer_", "unit_"))} == {
        "customer_created": 1,
        "customer_state": 1,
        "unit_added": 1,
    }
    customer = await crm.GetCustomer(crm_pb2.CustomerRef(customer_id=who))
    assert [(line.unit_id, u.name) for line in customer.lines for u in customer.units] == [
        (customer.units[0].id, "Muster GmbH")
    ]


async def test_charging_migrate_records_the_customers_redis_kept(
    settings: Settings, database_url: str, postgres_server: PostgresServer
) -> None:
    client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        old = Customers(client, Screener(client, "salt"), SEALER)  # Redis only, as before 0012
        await old.create(Customer("8101", "INDIVIDUAL", created=1_700_000_000, name="Carla Beispiel"))
        owner = postgres_server.owner_of(database_url)
        assert await migrations.migrate(replace(settings, database_migrate_url=owner)) == migrations.head()
        assert await client.exists(keys.CUSTOMERS_MOVED)
    finally:
        await client.aclose()
    with psycopg.connect(database_url) as conn:
        found = conn.execute("SELECT customer_id, version_no, change, sealed_personal FROM customer_versions")
        ((customer_id, number, change, sealed),) = found.fetchall()
    assert (customer_id, number, change) == (8101, 1, "moved") and "Carla" not in sealed
