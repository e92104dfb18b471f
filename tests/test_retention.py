"""Monthly partitions made ahead and dropped past retention; immutable rows; gapless
invoice numbers. Against a real PostgreSQL, one migrated database per test."""

from __future__ import annotations

from datetime import date

import psycopg
import pytest

from charging import retention
from charging.database import open_pool
from charging.retention import Plan, Policy, add_months, months_to_keep
from tests.conftest import PostgresServer


@pytest.mark.parametrize(
    ("month", "months", "expected"),
    [
        (date(2026, 11, 1), 3, date(2027, 2, 1)),
        (date(2026, 1, 1), -1, date(2025, 12, 1)),
        (date(2026, 11, 1), -24, date(2024, 11, 1)),
        (date(2026, 12, 1), 1, date(2027, 1, 1)),
        (date(2026, 12, 1), 0, date(2026, 12, 1)),
    ],
)
def test_add_months(month: date, months: int, expected: date) -> None:
    assert add_months(month, months) == expected


@pytest.mark.parametrize(
    ("policy", "today", "expected"),
    [
        (
            Policy("usage_records", 24),
            date(2026, 11, 30),
            Plan("usage_records", date(2026, 11, 1), date(2027, 2, 1), date(2024, 11, 1)),
        ),
        (Policy("audit", 1), date(2026, 1, 1), Plan("audit", date(2026, 1, 1), date(2026, 4, 1), date(2025, 12, 1))),
        (Policy("audit", 0), date(2026, 1, 1), Plan("audit", date(2026, 1, 1), date(2026, 4, 1), None)),
    ],
)
def test_months_to_keep(policy: Policy, today: date, expected: Plan) -> None:
    assert months_to_keep(policy, today) == expected


def partitions(conn: psycopg.Connection[tuple[object, ...]], table: str) -> list[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass ORDER BY 1",
        (table,),
    ).fetchall()
    return [str(r[0]) for r in rows]


USAGE = (
    "INSERT INTO usage_records (record_id, occurred_at, account, service, unit, units, cost_micros) "
    "VALUES (%s, %s, 'A1', 'voice', 'time_s', 60, 100000) ON CONFLICT DO NOTHING"
)


async def test_partitions_are_made_ahead_and_dropped_past_retention(
    database_url: str, postgres_server: PostgresServer
) -> None:
    # This test's clock runs years ahead of the database's: the owner removes the floors
    # (retention_floors, measured by the database's own clock; see the next test).
    with psycopg.connect(postgres_server.owner_of(database_url), autocommit=True) as owner:
        owner.execute("DELETE FROM retention_floors")
    pool = await open_pool(database_url, 2)
    try:
        policies = [Policy("usage_records", 12), Policy("audit", 0)]
        made = await retention.maintain(pool, policies, date(2031, 6, 15))
        # Made: June to September 2031; dropped: the months the migration made, years ago.
        assert made == {"usage_records": (4, 4), "audit": (4, 0)}
        assert await retention.maintain(pool, policies, date(2031, 6, 15)) == {
            "usage_records": (0, 0),
            "audit": (0, 0),
        }
        with psycopg.connect(database_url, autocommit=True) as conn:
            names = partitions(conn, "usage_records")
            assert {f"usage_records_y2031m{m:02}" for m in (6, 7, 8, 9)} <= set(names)
            # A month without a partition takes no row: hence the months made ahead.
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute(USAGE, ("r0", "2031-11-01T00:00:00Z"))
            # UTC months: 23:30 on 31 May in UTC-2 is 1 June UTC.
            conn.execute(USAGE, ("r1", "2031-05-31T23:30:00-02:00"))
            assert conn.execute("SELECT tableoid::regclass::text FROM usage_records").fetchone() == (
                "usage_records_y2031m06",
            )
            conn.execute(USAGE, ("r1", "2031-05-31T23:30:00-02:00"))  # delivered twice, kept once
            assert conn.execute("SELECT count(*) FROM usage_records").fetchone() == (1,)
        # A year later, June 2031 is past 12 months of retention.
        made = await retention.maintain(pool, policies, date(2032, 7, 1))
        assert made["usage_records"][1] > 0 and made["audit"][1] == 0
        with psycopg.connect(database_url, autocommit=True) as conn:
            names = partitions(conn, "usage_records")
            assert min(names) == "usage_records_y2031m07"
            assert "usage_records_y2032m10" in names
            assert conn.execute("SELECT count(*) FROM usage_records").fetchone() == (0,)
            assert "audit_y2031m06" in partitions(conn, "audit")  # 0: kept
    finally:
        await pool.close()


IMMUTABLE = [
    (
        "audit",
        "INSERT INTO audit (occurred_at, actor, action, subject, reason) "
        "VALUES (now(), 'operator:7', 'adjustment.added', 'billing_account:C1', 'goodwill')",
    ),
    ("usage_records", USAGE.replace("%s, %s", "'r1', now()")),
    (
        "invoices",
        "INSERT INTO invoices (issuer, series, number, invoice_id, billing_account, period_start, period_end, "
        "issued_at, due_date, currency, total_minor, tax_minor, document) VALUES ('op', 'INV', "
        "next_invoice_number('op', 'INV'), 'INV-00000001', 'C1', '2026-10-01', '2026-10-31', now(), "
        "'2026-11-14', 'EUR', 2975, 475, '{}')",
    ),
]


def test_records_cannot_be_changed_or_deleted(database_url: str, postgres_server: PostgresServer) -> None:
    # As the owner: the triggers hold even for it (the server's role is refused before
    # them, by privilege: tests/test_database_roles.py).
    with psycopg.connect(postgres_server.owner_of(database_url), autocommit=True) as conn:
        for table, insert in IMMUTABLE:
            conn.execute(insert)
            assert_immutable(conn, table)


def assert_immutable(conn: psycopg.Connection[tuple[object, ...]], table: str) -> None:
    column = {"audit": "reason", "usage_records": "service", "invoices": "currency"}[table]
    for change in (f"UPDATE {table} SET {column} = 'x'", f"DELETE FROM {table}", f"TRUNCATE {table}"):
        with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="immutable"):
            conn.execute(change)
    assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)


def test_invoice_numbers_have_no_gaps(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        take = "SELECT next_invoice_number('op', 'INV')"
        assert conn.execute(take).fetchone() == (1,)
        conn.rollback()  # the invoice was not issued: its number goes back
        assert conn.execute(take).fetchone() == (1,)
        conn.commit()
        assert conn.execute(take).fetchone() == (2,)
        assert conn.execute("SELECT next_invoice_number('op', 'CN')").fetchone() == (1,)  # a series of its own
        conn.commit()


async def test_the_server_cannot_drop_a_month_the_floor_keeps(database_url: str) -> None:
    """The server's role asks for everything before a month far ahead to be dropped (as a
    server taken over might): the function keeps the floor's months, by the database's
    own clock, and the role cannot lower the floor."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        this_month = conn.execute("SELECT date_trunc('month', now() AT TIME ZONE 'UTC')::date").fetchone()
        assert this_month is not None
        before = set(partitions(conn, "audit"))
        assert conn.execute("SELECT drop_month_partitions('audit', '2100-01-01')").fetchone() == (0,)
        assert conn.execute("SELECT drop_month_partitions('usage_records', '2100-01-01')").fetchone() == (0,)
        assert set(partitions(conn, "audit")) == before
        assert f"audit_y{this_month[0].year}m{this_month[0].month:02}" in before
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE retention_floors SET months = 0")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM retention_floors")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO retention_floors VALUES ('another', 0)")
