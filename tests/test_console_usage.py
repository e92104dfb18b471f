"""Recent usage on the console's customer page, read from PostgreSQL's ``usage_records``
(rows inserted here as the CDR relay writes them, with the migration's columns): the
newest 20 of each line, newest first, only the line's own account's records, shown only
to roles that see personal data."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from charging.clock import ManualClock
from charging.server import App
from charging.settings import Settings
from console.customers import USAGE_PER_LINE, recent_usage
from tests.console_client import Desk, add_staff, console_app
from tests.test_console import apply_and_activate

RECORD = (
    "INSERT INTO usage_records (record_id, occurred_at, account, msisdn, service, unit, units, cost_micros) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
)
START = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)


@pytest.fixture
async def console(settings: Settings, clock: ManualClock) -> AsyncIterator[App]:
    app = await console_app(settings, clock)
    yield app
    await app.stop()


@pytest.fixture
async def desk(console: App) -> AsyncIterator[Desk]:
    assert console.console is not None
    client = Desk(console.console.port)
    yield client
    await client.aclose()


async def insert(app: App, rows: list[tuple[str, datetime, str, str, str, str, int, int]]) -> None:
    assert app.database is not None
    async with app.database.connection() as conn:
        await conn.execute("SELECT create_month_partitions('usage_records', '2026-10-01'::date, '2026-11-01'::date)")
        for row in rows:
            await conn.execute(RECORD, row)


async def test_the_newest_usage_of_each_line_for_personal_data_roles_only(console: App, desk: Desk) -> None:
    await add_staff(console, "carla", "crm")
    await add_staff(console, "mo", "monitor")
    await desk.sign_in("carla")
    customer = await apply_and_activate(console, desk)
    assert console.acquisition is not None and console.console is not None
    (line,) = await console.acquisition.lines.of_customer(customer)
    page = await desk.get(f"/customers/{customer}")
    assert "No usage recorded." in page.text

    # 25 calls of the line, an hour apart; 3 of the number's previous holder (another
    # account), newer than all of them; one of another number.
    ours = [
        (f"r{n:02}", START + timedelta(hours=n), line.account_id, line.msisdn, "voice", "time_s", 60 + n, 1000 * n)
        for n in range(25)
    ]
    before = [
        (f"x{n}", START + timedelta(days=20, hours=n), "old-account", line.msisdn, "sms", "event", 1, 1)
        for n in range(3)
    ]
    other = [("o1", START + timedelta(days=21), "A9", "491709999999", "data", "bytes", 1, 1)]
    await insert(console, [*ours, *before, *other])

    page = await desk.get(f"/customers/{customer}")
    usage = page.text[page.text.index('id="h-usage"') :]
    usage = usage[: usage.index("</section>")]
    when = re.findall(r"<td>(2026-11-\d\d \d\d:\d\d)</td>", usage)
    expected = [(START + timedelta(hours=n)).strftime("%Y-%m-%d %H:%M") for n in range(24, 4, -1)]
    assert when == expected  # the newest 20, newest first
    assert "84 time_s" in usage and "0.024" in usage  # units and cost of the newest
    assert "sms" not in usage and "491709999999" not in usage and "No usage recorded." not in usage

    await desk.post("/logout", {})
    await desk.sign_in("mo")
    page = await desk.get(f"/customers/{customer}")
    assert page.status_code == 200 and "time_s" not in page.text and "2026-11-03" not in page.text

    # At most 20 of each line, however many lines: a second line with 2 records keeps both.
    second = replace(line, msisdn="491701111111", account_id="A-second")
    await insert(
        console,
        [
            ("s1", START - timedelta(days=1), "A-second", "491701111111", "data", "bytes", 5, 7),
            ("s2", START - timedelta(days=2), "A-second", "491701111111", "data", "bytes", 6, 8),
        ],
    )
    rows = await recent_usage(console.console.desk, [line, second])
    assert len(rows) == USAGE_PER_LINE + 2
    assert [r.msisdn for r in rows[-2:]] == ["491701111111"] * 2 and rows[-1].units == 6
    assert [r.at for r in rows] == sorted((r.at for r in rows), reverse=True)
    assert await recent_usage(console.console.desk, [replace(line, account_id="")]) == []
