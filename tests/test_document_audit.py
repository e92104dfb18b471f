"""Catalog and coverage loads and their audit entries: one atomic Redis step (the version
made current and the entry pushed to the store's record outbox), then moved into the
``audit`` table by the relay at least once and kept once. A crash anywhere leaves both or
neither: before the step nothing, after it both in Redis, between the relay's commit and
its trim one row (the next relay finds the entry by name and changes nothing)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
import redis

from charging import keys
from charging.catalogs import read_catalog_file
from charging.cdr_relay import CdrRelay, drain
from charging.cdr_store import CdrStore
from charging.clock import ManualClock
from charging.documents import records_key
from charging.server import App
from charging.settings import Settings
from charging.v1 import admin_pb2, crm_pb2, crm_pb2_grpc
from provisioning import keys as provisioning_keys
from provisioning.coverage import STORE as COVERAGE
from provisioning.orders import ORDER_LEASE_MS
from tests.conftest import Stubs, quiet
from tests.test_acquisition import application

DOCUMENTS = (keys.CATALOG_RECORDS, records_key(COVERAGE), provisioning_keys.ORDER_RECORDS)


def audit_rows(database_url: str, subject: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT actor, action, details FROM audit WHERE subject = %s ORDER BY occurred_at", (subject,)
        ).fetchall()


def relay(app: App, **kw: Any) -> CdrRelay:
    assert app.redis is not None and app.database is not None
    return CdrRelay(app.redis, CdrStore(app.database), app.clock, documents=DOCUMENTS, **kw)


def catalog(version: str) -> str:
    doc = dict(read_catalog_file(""))
    doc["version"] = version
    return json.dumps(doc)


async def crash_between_commit_and_trim(app: App) -> None:
    async def crash() -> None:
        raise RuntimeError("stopped between the commit and the trim")

    with pytest.raises(RuntimeError):
        crashing = relay(app, after_commit=crash)
        await crashing.scan()
        await crashing.relay_waiting()


async def test_a_catalog_load_and_its_audit_entry_are_one_step(
    app: App, stubs: Stubs, r: redis.Redis, database_url: str
) -> None:
    quiet(app)
    assert not r.exists(keys.CATALOG_RECORDS)  # the bundled sample a new store starts with: no change made
    await stubs.admin.LoadCatalog(admin_pb2.CatalogDocument(json=catalog("audited-2")))
    # The step: the catalog current and its entry in the catalog's outbox, together.
    assert r.get(keys.CATALOG_CURRENT) == "audited-2"
    assert r.llen(keys.CATALOG_RECORDS) == 1
    assert await asyncio.to_thread(audit_rows, database_url, "catalog") == []
    # A relay committed the entry and died before the trim; the next one finds it by name.
    await crash_between_commit_and_trim(app)
    assert r.llen(keys.CATALOG_RECORDS) == 1
    fresh = relay(app)
    assert await fresh.relay_waiting() == 1  # its scan found the catalog's outbox
    assert audit_rows(database_url, "catalog") == [("local", "catalog_load", {"version": "audited-2"})]
    assert not r.exists(keys.CATALOG_RECORDS)


async def test_a_catalog_whose_entry_cannot_be_written_is_not_loaded(
    app: App, stubs: Stubs, r: redis.Redis, database_url: str
) -> None:
    quiet(app)
    before = r.get(keys.CATALOG_CURRENT)
    r.set(keys.CATALOG_RECORDS, "not a list")  # the push fails: the switch must not happen
    with pytest.raises(grpc.aio.AioRpcError):
        await stubs.admin.LoadCatalog(admin_pb2.CatalogDocument(json=catalog("unaudited-1")))
    assert r.get(keys.CATALOG_CURRENT) == before
    assert not r.exists(f"{keys.CATALOG}:v:unaudited-1")  # the refused version left no trace
    r.delete(keys.CATALOG_RECORDS)
    await stubs.admin.LoadCatalog(admin_pb2.CatalogDocument(json=catalog("unaudited-1")))  # now it loads
    assert r.get(keys.CATALOG_CURRENT) == "unaudited-1"
    await drain(relay(app))
    assert [row[2] for row in audit_rows(database_url, "catalog")] == [{"version": "unaudited-1"}]


async def test_a_coverage_load_and_its_audit_entry_are_one_step(
    app: App, crm: crm_pb2_grpc.CrmStub, r: redis.Redis, database_url: str
) -> None:
    quiet(app)
    table = resources.files("provisioning").joinpath("coverage.json").read_text()
    outbox = records_key(COVERAGE)
    r.set(outbox, "not a list")
    with pytest.raises(grpc.aio.AioRpcError):
        await crm.LoadCoverage(crm_pb2.CoverageDocument(json=table))
    assert r.get(f"{COVERAGE}:current") is None and not r.keys(f"{COVERAGE}:v:*")  # neither
    r.delete(outbox)
    loaded = await crm.LoadCoverage(crm_pb2.CoverageDocument(json=table))
    assert r.get(f"{COVERAGE}:current") == str(loaded.version)
    assert r.llen(outbox) == 1
    await crash_between_commit_and_trim(app)
    await drain(relay(app))
    assert audit_rows(database_url, "coverage") == [("local", "coverage_load", {"version": str(loaded.version)})]
    assert not r.exists(outbox)


async def test_an_order_decision_and_its_audit_entry_are_one_step(
    app: App, crm: crm_pb2_grpc.CrmStub, r: redis.Redis, database_url: str, clock: ManualClock
) -> None:
    quiet(app)
    outbox = provisioning_keys.ORDER_RECORDS
    r.set(outbox, "not a list")  # the entry cannot be written: the order must not be decided
    with pytest.raises(grpc.aio.AioRpcError):
        await crm.SubmitApplication(application("audited-order"))
    assert r.zscore(provisioning_keys.SUBMITTED, "audited-order") is not None  # still to be run
    r.delete(outbox)
    clock.advance(ms=ORDER_LEASE_MS + 1)  # the failed run's lease has passed: the order is resumed
    order = await crm.SubmitApplication(application("audited-order"))
    assert order.status == crm_pb2.ORDER_STATUS_IN_PROGRESS and r.llen(outbox) == 1
    await crash_between_commit_and_trim(app)
    await drain(relay(app))
    details = {"status": "IN_PROGRESS", "customer_id": order.customer_id, "account_id": order.account_id}
    rows = audit_rows(database_url, "order:audited-order")
    assert [(actor, action) for actor, action, _ in rows] == [("local", "order_decided")]
    assert {k: rows[0][2][k] for k in details} == details
    assert not r.exists(outbox)


async def test_the_operators_catalog_file_is_audited_when_it_changes_the_catalog_in_force(
    app: App, settings: Settings, clock: ManualClock, r: redis.Redis, database_url: str, tmp_path: Path
) -> None:
    quiet(app)
    path = tmp_path / "catalog.json"
    path.write_text(catalog("from-file-1"))
    with_file = replace(settings, catalog_file=str(path))
    for _ in range(2):  # the second start finds the file's version in force: nothing changed
        again = App(with_file, clock=clock, run_background=False)
        await again.start()
        await again.stop()
    assert r.get(keys.CATALOG_CURRENT) == "from-file-1"
    await drain(relay(app))  # what the servers' own relays had not moved yet
    rows = await asyncio.to_thread(audit_rows, database_url, "catalog")
    assert rows == [(f"server:{path}", "catalog_load", {"version": "from-file-1"})]
