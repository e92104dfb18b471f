"""Counts open sessions and reserved money in Redis for the gauges.

Walks only the accounts in the sweeper's index (those that may have open sessions), in
pipelined batches, so the figures are right across server processes and restarts. An
account whose deadline in that index passed more than ``OVERDUE_MS`` ago has reservations
(or expired buckets) the sweeper has not released: no sweeper runs, or it keeps failing.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from charging import keys, metrics
from charging.store import storage_errors

# Longer than a sweeper lease (30 s), which moves a taken account's deadline on meanwhile.
OVERDUE_MS = 60_000


@dataclass(frozen=True)
class Census:
    accounts: int
    sessions: int
    reserved_micros: int
    overdue_accounts: int = 0


async def take_census(client: aioredis.Redis, batch: int = 500, now_ms: int | None = None) -> Census:
    """With ``now_ms``, also the accounts overdue for the sweeper."""
    accounts = sessions = reserved = overdue = 0
    with storage_errors():
        for due_key, _epochs in keys.SWEEP_SHARDS:
            cursor = 0
            while True:
                cursor, members = await client.zscan(due_key, cursor, count=batch)
                if members:
                    pipe = client.pipeline(transaction=False)
                    for member, due_ms in members:
                        account = str(member)
                        if now_ms is not None and float(due_ms) < now_ms - OVERDUE_MS:
                            overdue += 1
                        pipe.zcard(keys.sessions(account))
                        pipe.hget(keys.account(account), "reserved")
                    counts = await pipe.execute()
                    for open_sessions, held in zip(counts[::2], counts[1::2], strict=True):
                        if open_sessions:
                            accounts += 1
                            sessions += int(open_sessions)
                            reserved += int(held or 0)
                if cursor == 0:
                    break
    return Census(accounts, sessions, reserved, overdue)


async def record_census(client: aioredis.Redis, now_ms: int | None = None) -> None:
    """One pass of the ``census`` job: count, and set the gauges."""
    c = await take_census(client, now_ms=now_ms)
    metrics.SWEEP_OVERDUE.set(c.overdue_accounts)
    metrics.ACTIVE_SESSIONS.set(c.sessions)
    metrics.RESERVED_MICROS.set(c.reserved_micros)
    metrics.ACCOUNTS_WITH_SESSIONS.set(c.accounts)
