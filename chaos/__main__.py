"""``python -m chaos``: a randomized fault-injection run against real processes.

    python -m chaos --seed 7 --duration 60          # make chaos SEED=7 DURATION=60
    python -m chaos --database-url postgresql://...  # else an embedded PostgreSQL

Prints a report (operations by kind and outcome, faults injected, checks and their
results, the seed to replay), writes the history as JSON lines beside it, and exits 1 on
any violation, after shrinking: the same seed is run again with half the duration (and
so fewer operations) while the violation still shows, and the smallest failing history
is the one named.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import sys
import tempfile
import uuid
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from chaos.run import CLOCK_FAULTS, CLUSTER_FAULTS, FAULTS, NETWORK_FAULTS, Config, Report, run
from charging.embedded_postgres import EmbeddedPostgres


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def fresh_database(server_url: str) -> str:
    """A new, empty database on the server of ``server_url`` (the server migrates it): the
    checks read every record of the database as this run's."""
    name = f"chaos_{uuid.uuid4().hex[:12]}"
    async with await psycopg.AsyncConnection.connect(server_url, autocommit=True) as conn:
        await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_conninfo(server_url, dbname=name)


async def one(config: Config, server_url: str, keep: Path) -> Report:
    workdir = Path(tempfile.mkdtemp(prefix="chaos-"))
    try:
        database_url = await fresh_database(server_url)
        report = await run(config, workdir, database_url, free_port(), free_port())
        if not report.ok:
            shutil.copy(workdir / "server.log", keep / f"server-{config.seed}-{config.duration_s:g}.log")
        return report
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def main_async(args: argparse.Namespace, keep: Path) -> int:
    postgres: EmbeddedPostgres | None = None
    database_url = args.database_url
    if not database_url:
        postgres = EmbeddedPostgres(keep / "postgres", durable=False)
        database_url = await postgres.start()
    try:
        config = Config(
            seed=args.seed,
            duration_s=args.duration,
            clients=args.clients,
            faults=tuple(f for f in args.faults.split(",") if f),
            postpaid_lines=args.postpaid_lines,
            cluster=args.cluster,
        )
        report = await one(config, database_url, keep)
        failing = report
        for _ in range(args.shrink if not report.ok else 0):
            shorter = Config(**{**config.__dict__, "duration_s": failing.config.duration_s / 2})
            if shorter.duration_s < 1:
                break
            candidate = await one(shorter, database_url, keep)
            if candidate.ok:
                break
            failing = candidate
        print(report.text())
        history = keep / f"history-{config.seed}.jsonl"
        failing.history.write(str(history))
        failing.ledger.append_to(str(history))
        if not report.ok:
            print(
                f"smallest failing run: {failing.config.duration_s:g} s, "
                f"{len(failing.history.operations)} operations, history in {history}"
            )
            print(failing.text())
            return 1
        print(f"history in {history}")
        return 0
    finally:
        if postgres is not None:
            await postgres.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.split("\n\n")[0] if __doc__ else "")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load with faults")
    p.add_argument("--clients", type=int, default=4)
    every = FAULTS + NETWORK_FAULTS + CLOCK_FAULTS
    p.add_argument(
        "--faults",
        default=",".join(every),
        help=f"comma-separated, of {', '.join(every)} (network faults put Redis behind a proxy)",
    )
    p.add_argument(
        "--database-url", default="", help="a PostgreSQL where each run creates a database of its own; else embedded"
    )
    p.add_argument("--postpaid-lines", type=int, default=2, help="postpaid lines billed and paid under the faults")
    p.add_argument(
        "--cluster",
        action="store_true",
        help="Redis as a local 3+3 Redis Cluster; faults kill_server, pause_server, kill_primary and the clock's",
    )
    p.add_argument("--shrink", type=int, default=3, help="shorter runs tried when a check fails")
    p.add_argument("--out", default="var/chaos", help="where histories and failing server logs go")
    args = p.parse_args(argv)
    if args.cluster and args.faults == p.get_default("faults"):
        args.faults = ",".join(("kill_server", "pause_server", *CLUSTER_FAULTS, *CLOCK_FAULTS))
    keep = Path(args.out)
    keep.mkdir(parents=True, exist_ok=True)
    return asyncio.run(main_async(args, keep))


if __name__ == "__main__":
    sys.exit(main())
