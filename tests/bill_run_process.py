"""A bill run as a process of its own that kills itself (SIGKILL) at a chosen point, for
the crash tests: ``python -m tests.bill_run_process REDIS_URL DATABASE_URL NOW_S POINT``.

The points are between the bill run's steps (``postpaid/bill_run.py``):
  after_close     the periods are closed on the lines (close.lua ran)
  in_transaction  the invoices are written, the transaction not committed
  after_commit    the invoices are committed, not settled in Redis
  after_purge     the invoiced usage dropped from the lines, the invoices not settled
  none            no crash: the run completes and prints its report

The kill is the process's own, at that point: nothing after it runs, no ``finally``, no
connection closed cleanly, as when a server is killed with kill -9.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

import redis.asyncio as aioredis

from charging.catalogs import CatalogBook
from charging.clock import ManualClock
from charging.database import open_pool
from postpaid import config as billing_config
from postpaid.accounts import BillingAccounts
from postpaid.bill_run import BillRun
from postpaid.invoice_book import InvoiceBook
from postpaid.scripts import CLOSE, PURGE
from provisioning.sealing import Sealer

# The test server's key ring, from the test that starts this process.
SEALER = Sealer.from_text(os.environ["CHARGING_DATA_KEY"], "CHARGING_DATA_KEY")
POINTS = ("after_close", "in_transaction", "after_commit", "after_purge", "none")


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class Crashing(BillRun):
    point = "none"

    async def _many(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        replies = await super()._many(commands)
        sha = commands[0][1] if commands and commands[0][0] == "EVALSHA" else ""
        if (self.point, sha) in (("after_close", CLOSE.sha), ("after_purge", PURGE.sha)):
            die()
        return replies


class CrashingBook(InvoiceBook):
    point = "none"

    async def _write(self, conn: Any, numbered: Any) -> None:
        await super()._write(conn, numbered)
        if self.point == "in_transaction":
            die()

    async def issue(self, drafts: Any) -> Any:
        issued = await super().issue(drafts)
        if self.point == "after_commit":
            die()
        return issued


async def main(redis_url: str, database_url: str, now_s: int, point: str) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    catalogs = CatalogBook(client)
    await catalogs.start("", prefer_file=False)
    config = billing_config.default()
    pool = await open_pool(database_url, 2)
    book = CrashingBook(pool, config.issuer.id, config.issuer.number_prefix, SEALER)
    run = Crashing(client, BillingAccounts(client, config, SEALER), config, catalogs, ManualClock(now_s * 1000), book)
    Crashing.point = CrashingBook.point = point
    report = await run.run()
    print(json.dumps(report.as_dict()))
    await pool.close()
    await client.aclose()


if __name__ == "__main__":
    url, db, now, at = sys.argv[1:5]
    assert at in POINTS, at
    asyncio.run(main(url, db, int(now), at))
