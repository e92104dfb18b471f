"""The analysts' views on usage records (migration 0007): the customer base and its churn
per month, usage per subscriber and day. Real requests over four months of the test
clock, relayed into a real PostgreSQL, read by a member of the reader role."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from charging.cdr_relay import drain
from charging.clock import ManualClock
from charging.server import App
from tests.conftest import PostgresServer, Stubs, set_time, sms_request
from tests.test_cdrs import app, relay_of, usage_rows

__all__ = ["app"]  # the fixture

A, B, C = "491700000011", "491700000012", "491700000013"


@pytest.fixture
def analyst_url(database_url: str, postgres_server: PostgresServer) -> Iterator[str]:
    """A login of the reader role (charging_reader), as an analyst gets one (made by the
    owner: the server's own role may not make roles)."""
    name, password = f"analyst_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    owner = postgres_server.owner_of(database_url)
    with psycopg.connect(owner, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}' IN ROLE charging_reader")
    yield psycopg.conninfo.make_conninfo(database_url, user=name, password=password)
    with psycopg.connect(owner, autocommit=True) as admin:
        admin.execute(f"DROP ROLE {name}")


def read(url: str, sql: str) -> list[dict[str, Any]]:
    with psycopg.connect(url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(sql)
        return list(cur.fetchall())


async def test_base_churn_and_daily_usage_from_real_records(
    app: App, stubs: Stubs, clock: ManualClock, database_url: str, analyst_url: str
) -> None:
    accounts = {m: (await stubs.subscriber(msisdn=m, balance=10_000_000)).account_id for m in (A, B, C)}
    n = 0

    async def sms(msisdn: str) -> None:
        nonlocal n
        n += 1
        assert (await stubs.charging.ChargeEvent(sms_request(f"sms-{n}", msisdn=msisdn))).result_code == 2001

    set_time(clock, "2026-01-05T10:00:00+00:00")
    await sms(A)
    await sms(A)
    await sms(B)
    set_time(clock, "2026-01-06T23:59:59+00:00")
    await sms(A)
    set_time(clock, "2026-02-10T12:00:00+00:00")
    await sms(A)  # B churns in February
    set_time(clock, "2026-03-01T00:00:00+00:00")
    await sms(B)  # B comes back, C is new, A churns
    await sms(C)
    await drain(relay_of(app))  # and nobody uses anything in April

    base = read(analyst_url, "SELECT * FROM customer_base_per_period")
    assert [(r["month"], r["active_accounts"], r["new_accounts"], r["churned_accounts"], r["churn_percent"])
            for r in base] == [
        (date(2026, 1, 1), 2, 2, 0, None),
        (date(2026, 2, 1), 1, 0, 1, Decimal("50.00")),
        (date(2026, 3, 1), 2, 1, 1, Decimal("100.00")),
        (date(2026, 4, 1), 0, 0, 2, Decimal("100.00")),
    ]  # fmt: skip

    daily = read(analyst_url, "SELECT * FROM usage_per_subscriber_day ORDER BY day, msisdn")
    assert [(r["day"], r["msisdn"], r["service"], r["records"], r["units"]) for r in daily] == [
        (date(2026, 1, 5), A, "sms", 2, 2),
        (date(2026, 1, 5), B, "sms", 1, 1),
        (date(2026, 1, 6), A, "sms", 1, 1),
        (date(2026, 2, 10), A, "sms", 1, 1),
        (date(2026, 3, 1), B, "sms", 1, 1),
        (date(2026, 3, 1), C, "sms", 1, 1),
    ]
    # The day's money is the sum of the line's records that day.
    rows = usage_rows(database_url, accounts[A])
    jan5 = [u for u in rows if u["occurred_at"].date() == date(2026, 1, 5)]
    assert daily[0]["cost_micros"] == sum(u["cost_micros"] for u in jan5) > 0
    assert daily[0]["money_micros"] == sum(u["money_micros"] for u in jan5)
    assert daily[0]["account"] == accounts[A]
