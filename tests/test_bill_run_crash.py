"""A bill run killed with SIGKILL between each pair of its steps, and PostgreSQL killed
and restarted under it: every invoice is issued once, no number is skipped, no usage is
lost or billed twice.

The bill run is a real process (``tests/bill_run_process.py``) on the test's Redis and
PostgreSQL; it kills itself at the point named, the next run completes what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import psycopg
import pytest
import redis.asyncio as aioredis
from psycopg_pool import PoolTimeout

from charging import keys, migrations
from charging.clock import ManualClock
from charging.database import open_pool
from charging.embedded_postgres import EmbeddedPostgres
from charging.server import App
from charging.settings import Settings
from postpaid import config as billing_config
from postpaid import keys as bill_keys
from postpaid.accounts import BillingAccounts
from postpaid.bill_run import BillRun
from postpaid.invoice_book import InvoiceBook
from postpaid.invoices import Invoice
from tests.conftest import SEALER, Stubs
from tests.test_bill_run import JAN_10, call, postpaid_line

DAY = 86_400
ROOT = Path(__file__).resolve().parent.parent
LINES = (("491700000901", 60), ("491700000902", 120), ("491700000903", 180))


@pytest.fixture
def billing(app: App, clock: ManualClock) -> tuple[BillingAccounts, BillRun]:
    clock.advance(ms=JAN_10 * 1000 - clock.now_ms())
    config = billing_config.default()
    assert app.redis is not None and app.catalogs is not None and app.database is not None
    accounts = BillingAccounts(app.redis, config, SEALER)
    book = InvoiceBook(app.database, config.issuer.id, config.issuer.number_prefix, SEALER)
    return accounts, BillRun(app.redis, accounts, config, app.catalogs, clock, book)


@pytest.fixture
def client(app: App) -> aioredis.Redis:
    assert app.redis is not None
    return app.redis


async def bill_run_process(settings: Settings, database_url: str, now_s: int, point: str) -> tuple[int, str]:
    """Run ``tests/bill_run_process.py``; its exit status and what it printed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.bill_run_process",
        settings.redis_url,
        database_url,
        str(now_s),
        point,
        cwd=ROOT,
        env={**os.environ, "CHARGING_DATA_KEY": settings.data_key},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    if proc.returncode not in (0, -signal.SIGKILL):
        pytest.fail(f"the bill run process failed: {err.decode()[-2000:]}")
    return proc.returncode, out.decode()


async def usage_month(stubs: Stubs, accounts: BillingAccounts) -> dict[str, str]:
    """Three accounts with one line each and one call in January; now is 10 February.
    Answers the charging account of each line by MSISDN."""
    lines = {}
    for i, (msisdn, seconds) in enumerate(LINES):
        lines[msisdn] = await postpaid_line(stubs, accounts, msisdn, f"K{i}", JAN_10)
        assert await call(stubs, msisdn, f"k{i}", seconds) == 2001
    return lines


async def assert_billed_once(client: aioredis.Redis, database_url: str, lines: dict[str, str]) -> None:
    """One invoice per account, numbered 1..3, each with its line's call once; the usage
    gone from Redis; each account settled once."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT billing_account, invoice_id, document::text FROM invoices ORDER BY number"
        ).fetchall()
        (last,) = conn.execute("SELECT last_number FROM invoice_numbers").fetchone() or (0,)
    assert sorted(ba for ba, _n, _d in rows) == ["K0", "K1", "K2"]
    assert [n for _ba, n, _d in rows] == ["INV-00000001", "INV-00000002", "INV-00000003"] and last == 3
    queued = [str(x) for queue in bill_keys.DELIVERY_QUEUES for x in await client.lrange(queue, 0, -1)]
    assert sorted(queued) == [n for _ba, n, _d in rows]
    for ba, number, doc in rows:
        inv = Invoice.from_json(doc)
        i = int(ba[1])
        msisdn, seconds = LINES[i]
        assert [(s.line, [u.units for u in s.usage]) for s in inv.sections] == [(msisdn, [seconds])]
        account = await client.hgetall(bill_keys.billing_account(ba))
        assert (account["next_period"], account["issued"], account["balance"]) == ("2026-02", "1", str(inv.total))
        assert [str(x) for x in await client.lrange(bill_keys.billing_open(ba), 0, -1)] == [number]
        acct = lines[msisdn]
        assert not [f for f in await client.hkeys(keys.usage(acct)) if str(f).startswith("2026-01")]
        assert await client.llen(keys.usage_records(acct)) == 0


@pytest.mark.parametrize("point", ["after_close", "in_transaction", "after_commit", "after_purge"])
async def test_a_bill_run_killed_between_its_steps_issues_each_invoice_once(
    point: str,
    stubs: Stubs,
    billing: tuple[BillingAccounts, BillRun],
    client: aioredis.Redis,
    clock: ManualClock,
    settings: Settings,
) -> None:
    accounts, run = billing
    lines = await usage_month(stubs, accounts)
    clock.advance(seconds=31 * DAY)
    now_s = clock.now_ms() // 1000
    for _ in range(2):  # killed at the same point twice: the second run resumes the first
        status, _out = await bill_run_process(settings, settings.database_url, now_s, point)
        assert status == -signal.SIGKILL
    status, out = await bill_run_process(settings, settings.database_url, now_s, "none")
    assert status == 0
    report = json.loads(out)
    assert report["failed"] == 0 and report["issued"] + report["already"] <= 3
    await assert_billed_once(client, settings.database_url, lines)
    again = await run.run()
    assert (again.issued, again.already, again.failed) == (0, 0, 0)


async def kill(pg: EmbeddedPostgres) -> None:
    """kill -9 of the postmaster and of its backends, as a machine's death takes them: a
    backend outlives its postmaster until it notices, and a pool's open connection to one
    could still commit (a CI run under load saw the run "on a database that is down"
    leave the next run nothing to commit)."""
    assert pg.pid is not None
    for child in backends(pg.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    os.kill(pg.pid, signal.SIGKILL)
    await pg._wait()


def backends(postmaster: int) -> list[int]:
    """The processes whose parent is ``postmaster`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            found.append(int(stat.parent.name))
    return found


async def restart(pg: EmbeddedPostgres, *, killed: bool = False) -> None:
    """kill -9 of the postmaster (unless ``killed`` already), then a start on the same
    directory (crash recovery); its backends may hold the shared memory a moment, so a
    failed start is tried again."""
    if not killed:
        await kill(pg)
    for attempt in range(50):
        try:
            await pg.start()
            return
        except Exception:
            if attempt == 49:
                raise
            await asyncio.sleep(0.1)


async def test_postgresql_killed_under_a_bill_run_loses_nothing_and_skips_no_number(
    stubs: Stubs,
    billing: tuple[BillingAccounts, BillRun],
    client: aioredis.Redis,
    clock: ManualClock,
    settings: Settings,
    postgres_dir: Path,
) -> None:
    accounts, run = billing
    lines = await usage_month(stubs, accounts)
    clock.advance(seconds=31 * DAY)
    now_s = clock.now_ms() // 1000
    pg = EmbeddedPostgres(postgres_dir, durable=True)
    url = await pg.start()
    try:
        await asyncio.to_thread(migrations.upgrade, url)
        # The run dies with its transaction open, then the database dies too.
        status, _out = await bill_run_process(settings, url, now_s, "in_transaction")
        assert status == -signal.SIGKILL
        await restart(pg)
        # A run on a database that is down fails and changes nothing it cannot finish.
        pool = await open_pool(url, 2)  # opened with time to spare on a loaded machine,
        pool.timeout = 1.0  # then a database that is down fails fast
        book = InvoiceBook(pool, run.config.issuer.id, run.config.issuer.number_prefix, SEALER)
        down = BillRun(client, accounts, run.config, run.catalogs, clock, book)
        await kill(pg)
        with pytest.raises(PoolTimeout):  # each account failed, then its report could not be kept
            await down.run()
        await restart(pg, killed=True)
        # Committed, then the database restarted before the next run settles.
        status, _out = await bill_run_process(settings, url, now_s, "after_commit")
        assert status == -signal.SIGKILL
        await restart(pg)
        status, _out = await bill_run_process(settings, url, now_s, "none")
        assert status == 0
        await pool.close()
        await assert_billed_once(client, url, lines)
    finally:
        await pg.stop()
