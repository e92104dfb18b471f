"""The server's database role: a member of charging_app that reads and appends, changes
in place only the gapless counters, and owns nothing; the migrations run as the owner.

The billing, receivables and usage-record tests run as this role too (the ``database_url``
and ``app_database_url`` fixtures connect as it): what they do is what the server needs.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from charging import database_roles, migrations
from charging.clock import ManualClock
from charging.migrations.versions import v0009_server_role, v0012_customers
from charging.server import App
from charging.settings import Settings
from tests.conftest import PostgresServer

AUDIT_ROW = "INSERT INTO audit (occurred_at, actor, action, subject) VALUES (now(), 'crm:alice', 'topup', 'account:1')"
INVOICE_ROW = (
    "INSERT INTO invoices (issuer, series, number, invoice_id, billing_account, period_start, period_end, "
    "issued_at, due_date, currency, total_minor, tax_minor, document) VALUES ('op', 'INV', "
    "next_invoice_number('op', 'INV'), 'inv-1', 'ba-1', '2026-10-01', '2026-10-31', now(), '2026-11-30', "
    "'EUR', 1190, 190, '{}')"
)
# What the server's role must never do to what it wrote (each in a transaction of its own).
REFUSED = [
    "UPDATE audit SET reason = 'rewritten'",
    "DELETE FROM audit",
    "TRUNCATE audit",
    "UPDATE invoices SET total_minor = 0",
    "DELETE FROM invoices",
    "TRUNCATE invoices",
    "UPDATE invoice_charges SET amount_minor = 0",
    "DELETE FROM payments",
    "UPDATE credit_notes SET amount_minor = 0",
    "DELETE FROM usage_records",
    "DELETE FROM invoice_numbers",
    "ALTER TABLE audit DISABLE TRIGGER audit_immutable",
    "ALTER TABLE invoices DISABLE TRIGGER USER",
    "DROP TABLE audit",
    "CREATE TABLE mine (x int)",
    "INSERT INTO alembic_version VALUES ('9999')",
    "UPDATE alembic_version SET version_num = '0001'",
]


def base_tables(conn: psycopg.Connection[tuple[object, ...]]) -> list[str]:
    rows = conn.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace "
        "AND relkind IN ('r', 'p') AND NOT relispartition ORDER BY 1"
    ).fetchall()
    return [str(name) for (name,) in rows]


def test_the_server_role_cannot_rewrite_or_delete_audit_entries_or_issued_invoices(
    database_url: str, postgres_server: PostgresServer
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (database_roles.SERVER_LOGIN,)
        conn.execute(AUDIT_ROW)  # what it needs: append, read, number, make partitions
        conn.execute(INVOICE_ROW)
        assert conn.execute("SELECT count(*) FROM audit").fetchone() == (1,)
        conn.execute("SELECT create_month_partitions('audit', '2040-01-01', '2040-02-01')")
        conn.execute("CREATE TEMPORARY TABLE batch (x int)")  # the relay COPYs through one
        for statement in REFUSED:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        assert conn.execute("SELECT reason FROM audit").fetchall() == [("",)]
        assert conn.execute("SELECT total_minor FROM invoices").fetchall() == [(1190,)]
    with psycopg.connect(postgres_server.owner_of(database_url)) as owner:
        # The partition made through the function belongs to the owner, not to the server.
        found = owner.execute("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'audit_y2040m01'")
        assert found.fetchone() == ("charging",)


COLUMNS = "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' AND table_name = %s"


def test_every_table_is_appendable_and_only_the_counters_change_in_place(
    database_url: str, postgres_server: PostgresServer
) -> None:
    app = database_roles.APP_ROLE
    with psycopg.connect(postgres_server.owner_of(database_url), autocommit=True) as owner:
        # A later migration's table (the owner makes it): covered by default privileges.
        owner.execute("CREATE TABLE later_table (id text PRIMARY KEY)")
        tables = base_tables(owner)
        assert {"audit", "invoices", "payments", "later_table"} <= set(tables)
        for table in tables:
            can = {
                p
                for p in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
                if owner.execute("SELECT has_table_privilege(%s, %s, %s)", (app, table, p)).fetchone() == (True,)
            }
            granted = {**v0009_server_role.IN_PLACE, **v0012_customers.IN_PLACE}.get(table, "")
            if table in ("alembic_version", "retention_floors"):  # the owner's alone to change
                assert can == {"SELECT"}, table
            elif granted.startswith("UPDATE ("):  # only the columns named may change in place
                assert can == {"SELECT", "INSERT"}, table
                named = {c.strip() for c in granted[len("UPDATE (") : -1].split(",")}
                columns = [r[0] for r in owner.execute(COLUMNS, (table,)).fetchall()]
                updatable = {
                    c
                    for c in columns
                    if owner.execute("SELECT has_column_privilege(%s, %s, %s, 'UPDATE')", (app, table, c)).fetchone()
                    == (True,)
                }
                assert updatable == named, table
            else:
                assert can == {"SELECT", "INSERT"} | ({granted} if granted else set()), table
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO later_table VALUES ('a')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM later_table")


async def test_make_run_s_embedded_database_serves_as_its_own_role(
    settings: Settings, clock: ManualClock, postgres_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = App(replace(settings, database_url="", database_dir=postgres_dir), clock=clock, run_background=False)
    caplog.set_level(logging.WARNING, logger="charging")
    await app.start()
    try:
        assert app.database is not None
        async with app.database.connection() as conn:
            row = await (
                await conn.execute("SELECT current_user, pg_has_role(current_user, %s, 'MEMBER')", ("charging_app",))
            ).fetchone()
            assert row == (database_roles.SERVER_LOGIN, True)
            assert await database_roles.owner_problem(conn) is None
        password = postgres_dir / "server_password"
        assert password.stat().st_mode & 0o777 == 0o600
    finally:
        await app.stop()
    assert "owns the schema" not in caplog.text


async def test_a_server_on_the_owner_s_role_is_warned(
    settings: Settings,
    clock: ManualClock,
    database_url: str,
    postgres_server: PostgresServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="charging")
    app = App(replace(settings, database_url=postgres_server.owner_of(database_url)), clock=clock, run_background=False)
    await app.start()
    await app.stop()
    assert "owns the schema" in caplog.text


def test_charging_migrate_runs_as_the_owner_of_the_migrate_url(
    empty_database_url: str, postgres_server: PostgresServer
) -> None:
    name = str(psycopg.conninfo.conninfo_to_dict(empty_database_url)["dbname"])
    server_url = postgres_server.app_url(name)
    env = {**os.environ, "CHARGING_DATABASE_URL": server_url}
    # The server's role may not make tables: migrating as it fails ...
    refused = subprocess.run(
        [sys.executable, "-m", "charging.cli", "migrate"], env=env, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode != 0
    # ... and the owner's URL beside it migrates.
    env["CHARGING_DATABASE_MIGRATE_URL"] = empty_database_url
    done = subprocess.run(
        [sys.executable, "-m", "charging.cli", "migrate"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"revision": migrations.head()}
    with psycopg.connect(server_url) as conn:
        conn.execute(AUDIT_ROW)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM audit")
