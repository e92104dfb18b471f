"""The schema: migrations apply from nothing, again without effect, and back; a server
refuses a database whose schema is not the one its code expects; `charging migrate`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import replace
from urllib.parse import urlsplit

import psycopg
import pytest

from charging import migrations
from charging.clock import ManualClock
from charging.server import App
from charging.settings import Settings

SCHEMA = """
SELECT c.relname, c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' ORDER BY 1
"""


def schema(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        return [(str(name), str(kind)) for name, kind in conn.execute(SCHEMA).fetchall()]


def test_migrations_apply_from_nothing_again_and_back(empty_database_url: str) -> None:
    assert schema(empty_database_url) == []
    migrations.upgrade(empty_database_url)
    tables = {name for name, kind in schema(empty_database_url) if kind in ("r", "p")}
    assert {"usage_records", "audit", "invoices", "invoice_numbers", "alembic_version"} <= tables
    first = schema(empty_database_url)
    migrations.upgrade(empty_database_url)  # nothing left to do
    assert schema(empty_database_url) == first
    migrations.downgrade(empty_database_url)
    assert [name for name, _ in schema(empty_database_url)] == ["alembic_version", "alembic_version_pkc"]
    migrations.upgrade(empty_database_url)
    assert schema(empty_database_url) == first


async def test_a_server_refuses_an_unmigrated_database_unless_told_to_migrate(
    settings: Settings, clock: ManualClock, empty_database_url: str
) -> None:
    refused = App(replace(settings, database_url=empty_database_url), clock=clock, run_background=False)
    with pytest.raises(RuntimeError, match="charging migrate"):
        await refused.start()
    await refused.stop()
    migrating = App(
        replace(settings, database_url=empty_database_url, database_migrate=True), clock=clock, run_background=False
    )
    await migrating.start()
    try:
        assert migrating.database is not None
        async with migrating.database.connection() as conn:
            assert await migrations.current(conn) == migrations.head()
    finally:
        await migrating.stop()


def test_charging_migrate_brings_the_configured_database_up_to_date(empty_database_url: str) -> None:
    env = {**os.environ, "CHARGING_DATABASE_URL": empty_database_url}
    done = subprocess.run(
        [sys.executable, "-m", "charging.cli", "migrate"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"revision": migrations.head()}
    password = urlsplit(empty_database_url).password
    assert password and password not in done.stderr

    async def revision() -> str | None:
        async with await psycopg.AsyncConnection.connect(empty_database_url) as conn:
            return await migrations.current(conn)

    assert asyncio.run(revision()) == migrations.head()
