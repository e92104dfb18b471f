"""Catalog and coverage versions in PostgreSQL: each version applied is pushed to the
store's history outbox in the Redis step that applies it, relayed into
``document_versions`` once (a crash between the relay's commit and its trim repeats
nothing), versions Redis stored without a row are moved once, and a usage record names
the catalog version it was rated with, which ``charging catalog show`` prints back."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from asyncio.subprocess import PIPE
from datetime import UTC, datetime
from typing import Any

import grpc
import psycopg
import pytest
import redis

from charging import keys
from charging.catalogs import read_catalog_file
from charging.cdr_relay import CdrRelay, drain
from charging.cdr_store import CdrStore
from charging.cdrs import at
from charging.clock import ManualClock
from charging.document_history import VersionRow, moved_key
from charging.documents import Author, canonical
from charging.history_store import SOURCES, DocumentSource, HistoryStore, move_stored
from charging.server import App
from charging.v1 import admin_pb2
from provisioning.coverage import STORE as COVERAGE
from tests.conftest import Stubs, quiet, sms_request
from tests.test_cdrs import call
from tests.test_document_audit import DOCUMENTS

CATALOG = SOURCES[0]


def relay(app: App, **kw: Any) -> CdrRelay:
    assert app.redis is not None and app.database is not None
    history = HistoryStore(app.database, SOURCES)
    return CdrRelay(app.redis, CdrStore(app.database), app.clock, documents=DOCUMENTS, history=history, **kw)


def catalog(version: str) -> dict[str, Any]:
    return {**read_catalog_file(""), "version": version}


def version_rows(database_url: str, document: str) -> list[dict[str, Any]]:
    with psycopg.connect(database_url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute("SELECT * FROM document_versions WHERE document = %s ORDER BY applied_at, entry_id", (document,))
        return cur.fetchall()


def sha(doc: Any) -> str:
    return hashlib.sha256(canonical(doc).encode()).hexdigest()


async def history_cli(database_url: str, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "CHARGING_DATABASE_URL": database_url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "charging.cli", *args, env=env, stdout=PIPE, stderr=PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_catalog_applied_is_one_redis_step_and_one_row(
    app: App, stubs: Stubs, r: redis.Redis, database_url: str, clock: ManualClock
) -> None:
    quiet(app)
    bundled = str(r.get(keys.CATALOG_CURRENT))
    # The start recorded the bundled sample it began with (no one's change: no actor).
    assert [(v["version"], v["actor"], v["replaced"]) for v in version_rows(database_url, "catalog")] == [
        (bundled, "", "")
    ]
    doc = catalog("history-1")
    clock.advance(seconds=60)
    await stubs.admin.LoadCatalog(admin_pb2.CatalogDocument(json=json.dumps(doc)))
    # The step: current, the audit entry and the version applied, together in Redis.
    assert r.get(keys.CATALOG_CURRENT) == "history-1"
    assert (r.llen(keys.CATALOG_RECORDS), r.llen(keys.CATALOG_HISTORY)) == (1, 1)

    async def crash() -> None:
        raise RuntimeError("stopped between the commit and the trim")

    crashing = relay(app, after_commit=crash)
    await crashing.scan()
    with pytest.raises(RuntimeError):
        await crashing.relay_waiting()
    assert r.llen(keys.CATALOG_HISTORY) == 1  # committed, not trimmed
    fresh = relay(app)
    assert await fresh.relay_waiting() == 2  # its scan found both outboxes by name; nothing doubled
    assert not r.exists(keys.CATALOG_HISTORY)
    rows = version_rows(database_url, "catalog")
    assert len(rows) == 2
    row = rows[-1]
    assert (row["version"], row["actor"], row["replaced"]) == ("history-1", "local", bundled)
    assert row["content"] == doc and row["digest"] == sha(doc)
    assert row["applied_at"] == datetime.fromtimestamp(clock.now_ms() / 1000, UTC)

    # Loading the version in force again applies nothing new; going back to the bundled
    # one is an application of its own.
    await stubs.admin.LoadCatalog(admin_pb2.CatalogDocument(json=json.dumps(doc)))
    assert r.llen(keys.CATALOG_HISTORY) == 0
    clock.advance(seconds=60)
    await stubs.admin.LoadCatalog(admin_pb2.CatalogDocument(json=json.dumps(catalog(bundled))))
    await drain(relay(app))
    assert [(v["version"], v["replaced"]) for v in version_rows(database_url, "catalog")][1:] == [
        ("history-1", bundled),
        (bundled, "history-1"),
    ]


async def test_a_switch_whose_history_cannot_be_written_changes_nothing(app: App, stubs: Stubs, r: redis.Redis) -> None:
    quiet(app)
    before = r.get(keys.CATALOG_CURRENT)
    r.set(keys.CATALOG_HISTORY, "not a list")
    with pytest.raises(Exception, match="not a list"):
        assert app.catalogs is not None
        await app.catalogs.load(catalog("never-1"), Author("test", 0))
    assert r.get(keys.CATALOG_CURRENT) == before
    assert not r.exists(keys.CATALOG_RECORDS)  # no audit entry without its version
    assert not r.exists("{catalog}:v:never-1")  # a refused version leaves nothing behind


async def test_coverage_tables_are_numbered_versions_with_what_they_replaced(
    app: App, r: redis.Redis, database_url: str, clock: ManualClock
) -> None:
    quiet(app)
    assert app.acquisition is not None
    book = app.acquisition.coverage
    first = {"home_country": "DE", "areas": [{"country": "DE", "postal_prefix": "", "access": ["PSTN"]}]}
    second = {"home_country": "DE", "areas": [{"country": "DE", "postal_prefix": "10", "access": ["FIBER"]}]}
    await book.load(first, Author("crm:alice", clock.now_ms()))
    clock.advance(seconds=60)
    await book.load(second, Author("crm:bob", clock.now_ms()))
    assert r.llen(book.history_key) == 2
    await drain(relay(app))
    rows = version_rows(database_url, "coverage")
    assert [(v["version"], v["replaced"], v["actor"], v["content"]) for v in rows] == [
        ("1", "", "crm:alice", first),
        ("2", "1", "crm:bob", second),
    ]
    assert [v["digest"] for v in rows] == [sha(first), sha(second)]


async def test_versions_stored_before_the_history_are_moved_once(
    app: App, r: redis.Redis, database_url: str, clock: ManualClock
) -> None:
    quiet(app)
    assert app.catalogs is not None and app.redis is not None and app.database is not None
    await app.catalogs.load(catalog("old-1"))  # no author: as a version stored before 0011
    await app.catalogs.load(catalog("old-2"), Author("ops", clock.now_ms()))  # still in the outbox
    assert not [v for v in version_rows(database_url, "catalog") if v["version"].startswith("old-")]
    # The start moved what was stored then (the bundled sample) and set the marker; an
    # upgraded installation has no marker yet.
    assert r.exists(moved_key(keys.CATALOG))
    r.delete(moved_key(keys.CATALOG))
    moved = await move_stored(app.redis, app.database, CATALOG, clock.now_ms())
    assert moved == 1  # old-1; old-2 is the relay's (its entry is in the history outbox)
    assert r.exists(moved_key(keys.CATALOG))
    r.delete(moved_key(keys.CATALOG))  # as if it had stopped before its marker: run again whole
    assert await move_stored(app.redis, app.database, CATALOG, clock.now_ms()) == 0  # nothing twice
    await drain(relay(app))
    assert await move_stored(app.redis, app.database, CATALOG, clock.now_ms()) == 0
    rows = {v["version"]: v for v in version_rows(database_url, "catalog")}
    assert (rows["old-1"]["actor"], rows["old-1"]["content"]) == ("", catalog("old-1"))
    assert (rows["old-2"]["actor"], rows["old-2"]["replaced"]) == ("ops", "old-1")
    # Coverage: none stored, none moved.
    assert await move_stored(app.redis, app.database, DocumentSource(COVERAGE, "coverage"), 0) == 0


async def test_a_usage_record_names_the_catalog_that_priced_it(
    app: App, stubs: Stubs, r: redis.Redis, database_url: str, clock: ManualClock
) -> None:
    """Which prices applied to a call months ago: the record's catalog version, then that
    version's document from the database."""
    quiet(app)
    account = (await stubs.subscriber(balance=10_000_000)).account_id
    priced_by = catalog("priced-1")
    clock.advance(seconds=60)
    await stubs.admin.LoadCatalog(admin_pb2.CatalogDocument(json=json.dumps(priced_by)))
    await call(stubs, "call-1", [60])
    assert (await stubs.charging.ChargeEvent(sms_request("sms-1"))).result_code == 2001
    clock.advance(seconds=60)
    await stubs.admin.LoadCatalog(admin_pb2.CatalogDocument(json=json.dumps(catalog("later-1"))))
    await drain(relay(app))
    with psycopg.connect(database_url) as conn:
        found = conn.execute(
            "SELECT service, catalog_version FROM usage_records WHERE account = %s ORDER BY service", (account,)
        )
        assert found.fetchall() == [("sms", "priced-1"), ("voice", "priced-1")]

    code, out, err = await history_cli(database_url, "catalog", "show", "priced-1")
    assert code == 0, err
    assert out == canonical(priced_by) + "\n"
    code, out, err = await history_cli(database_url, "catalog", "history", "--limit", "2")
    assert code == 0, err
    listed = [json.loads(line) for line in out.splitlines()]
    assert [(v["version"], v["replaced"], v["actor"]) for v in listed] == [
        ("later-1", "priced-1", "local"),
        ("priced-1", str(read_catalog_file("")["version"]), "local"),
    ]
    assert listed[1]["digest"] == sha(priced_by)
    code, _, err = await history_cli(database_url, "catalog", "show", "never-applied")
    assert code == 1 and "no catalog version 'never-applied'" in err


def test_the_server_role_appends_versions_and_never_changes_them(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO document_versions (entry_id, document, version, digest, content, applied_at) "
            "VALUES ('catalog:1', 'catalog', 'v1', 'x', '{}', now())"
        )
        for statement in ("UPDATE document_versions SET actor = 'me'", "DELETE FROM document_versions"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        assert conn.execute("SELECT actor FROM document_versions").fetchall() == [("",)]


async def test_the_admin_api_lists_versions_and_returns_one_redis_no_longer_has(
    app: App, stubs: Stubs, database_url: str, clock: ManualClock
) -> None:
    quiet(app)
    clock.advance(seconds=60)
    await stubs.admin.LoadCatalog(admin_pb2.CatalogDocument(json=json.dumps(catalog("listed-1"))))
    await drain(relay(app))
    listed = await stubs.admin.ListCatalogVersions(admin_pb2.CatalogVersionsQuery(limit=1))
    assert [(v.version, v.actor, v.digest) for v in listed.versions] == [
        ("listed-1", "local", sha(catalog("listed-1")))
    ]
    assert listed.versions[0].applied_at == datetime.fromtimestamp(clock.now_ms() / 1000, UTC).isoformat().replace(
        "+00:00", "Z"
    )
    assert len((await stubs.admin.ListCatalogVersions(admin_pb2.CatalogVersionsQuery())).versions) == 2
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stubs.admin.ListCatalogVersions(admin_pb2.CatalogVersionsQuery(limit=1001))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "limit" in str(refused.value.details())

    # A version only the system of record still has (applied elsewhere, long ago).
    archived = catalog("archived-1")
    assert app.database is not None
    await HistoryStore(app.database).write(
        [VersionRow("catalog:a", "catalog", "archived-1", sha(archived), canonical(archived), "", "ops", at("0"))]
    )
    got = await stubs.admin.GetCatalog(admin_pb2.GetCatalogRequest(version="archived-1"))
    assert json.loads(got.json) == archived
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stubs.admin.GetCatalog(admin_pb2.GetCatalogRequest(version="never-1"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
