"""What usage records cost, and how fast the relay moves them into PostgreSQL.

1. The charging path with records on and off: two charging servers share one
   redis-server, one with ``CHARGING_USAGE_RECORDS=false``. Each round runs whole voice
   sessions (INITIAL, 3 UPDATEs with used units, TERMINATE: 4 usage records a session)
   from ``loadtest.bench``'s session client (its own process) against one server, then the
   other (alternating order), waits until the records of the round have left Redis (the
   relay job of the server with records on, its cost included), and reads the CPU time
   of the server and of redis-server (``/proc/<pid>/stat``) before and after: CPU per
   request, whatever the client's own speed.
2. The relay alone: ``--records`` records in the scripts' session layout spread over
   ``--accounts`` record outboxes, relayed by ``CdrRelay`` into an embedded PostgreSQL
   (durable: fsync on), timed end to end (read from Redis, parse, COPY, insert skipping
   repeats, commit, trim); and the COPY and insert alone on rows parsed beforehand.

    python -m loadtest.cdr_bench                 # what `make bench` runs after tls_bench
    CDR_BENCH_DURATION=5 CDR_BENCH_ROUNDS=3 CDR_BENCH_RECORDS=200000 python -m loadtest.cdr_bench
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import redis
import redis.asyncio as aioredis

from charging import keys, migrations
from charging.cdr_relay import CdrRelay, drain
from charging.cdr_store import CdrStore
from charging.cdrs import rows
from charging.clock import SystemClock
from charging.database import open_pool
from charging.embedded_postgres import EmbeddedPostgres, private_dir
from charging.embedded_redis import redis_command
from loadtest.bench import (
    BenchError,
    child,
    child_env,
    create_subscribers,
    env_number,
    free_port,
    machine,
    run_session_client,
    wait_health,
    wait_redis,
)
from loadtest.tls_bench import cpu_seconds

SUBSCRIBERS = 200
DRAIN_TIMEOUT_S = 120.0


def wait_drained(client: redis.Redis, accounts: int) -> None:
    """Until no record outbox of the bench's accounts (ids 1..accounts) holds a record."""
    outboxes = [keys.cdr_outbox(str(i)) for i in range(1, accounts + 1)]
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while client.exists(*outboxes):
        if time.monotonic() > deadline:
            raise BenchError("the relay did not empty the record outboxes")
        time.sleep(0.2)


def start_redis(stack: contextlib.ExitStack, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    redis_dir = workdir / "redis"
    redis_dir.mkdir()
    log = workdir / "redis.out"
    proc = stack.enter_context(child(redis_command("redis-server", redis_dir, "everysec", port=port), log))
    wait_redis(proc, port, log)
    return proc, port


def charging_path(args: argparse.Namespace, stack: contextlib.ExitStack, workdir: Path) -> dict[str, list[float]]:
    """Per round and setting: server CPU us per request, Redis CPU us per request."""
    redis_proc, redis_port = start_redis(stack, workdir)
    redis_dir = workdir / "redis"
    on_port, off_port = free_port(), free_port()
    client = redis.Redis(host="127.0.0.1", port=redis_port)
    stack.callback(client.close)
    common = child_env()
    common.update(CHARGING_REDIS_URL=f"unix://{redis_dir / 'redis.sock'}", CHARGING_METRICS_ADDRESS="")
    common.update(CHARGING_BILLING_INTERVAL_S="0", CHARGING_REDIS_DIR=str(redis_dir))
    servers = {}
    for name, port, records in (("records on", on_port, "true"), ("records off", off_port, "false")):
        pg = private_dir("charging-cdr-bench-pg-")
        stack.callback(shutil.rmtree, pg, True)
        env = {
            **common,
            "CHARGING_GRPC_ADDRESS": f"127.0.0.1:{port}",
            "CHARGING_DATABASE_DIR": str(pg),
            "CHARGING_USAGE_RECORDS": records,
        }
        log = workdir / f"{name.replace(' ', '-')}.log"
        proc = stack.enter_context(child([sys.executable, "-m", "charging.cli", "serve"], log, env))
        wait_health(proc, f"127.0.0.1:{port}", log)
        servers[name] = (proc.pid, f"127.0.0.1:{port}")
    create_subscribers(servers["records on"][1], SUBSCRIBERS)
    results: dict[str, list[float]] = {f"{n} {what}": [] for n in servers for what in ("server", "redis")}
    for round_no in range(max(args.rounds, 1)):
        order = list(servers) if round_no % 2 == 0 else list(reversed(servers))
        for name in order:
            pid, target = servers[name]
            server_before, redis_before = cpu_seconds(pid), cpu_seconds(redis_proc.pid)
            done = run_session_client(target, args.duration, args.concurrency, SUBSCRIBERS, workdir)
            wait_drained(client, SUBSCRIBERS)
            server_cpu, redis_cpu = cpu_seconds(pid) - server_before, cpu_seconds(redis_proc.pid) - redis_before
            results[f"{name} server"].append(server_cpu / done.requests * 1e6)
            results[f"{name} redis"].append(redis_cpu / done.requests * 1e6)
    return results


def session_entry(account: int, n: int) -> str:
    """A record as session.lua writes it (a voice UPDATE paid partly from a bucket)."""
    return json.dumps(
        ["s", str(1_767_225_600_000 + n), f"4917{account:08d}", "", "default", "1", f"bench;{account};{n // 4}",
         str(n % 4 + 1), "10", "voice", "491711234567", "national_mobile", "", "", "", "1", "60", "9000",
         f"voice-100.{account}:30"],
        separators=(",", ":"),
    )  # fmt: skip


async def relay_throughput(redis_url: str, records: int, accounts: int) -> tuple[float, float]:
    """Records/s relayed end to end, and records/s of the COPY and insert alone."""
    pg = private_dir("charging-cdr-bench-relay-pg-")
    embedded = EmbeddedPostgres(pg)
    try:
        url = await embedded.start()
        await asyncio.to_thread(migrations.upgrade, url)
        pool = await open_pool(url, 4)
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            per_account = records // accounts
            for start in range(1, accounts + 1, 100):
                pipe = client.pipeline(transaction=False)
                for a in range(start, min(start + 100, accounts + 1)):
                    pipe.rpush(keys.cdr_outbox(str(100_000 + a)), *(session_entry(a, n) for n in range(per_account)))
                await pipe.execute()
            store = CdrStore(pool)
            relay = CdrRelay(client, store, SystemClock())
            started = time.perf_counter()
            moved = await drain(relay)  # its first pass scans: it finds the outboxes itself
            relay_rate = moved / (time.perf_counter() - started)
            if moved != per_account * accounts:
                raise BenchError(f"relayed {moved} of {per_account * accounts} records")
            # The database part alone, on new ids: rows parsed before the clock starts.
            parsed = [
                rows(str(200_000 + a), session_entry(a, n))[0]
                for a in range(1, accounts + 1)
                for n in range(per_account)
            ]
            usage = [u for u in parsed if u is not None]
            started = time.perf_counter()
            for i in range(0, len(usage), 20_000):
                await store.write(usage[i : i + 20_000], [])
            copy_rate = len(usage) / (time.perf_counter() - started)
        finally:
            await client.aclose()
            await pool.close()
        return relay_rate, copy_rate
    finally:
        await embedded.stop()
        shutil.rmtree(pg, ignore_errors=True)


def bench(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="charging-cdr-bench-")))
        results = charging_path(args, stack, workdir) if not args.relay_only else {}
        if args.relay_only:
            start_redis(stack, workdir)
        redis_url = f"unix://{workdir / 'redis' / 'redis.sock'}"
        relay_rate, copy_rate = asyncio.run(relay_throughput(redis_url, args.records, args.accounts))

    print(machine())
    if results:
        charging_figures(args, results)
    print(
        f"relay: {args.records} records in {args.accounts} outboxes -> PostgreSQL (embedded, fsync on): "
        f"{relay_rate:,.0f} records/s end to end; COPY alone {copy_rate:,.0f} records/s"
    )
    print(f"relay_records_per_s={relay_rate:.0f}")
    return 0


def charging_figures(args: argparse.Namespace, results: dict[str, list[float]]) -> None:
    print(
        f"charging path: loadtest.bench session client, {args.concurrency} sessions in flight, "
        f"{args.duration}s x {max(args.rounds, 1)} alternating rounds per setting (4 usage records per session "
        "of 5 requests); CPU per request including the relay's work until the outboxes were empty; medians"
    )
    medians = {name: statistics.median(values) for name, values in results.items()}
    for name, values in results.items():
        rounds = " ".join(f"{v:.0f}" for v in values)
        print(f"{name:18}: CPU per request {medians[name]:.0f} us (rounds: {rounds})")
    for part in ("server", "redis"):
        ratio = medians[f"records on {part}"] / medians[f"records off {part}"]
        print(f"records_{part}_cpu_ratio={ratio:.2f}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.cdr_bench", description="usage records: cost and relay rate")
    p.add_argument("--duration", type=float, default=env_number("CDR_BENCH_DURATION", 5))
    p.add_argument("--rounds", type=int, default=int(env_number("CDR_BENCH_ROUNDS", 3)))
    p.add_argument("--concurrency", type=int, default=int(env_number("CDR_BENCH_CONCURRENCY", 32)))
    p.add_argument("--records", type=int, default=int(env_number("CDR_BENCH_RECORDS", 200_000)))
    p.add_argument("--accounts", type=int, default=int(env_number("CDR_BENCH_ACCOUNTS", 2_000)))
    p.add_argument("--relay-only", action="store_true", help="only the relay's figures")
    args = p.parse_args(argv)
    try:
        return bench(args)
    except (BenchError, subprocess.SubprocessError) as exc:
        print(f"cdr bench failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
