"""A dunning run in a process of its own that kills itself (SIGKILL) at a chosen point,
for the crash tests: ``python -m tests.dunning_process REDIS_URL DATABASE_URL POINT K``.

The run evaluates every account due (seeded by the test); the K-th decision it makes
is where it dies:
  in_transaction  its rows are written, the transaction is not committed
  after_commit    the decision is committed; Redis has not heard of it
  after_redis     Redis applied it; it is not marked applied
  none            no crash: the run completes
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import redis.asyncio as aioredis
from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from charging.clock import ManualClock
from charging.database import open_pool
from postpaid import config as billing_config
from postpaid.accounts import BillingAccounts
from postpaid.collection import Collection
from postpaid.dunning_record import Decided, DunningRecord
from postpaid.receivables import Receivables
from postpaid.scripts import DunningArgs
from tests.conftest import SEALER

# The tests' clock: 2026-01-01 plus this many days.
DAYS = 40


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class CrashingRecord(DunningRecord):
    point = "none"
    at = 0
    made = 0

    async def commit(self, conn: AsyncConnection[TupleRow], d: Decided) -> None:
        await super().commit(conn, d)
        self.made += 1
        if self.made == self.at and self.point == "in_transaction":
            die()


class Crashing(Collection):
    async def _apply(self, conn: AsyncConnection[TupleRow], ba: str, application_id: str, args: DunningArgs) -> None:
        record = self.record
        assert isinstance(record, CrashingRecord)
        if record.made == record.at and record.point == "after_commit":
            die()
        await super()._apply(conn, ba, application_id, args)

    async def _redis(self, ba: str, args: DunningArgs) -> int:
        applied = await super()._redis(ba, args)
        record = self.record
        assert isinstance(record, CrashingRecord)
        if record.made == record.at and record.point == "after_redis":
            die()
        return applied


def collection(client: aioredis.Redis, record: DunningRecord, clock: ManualClock) -> Collection:
    config = billing_config.default()
    ledger = Receivables(record.pool, config.issuer.id, config.currency, config.issuer.credit_note_prefix)
    accounts = BillingAccounts(client, config, SEALER)
    kind = Crashing if isinstance(record, CrashingRecord) else Collection
    return kind(client, accounts, config, clock, record=record, ledger=ledger)


async def main(redis_url: str, database_url: str, point: str, at: str) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    pool = await open_pool(database_url, 2)
    record = CrashingRecord(pool)
    record.point, record.at = point, int(at)
    clock = ManualClock()
    clock.advance(seconds=DAYS * 86_400)
    await collection(client, record, clock).run()
    await pool.close()
    await client.aclose()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
