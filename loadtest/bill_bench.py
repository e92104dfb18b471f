"""Bill-run throughput: invoices computed and issued per second on many postpaid accounts.

Run twice (``BENCH_BILL_PRIMARIES``, default ``1,3``): on one fresh redis-server and on a
local Redis Cluster of 3 primaries and 3 replicas (``tests/redis_cluster.py``), each
append-only with fsync every second, each into a database of its own. Redis is filled with ``BENCH_BILL_ACCOUNTS``
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
memory is printed before and after (the issued invoices are not in it), and Redis's CPU
per invoice (``INFO cpu`` of the primaries, and of the replicas, around the run). The
last lines are ``invoices_per_s_3_primaries=`` and ``invoices_per_s=`` (one redis-server),
then Redis memory per line after 1 and after 12 monthly cycles with every invoice paid
(``BENCH_BILL_CYCLE_LINES`` lines, default 200, 0 to skip: ``loadtest/bill_cycles.py``).

    python -m loadtest.bill_bench                 # part of `make bench`
    BENCH_BILL_ACCOUNTS=10000 python -m loadtest.bill_bench
    BENCH_BILL_PRIMARIES=1 python -m loadtest.bill_bench   # one redis-server only
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import redis
import redis.asyncio as aioredis
import uvloop

from charging import keys, migrations, store
from charging.catalogs import CatalogBook
from charging.clock import ManualClock
from charging.database import open_pool
from charging.embedded_postgres import EmbeddedPostgres, ensure_database, private_dir
from charging.embedded_redis import redis_command
from charging.money import MICROS_PER_MINOR
from loadtest import bill_cycles
from loadtest.bench import BenchError, child, free_port, machine, wait_redis
from loadtest.scale_load import Router
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


def populate(router: Router, accounts: int, records: int, tz: str) -> None:
    """Accounts, lines and a month of usage, written in pipelines (one per primary)."""
    period = periods.period_at(1, tz, PERIOD_START)
    bp = periods.pack(periods.open_periods(period, tz))
    rnd = random.Random(7)
    pipes = {port: c.pipeline(transaction=False) for port, c in router.clients.items()}

    def pipe_for(key: str) -> redis.client.Pipeline:
        return pipes[router.port_of(key)]

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
        pipe_for(keys.account(acct)).hset(
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
        pipe = pipe_for(keys.account(acct))  # the line's usage is in its account's slot
        pipe.hset(keys.usage(acct), mapping={f: f"{a[0]},{a[1]},{a[2]}" for f, a in agg.items()})
        pipe.rpush(keys.usage_records(acct), *items)
        # each billing key in its shard's slot: the account's by its id, the line's by the line's
        line_billing = bill_keys.line_billing(acct)
        pipe_for(line_billing).set(line_billing, ba)
        history = bill_keys.line_history(acct)
        pipe_for(history).rpush(history, f"{PERIOD_START - 86_400 * 40},active,mobile-postpaid")
        bill = pipe_for(bill_keys.billing_account(ba))
        bill.hset(
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
        bill.hset(bill_keys.billing_lines(ba), acct, f'{{"line": "{msisdn}", "unit_path": []}}')
        bill.zadd(bill_keys.due_index(ba), {ba: period.end_s})
        if n % 2000 == 0:
            for p in pipes.values():
                p.execute()
    for p in pipes.values():
        p.execute()


async def redis_client(redis_url: str, connections: int = 8) -> aioredis.Redis:
    """The pooled client as the server makes it (a cluster's used for a plain command
    first, README "Redis Cluster")."""
    client = store.connect(redis_url, max_connections=connections)
    await client.ping()
    return client


async def bill(redis_url: str, url: str, concurrency: int, shard: int = 0, shards: int = 1) -> tuple[float, float, int]:
    """One bill run (this process's shard of it); when it started and ended (wall clock)
    and the invoices it issued."""
    client = await redis_client(redis_url, concurrency + 4)
    catalogs = CatalogBook(client)
    await catalogs.start("", prefer_file=False)
    clock = ManualClock((PERIOD_START + 32 * 86_400) * 1000)
    config = billing_config.default()
    link = store.link(redis_url)
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


def _shard(redis_url: str, url: str, concurrency: int, shard: int, shards: int, out: Any) -> None:
    out.put(uvloop.run(bill(redis_url, url, concurrency, shard, shards)))


def bill_in_processes(redis_url: str, url: str, concurrency: int, processes: int) -> tuple[float, int]:
    """The run split over ``processes`` processes by account hash; seconds from the first
    shard's start to the last one's end (process start-up excluded), and invoices."""
    if processes <= 1:
        started, ended, issued = uvloop.run(bill(redis_url, url, concurrency))
        return ended - started, issued
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_shard, args=(redis_url, url, concurrency, i, processes, out)) for i in range(processes)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=3600) for _ in procs]
    elapsed = max(r[1] for r in results) - min(r[0] for r in results)
    for p in procs:
        p.join(30)
        if p.exitcode:
            raise BenchError(f"a bill run process exited with {p.exitcode}")
    return elapsed, sum(r[2] for r in results)


async def run_again(redis_url: str, url: str) -> int:
    client = await redis_client(redis_url)
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


@dataclass(frozen=True)
class Figures:
    primaries: int
    issued: int
    elapsed: float
    mem_before: int
    mem_after: int
    redis_us: float  # the primaries' CPU per invoice (INFO cpu around the run)
    replica_us: float
    sample: list[Invoice]


def main() -> int:
    accounts = int(os.environ.get("BENCH_BILL_ACCOUNTS", "100000"))
    records = int(os.environ.get("BENCH_BILL_RECORDS", "40"))
    concurrency = int(os.environ.get("BENCH_BILL_CONCURRENCY", "2"))
    processes = int(os.environ.get("BENCH_BILL_PROCESSES", "2"))
    # 1: one redis-server; 3: a local Redis Cluster of 3 primaries and 3 replicas.
    settings = [int(n) for n in os.environ.get("BENCH_BILL_PRIMARIES", "1,3").split(",")]
    tz = billing_config.default().time_zone
    pg_dir = private_dir("bill-bench-pg-")
    postgres = EmbeddedPostgres(pg_dir)
    figures = []
    # Started and stopped on one loop of its own (it watches the postmaster from there).
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(postgres.start())
        for primaries in settings:
            # A database per setting: each run numbers its invoices from 1.
            name = f"bill_bench_{primaries}"
            loop.run_until_complete(ensure_database(postgres.layout.url("postgres"), name))
            url = postgres.layout.url(name)
            migrations.upgrade(url)
            with tempfile.TemporaryDirectory(prefix="bill-bench-") as tmp:
                figures.append(_run(url, Path(tmp), primaries, accounts, records, concurrency, processes, tz))
        cycle_lines = int(os.environ.get("BENCH_BILL_CYCLE_LINES", "200"))
        if cycle_lines > 0:
            loop.run_until_complete(ensure_database(postgres.layout.url("postgres"), "bill_cycles"))
            migrations.upgrade(postgres.layout.url("bill_cycles"))
            with tempfile.TemporaryDirectory(prefix="bill-cycles-") as tmp:
                per_line = _cycles(postgres.layout.url("bill_cycles"), Path(tmp), cycle_lines, records, tz)
    finally:
        loop.run_until_complete(postgres.stop())
        loop.close()
        shutil.rmtree(pg_dir, ignore_errors=True)
    _print(figures, records, concurrency, processes)
    if cycle_lines > 0:
        print(
            f"redis memory per postpaid line ({cycle_lines} lines, {records} records a month, every invoice paid): "
            f"{per_line[0]} bytes after 1 bill cycle, {per_line[1]} bytes after {bill_cycles.CYCLES}"
        )
        print(f"redis_bytes_per_line_1_cycle={per_line[0]}")
        print(f"redis_bytes_per_line_{bill_cycles.CYCLES}_cycles={per_line[1]}")
    return 0


def _cycles(url: str, tmp: Path, lines: int, records: int, tz: str) -> tuple[int, int]:
    """Redis per line after 1 and 12 monthly cycles, on one redis-server (bill_cycles.py)."""
    with redis_nodes(1, tmp) as (redis_url, ports, _replicas):
        router = Router(ports, False)
        try:
            populate(router, lines, records, tz)
            return asyncio.run(bill_cycles.per_line(redis_url, url, router, ports, lines, tz))
        finally:
            router.close()


@contextlib.contextmanager
def redis_nodes(primaries: int, tmp: Path) -> Iterator[tuple[str, list[int], list[int]]]:
    """One redis-server or a local 3+3 Redis Cluster (tests/redis_cluster.py), both
    append-only with fsync every second as ``make run`` starts Redis: its URL, the
    primaries' ports and the replicas'."""
    if primaries == 1:
        port = free_port()
        log = tmp / "redis.log"
        argv = redis_command("redis-server", tmp, "everysec", port=port)
        with child(argv, log) as proc:
            wait_redis(proc, port, log)
            yield f"redis://127.0.0.1:{port}", [port], []
        return
    if primaries != 3:
        raise BenchError("BENCH_BILL_PRIMARIES: 1 (a redis-server) or 3 (a local cluster)")
    from tests.redis_cluster import local_cluster

    with local_cluster(tmp / "cluster") as cluster:
        ports = [n.port for n in cluster.primaries()]
        yield cluster.url, ports, [n.port for n in cluster.nodes if n.port not in ports]


def redis_totals(ports: list[int]) -> tuple[float, int]:
    """CPU seconds and used memory summed over the nodes."""
    cpu, memory = 0.0, 0
    for port in ports:
        r = redis.Redis(host="127.0.0.1", port=port)
        info = r.info()
        cpu += float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
        memory += int(info["used_memory"])
        r.close()
    return cpu, memory


def _run(
    url: str, tmp: Path, primaries: int, accounts: int, records: int, concurrency: int, processes: int, tz: str
) -> Figures:
    with redis_nodes(primaries, tmp) as (redis_url, ports, replicas):
        router = Router(ports, primaries > 1)
        started = time.monotonic()
        populate(router, accounts, records, tz)
        router.close()
        took = time.monotonic() - started
        print(f"populated {accounts} accounts x {records} records in {took:.1f}s", file=sys.stderr)
        cpu_before, mem_before = redis_totals(ports)
        replica_before = redis_totals(replicas)[0]
        elapsed, issued = bill_in_processes(redis_url, url, concurrency, processes)
        cpu_after, mem_after = redis_totals(ports)
        replica_after = redis_totals(replicas)[0]
        if asyncio.run(run_again(redis_url, url)):
            raise BenchError("a second bill run issued invoices again")
        sample = verify(url, accounts)
    return Figures(
        primaries, issued, elapsed, mem_before, mem_after,
        redis_us=(cpu_after - cpu_before) * 1e6 / issued,
        replica_us=(replica_after - replica_before) * 1e6 / issued,
        sample=sample,
    )  # fmt: skip


def _print(figures: list[Figures], records: int, concurrency: int, processes: int) -> None:
    sample = figures[0].sample
    t0 = time.perf_counter()
    for inv in sample:
        render_html(inv)
    html_ms = (time.perf_counter() - t0) * 1000 / len(sample)
    t0 = time.perf_counter()
    for inv in sample:
        render_pdf(inv)
    pdf_ms = (time.perf_counter() - t0) * 1000 / len(sample)
    print(machine())
    for f in figures:
        where = "one redis-server" if f.primaries == 1 else f"a Redis Cluster of {f.primaries} primaries + replicas"
        replicas = f", replicas {f.replica_us:.0f} us" if f.replica_us else ""
        print(
            f"bill run on {where}: {f.issued} invoices ({records} usage records each) in {f.elapsed:.1f}s, "
            f"{f.issued / f.elapsed:.0f} invoices/s, {processes} process(es) x {concurrency} batches of {BATCH} "
            f"accounts in flight; Redis CPU per invoice: primaries {f.redis_us:.0f} us{replicas}; "
            f"redis memory {f.mem_before / 2**20:.0f} MiB before, {f.mem_after / 2**20:.0f} MiB after"
        )
    print(f"rendering (separate, {len(sample)} invoices): html {html_ms:.1f} ms/invoice, pdf {pdf_ms:.1f} ms/invoice")
    rates = {f.primaries: f.issued / f.elapsed for f in figures}
    for primaries, rate in sorted(rates.items()):
        if primaries != 1:
            print(f"invoices_per_s_{primaries}_primaries={rate:.0f}")
    if 1 in rates:
        print(f"invoices_per_s={rates[1]:.0f}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BenchError, subprocess.SubprocessError) as exc:
        print(f"bill bench failed: {exc}", file=sys.stderr)
        sys.exit(1)
