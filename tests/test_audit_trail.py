"""The audit trail: append-only rows in PostgreSQL, queried by subject, actor and time in
pages; Admin changes (status, catalog) recorded with the caller; the Admin method to read
it. Against a real PostgreSQL and a real server."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import psycopg
import pytest

from charging.audit_trail import AuditEntry, AuditQuery, AuditTrail, Position
from charging.catalogs import read_catalog_file
from charging.clock import ManualClock
from charging.database import open_pool
from charging.errors import InvalidRequest
from charging.server import App
from charging.settings import Settings
from charging.v1 import admin_pb2, common_pb2
from tests.conftest import Stubs

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def test_page_token_round_trip() -> None:
    position = Position(T0, "e-7")
    assert Position.from_token(position.token()) == position


@pytest.mark.parametrize("token", ["!!", "bm90IGEgdG9rZW4", Position(T0.replace(tzinfo=None), "x").token()])
def test_a_foreign_page_token_names_the_field(token: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        Position.from_token(token)
    assert err.value.field == "page_token"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({}, "subject"),
        ({"subject": "5", "start": T0, "end": T0}, "to"),
        ({"subject": "5", "page_size": 0}, "page_size"),
        ({"subject": "5", "page_size": 1001}, "page_size"),
    ],
)
def test_a_query_too_wide_or_empty_is_refused(fields: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        AuditQuery(**fields)  # type: ignore[arg-type]
    assert err.value.field == field


def test_the_where_clause_names_each_condition_once() -> None:
    where, params = AuditQuery(subject="5", actor="token:shop", start=T0, after=Position(T0, "a")).where()
    assert where == "subject = %s AND actor = %s AND occurred_at >= %s AND (occurred_at, entry_id) > (%s, %s)"
    assert params == ["5", "token:shop", T0, T0, "a"]


def entry(n: int, subject: str = "5", actor: str = "local", minutes: int = 0) -> AuditEntry:
    return AuditEntry(f"e{n:03d}", T0 + timedelta(minutes=minutes), actor, "topup", subject, "", {"amount": n})


async def test_entries_page_in_order_and_an_entry_is_inserted_once(database_url: str) -> None:
    pool = await open_pool(database_url, 2)
    try:
        trail = AuditTrail(pool)
        for n in range(7):
            await trail.record(entry(n, minutes=n))
        await trail.record(entry(3, minutes=3))  # the relay ran twice: still one row
        await trail.record(entry(50, subject="6", actor="token:shop", minutes=1))
        seen: list[str] = []
        token = ""
        while True:
            page = await trail.query(
                AuditQuery(subject="5", page_size=3, after=Position.from_token(token) if token else None)
            )
            seen += [e.entry_id for e in page.entries]
            token = page.next_token
            if not token:
                break
        assert seen == [f"e{n:03d}" for n in range(7)]
        by_actor = await trail.query(AuditQuery(actor="token:shop"))
        assert [(e.subject, e.details) for e in by_actor.entries] == [("6", {"amount": 50})]
        window = await trail.query(
            AuditQuery(subject="5", start=T0 + timedelta(minutes=2), end=T0 + timedelta(minutes=4))
        )
        assert [e.entry_id for e in window.entries] == ["e002", "e003"]
    finally:
        await pool.close()
    with psycopg.connect(database_url) as conn, pytest.raises(psycopg.Error):
        conn.execute("UPDATE audit SET reason = 'rewritten' WHERE entry_id = 'e001'")


@pytest.fixture
async def audited(settings: Settings, database_url: str, clock: ManualClock) -> AsyncIterator[Stubs]:
    clock.advance(ms=int(T0.timestamp() * 1000) - clock.now_ms())
    application = App(dataclasses.replace(settings, database_url=database_url), clock=clock, run_background=False)
    await application.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{application.grpc_port}")
    yield Stubs.on(channel)
    await channel.close()
    await application.stop()


async def test_admin_changes_are_audited_with_the_caller_and_read_back(audited: Stubs, clock: ManualClock) -> None:
    sub = await audited.subscriber()
    await audited.admin.SetSubscriberStatus(
        admin_pb2.SetStatusRequest(
            subscriber=common_pb2.SubscriberId(msisdn=sub.msisdn), status=admin_pb2.SUBSCRIBER_STATUS_BARRED
        )
    )
    clock.advance(seconds=1)  # entries of one instant are ordered by id, which is random
    doc = dict(read_catalog_file(""))
    doc["version"] = "audited-1"
    await audited.admin.LoadCatalog(admin_pb2.CatalogDocument(json=json.dumps(doc)))

    # The status change and its entry were written together to Redis (the record outbox);
    # the relay moves the entry into PostgreSQL.
    # So is the catalog's load, through the catalog's own record outbox (documents.py).
    subject = "account:" + sub.account_id
    page = await audited.admin.ListAuditEntries(admin_pb2.AuditQuery(subject=subject))
    for _ in range(200):
        loaded = await audited.admin.ListAuditEntries(admin_pb2.AuditQuery(subject="catalog"))
        if page.entries and loaded.entries:
            break
        await asyncio.sleep(0.05)
        page = await audited.admin.ListAuditEntries(admin_pb2.AuditQuery(subject=subject))
    [status] = page.entries
    assert (status.actor, status.action) == ("local", "status_change")
    assert json.loads(status.details_json) == {"status": "barred"}
    assert datetime.fromisoformat(status.occurred_at) == T0
    by_time = await audited.admin.ListAuditEntries(
        admin_pb2.AuditQuery(actor="local", page_size=1, **{"from": T0.isoformat()})
    )
    assert [e.action for e in by_time.entries] == ["status_change"] and by_time.next_page_token
    rest = await audited.admin.ListAuditEntries(admin_pb2.AuditQuery(actor="local", page_token=by_time.next_page_token))
    [catalog] = rest.entries
    assert (catalog.action, json.loads(catalog.details_json)) == ("catalog_load", {"version": "audited-1"})
    assert rest.next_page_token == ""


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (admin_pb2.AuditQuery(), "subject"),
        (admin_pb2.AuditQuery(subject="5", **{"from": "yesterday"}), "from"),
        (admin_pb2.AuditQuery(subject="5", to="2026-11-30T12:00:00"), "to"),
        (admin_pb2.AuditQuery(subject="5", page_token="%%%"), "page_token"),
        (admin_pb2.AuditQuery(subject="5", page_size=5000), "page_size"),
    ],
)
async def test_a_bad_audit_query_names_its_field(audited: Stubs, query: admin_pb2.AuditQuery, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await audited.admin.ListAuditEntries(query)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(field + ":")
