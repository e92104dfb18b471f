"""A process running the start-time moves (``charging/upgrade.py``) that halts half way,
for a test to kill it with SIGKILL: in the invoice move, after the bill runs' rows are
committed and before their Redis list is deleted (the window a repeated move must not
write twice). Starts moving when a line comes on its stdin (the test's data is ready),
prints ``halted`` and waits for ever.

    python -m tests.upgrade_mover REDIS_URL DATABASE_URL LEASE_S  (the key ring in CHARGING_DATA_KEY)
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import redis.asyncio as aioredis

from charging import upgrade
from charging.clock import ManualClock
from charging.database import Pool, open_pool
from postpaid import config as billing_config
from postpaid import legacy
from provisioning.sealing import Sealer

HOLDER = "dead-mover"


class Halting:
    """A client that stops for ever at its first DELETE."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def delete(self, *names: str) -> int:
        print("halted", flush=True)
        await asyncio.Event().wait()
        return 0


async def main(redis_url: str, database_url: str, lease_s: float) -> None:
    original = legacy._move_runs

    async def halting_runs(client: aioredis.Redis, pool: Pool) -> int:
        halting: Any = Halting(client)
        return await original(halting, pool)

    legacy._move_runs = halting_runs  # type: ignore[assignment]
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    pool = await open_pool(database_url, 2)
    sealer = Sealer.from_text(os.environ["CHARGING_DATA_KEY"], "tests")
    await asyncio.to_thread(sys.stdin.readline)
    await upgrade.move_all(client, pool, billing_config.default(), sealer, ManualClock(), lease_s, HOLDER)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
