"""Bill-run throughput: invoices computed and issued per second on many postpaid accounts.

A fresh redis-server on a free loopback port is filled with ``BENCH_BILL_ACCOUNTS``
(default 100,000) billing accounts, one postpaid line each, and a month of realistic
usage per line written in the form the charging scripts record it (``ledger_lib.lua``
``record_usage``): ``BENCH_BILL_RECORDS`` (default 40) itemised records of calls, SMS
and data across zones and bands, with their aggregates. An embedded PostgreSQL
(durable: fsync on, as ``make run`` starts it) in a private directory keeps the issued
invoices. Then one bill run closes the period on every line, composes every invoice,
writes it to PostgreSQL with its gapless number and settles it in Redis, exactly as
``charging bill-run`` does (on uvloop, as in the server), split over
``BENCH_BILL_PROCESSES`` (default 2) processes by account hash
(``BillRun.run(shard=, shards=)``); the figure is invoices per
second over the whole run, wall clock. Rendering (HTML and PDF) is measured separately
on a sample of the issued invoices, since delivery renders outside the bill run.

Afterwards the run is checked: one invoice per account, numbers 1..N without a gap,
every invoice's usage equal to its records, and a second run issues nothing. Redis
memory is printed before and after: the issued invoices are not in it.

    python -m loadtest.bill_bench                 # part of `make bench`
    BENCH_BILL_ACCOUNTS=10000 python -m loadtest.bill_bench
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import redis
import redis.asyncio as aioredis
import uvloop

from charging import keys, migrations
from charging.catalogs import CatalogBook
from charging.clock import ManualClock
from charging.database import open_pool
from charging.embedded_postgres import EmbeddedPostgres, private_dir
from charging.embedded_redis import redis_command
from charging.money import MICROS_PER_MINOR
from charging.redis_link import RedisLink
from loadtest.bench import BenchError, child, free_port, machine, wait_redis
from postpaid import config as billing_config
from postpaid import keys as bill_keys
from postpaid import periods
from postpaid.accounts import BillingAccounts
from postpaid.bill_run import BATCH, BillRun
from postpaid.invoice_book import InvoiceBook
from postpaid.invoices import Invoice
from postpaid.render import render_html, render_pdf
from provisioning.sealing import Sealer, new_key_entry

# The invoices' personal fields are sealed with a key of the bench's own (it reads none back).
SEALER = Sealer.from_text(new_key_entry("bench"), "the bench")
PERIOD_START = 1_767_222_000  # 2026-01-01 00:00 Europe/Berlin
CALLS = [
    ("voice", "national_mobile", "peak", "", "4915112345678", 120, 90_000),
    ("voice", "national_fixed", "offpeak", "", "4930123456", 300, 150_000),
    ("voice", "international_1", "peak", "", "33123456789", 60, 250_000),
    ("sms", "national_mobile", "peak", "", "4915199998888", 1, 90_000),
    ("data", "", "", "", "", 25 * 2**20, 250_000),
    ("data", "", "", "R", "", 5 * 2**20, 1_000_000),
]


def populate(port: int, accounts: int, records: int, tz: str) -> None:
    """Accounts, lines and a month of usage, written in pipelines."""
    r = redis.Redis(host="127.0.0.1", port=port)
    period = periods.period_at(1, tz, PERIOD_START)
    bp = periods.pack(periods.open_periods(period, tz))
    rnd = random.Random(7)
    pipe = r.pipeline(transaction=False)
    for n in range(1, accounts + 1):
        acct, ba, msisdn = str(n), f"C{n}", str(491_700_000_000 + n)
        agg: dict[str, list[int]] = {}
        items = []
        for i in range(records):
            service, zone, band, roam, dest, units, cost = CALLS[rnd.randrange(len(CALLS))]
            at_ms = (PERIOD_START + 3600 + i * 60_000) * 1000
            field = f"{period.id}|{service}|{zone}|{band}|{roam}"
            a = agg.setdefault(field, [0, 0, 0])
            a[0] += units
            a[1] += cost
            a[2] += 1
            items.append(f"{period.id},{at_ms},{service},{zone},{band},{roam},{dest},{units},{cost},s{n}-{i}")
        spent = sum(a[1] for a in agg.values())
        pipe.hset(
            keys.account(acct),
            mapping={
                "balance": 500_000_000 - spent,
                "reserved": 0,
                "plan": "mobile-postpaid",
                "status": "active",
                "currency": "EUR",
                "msisdn": msisdn,
                "bp": bp,
                "credit_limit": 500_000_000,
                "overdue": 0,
                "cl": 0,
            },
        )
        pipe.hset(keys.usage(acct), mapping={f: f"{a[0]},{a[1]},{a[2]}" for f, a in agg.items()})
        pipe.rpush(keys.usage_records(acct), *items)
        pipe.hset(
            bill_keys.billing_account(ba),
            mapping={
                "cycle_day": 1,
                "time_zone": tz,
                "next_period": period.id,
                "state": "ACTIVE",
                "customer": str(n),
                "label": f"Customer {n}",
                "deposit": 0,
            },
        )
        pipe.hset(bill_keys.billing_lines(ba), acct, f'{{"line": "{msisdn}", "unit_path": []}}')
        pipe.set(bill_keys.line_billing(acct), ba)
        pipe.rpush(bill_keys.line_history(acct), f"{PERIOD_START - 86_400 * 40},active,mobile-postpaid")
        pipe.zadd(bill_keys.due_index(ba), {ba: period.end_s})
        if n % 2000 == 0:
            pipe.execute()
    pipe.execute()
    r.close()


async def bill(port: int, url: str, concurrency: int, shard: int = 0, shards: int = 1) -> tuple[float, float, int]:
    """One bill run (this process's shard of it); when it started and ended (wall clock)
    and the invoices it issued."""
    client = aioredis.Redis(host="127.0.0.1", port=port, decode_responses=True, max_connections=concurrency + 4)
    catalogs = CatalogBook(client)
    await catalogs.start("", prefer_file=False)
    clock = ManualClock((PERIOD_START + 32 * 86_400) * 1000)
    config = billing_config.default()
    link = RedisLink(f"redis://127.0.0.1:{port}")
    pool = await open_pool(url, concurrency + 1)
    book = InvoiceBook(pool, config.issuer.id, config.issuer.number_prefix, SEALER)
    run = BillRun(client, BillingAccounts(client, config, SEALER), config, catalogs, clock, book, link)
    started = time.time()
    report = await run.run(concurrency=concurrency, shard=shard, shards=shards)
    ended = time.time()
    await pool.close()
    await link.aclose()
    await client.aclose()
    if report.failed or report.issued != report.accounts:
        raise BenchError(f"bill run did not issue every invoice: {report.as_dict()}")
    return started, ended, report.issued


def _shard(port: int, url: str, concurrency: int, shard: int, shards: int, out: Any) -> None:
    out.put(uvloop.run(bill(port, url, concurrency, shard, shards)))


def bill_in_processes(port: int, url: str, concurrency: int, processes: int) -> tuple[float, int]:
    """The run split over ``processes`` processes by account hash; seconds from the first
    shard's start to the last one's end (process start-up excluded), and invoices."""
    if processes <= 1:
        started, ended, issued = uvloop.run(bill(port, url, concurrency))
        return ended - started, issued
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_shard, args=(port, url, concurrency, i, processes, out)) for i in range(processes)]
    for p in procs:
        p.start()
    results = [out.get(timeout=3600) for _ in procs]
    elapsed = max(r[1] for r in results) - min(r[0] for r in results)
    for p in procs:
        p.join(30)
        if p.exitcode:
            raise BenchError(f"a bill run process exited with {p.exitcode}")
    return elapsed, sum(r[2] for r in results)


async def run_again(port: int, url: str) -> int:
    client = aioredis.Redis(host="127.0.0.1", port=port, decode_responses=True)
    catalogs = CatalogBook(client)
    await catalogs.start("", prefer_file=False)
    config = billing_config.default()
    clock = ManualClock((PERIOD_START + 32 * 86_400) * 1000)
    pool = await open_pool(url, 2)
    book = InvoiceBook(pool, config.issuer.id, config.issuer.number_prefix, SEALER)
    report = await BillRun(client, BillingAccounts(client, config, SEALER), config, catalogs, clock, book).run()
    await pool.close()
    await client.aclose()
    return report.issued


def verify(url: str, accounts: int) -> list[Invoice]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT billing_account, invoice_id FROM invoices ORDER BY number").fetchall()
        if sorted(ba for ba, _ in rows) != sorted(f"C{n}" for n in range(1, accounts + 1)):
            raise BenchError("not one invoice per account")
        numbers = [str(n) for _, n in rows]
        if numbers != [f"INV-{i:08d}" for i in range(1, accounts + 1)]:
            raise BenchError("invoice numbers are not 1..N without a gap")
        picked = numbers[:: max(accounts // 20, 1)]
        docs = conn.execute("SELECT document::text FROM invoices WHERE invoice_id = ANY(%s)", (picked,)).fetchall()
    sample = [Invoice.from_json(d) for (d,) in docs]
    for inv in sample:
        for s in inv.sections:
            usage = sum(c.amount for c in s.charges if c.kind == "USAGE")
            micros = sum(u.cost_micros for u in s.usage)
            if abs(usage * MICROS_PER_MINOR - micros) > MICROS_PER_MINOR * len(s.charges):
                raise BenchError(f"invoice {inv.number}: usage lines do not match the records")
    return sample


def main() -> int:
    accounts = int(os.environ.get("BENCH_BILL_ACCOUNTS", "100000"))
    records = int(os.environ.get("BENCH_BILL_RECORDS", "40"))
    concurrency = int(os.environ.get("BENCH_BILL_CONCURRENCY", "2"))
    processes = int(os.environ.get("BENCH_BILL_PROCESSES", "2"))
    tz = billing_config.default().time_zone
    pg_dir = private_dir("bill-bench-pg-")
    postgres = EmbeddedPostgres(pg_dir)
    # Started and stopped on one loop of its own (it watches the postmaster from there).
    loop = asyncio.new_event_loop()
    try:
        url = loop.run_until_complete(postgres.start())
        migrations.upgrade(url)
        with tempfile.TemporaryDirectory(prefix="bill-bench-") as tmp:
            figures = _run(url, tmp, accounts, records, concurrency, processes, tz)
    finally:
        loop.run_until_complete(postgres.stop())
        loop.close()
        shutil.rmtree(pg_dir, ignore_errors=True)
    issued, elapsed, mem_before, mem_after, sample = figures
    _print(issued, elapsed, mem_before, mem_after, sample, records, concurrency, processes)
    return 0


def _run(
    url: str, tmp: str, accounts: int, records: int, concurrency: int, processes: int, tz: str
) -> tuple[int, float, int, int, list[Invoice]]:
    port = free_port()
    log = Path(tmp) / "redis.log"
    argv = [*redis_command("redis-server", Path(tmp), "no", port=port), "--appendonly", "no"]
    with child(argv, log) as proc:
        wait_redis(proc, port, log)
        started = time.monotonic()
        populate(port, accounts, records, tz)
        took = time.monotonic() - started
        print(f"populated {accounts} accounts x {records} records in {took:.1f}s", file=sys.stderr)
        mem_before = int(redis.Redis(host="127.0.0.1", port=port).info("memory")["used_memory"])
        elapsed, issued = bill_in_processes(port, url, concurrency, processes)
        if asyncio.run(run_again(port, url)):
            raise BenchError("a second bill run issued invoices again")
        mem_after = int(redis.Redis(host="127.0.0.1", port=port).info("memory")["used_memory"])
        sample = verify(url, accounts)
    return issued, elapsed, mem_before, mem_after, sample


def _print(
    issued: int,
    elapsed: float,
    mem_before: int,
    mem_after: int,
    sample: list[Invoice],
    records: int,
    concurrency: int,
    processes: int,
) -> None:
    t0 = time.perf_counter()
    for inv in sample:
        render_html(inv)
    html_ms = (time.perf_counter() - t0) * 1000 / len(sample)
    t0 = time.perf_counter()
    for inv in sample:
        render_pdf(inv)
    pdf_ms = (time.perf_counter() - t0) * 1000 / len(sample)
    print(machine())
    print(
        f"bill run: {issued} invoices ({records} usage records each) in {elapsed:.1f}s, "
        f"{processes} process(es) x {concurrency} batches of {BATCH} accounts in flight"
    )
    print(f"redis memory: {mem_before / 2**20:.0f} MiB before the run, {mem_after / 2**20:.0f} MiB after")
    print(f"rendering (separate, {len(sample)} invoices): html {html_ms:.1f} ms/invoice, pdf {pdf_ms:.1f} ms/invoice")
    print(f"invoices_per_s={issued / elapsed:.0f}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BenchError, subprocess.SubprocessError) as exc:
        print(f"bill bench failed: {exc}", file=sys.stderr)
        sys.exit(1)
