"""Counts open sessions and reserved money in Redis for the gauges.

Walks only the accounts in the sweeper's index (those that may have open sessions), in
pipelined batches, so the figures are right across server processes and restarts.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from charging import keys, metrics
from charging.store import storage_errors


@dataclass(frozen=True)
class Census:
    accounts: int
    sessions: int
    reserved_micros: int


async def take_census(client: aioredis.Redis, batch: int = 500) -> Census:
    accounts = sessions = reserved = 0
    cursor = 0
    with storage_errors():
        while True:
            cursor, members = await client.zscan(keys.SWEEP_DUE, cursor, count=batch)
            if members:
                pipe = client.pipeline(transaction=False)
                for member, _score in members:
                    account = str(member)
                    pipe.zcard(keys.sessions(account))
                    pipe.hget(keys.account(account), "reserved")
                counts = await pipe.execute()
                for open_sessions, held in zip(counts[::2], counts[1::2], strict=True):
                    if open_sessions:
                        accounts += 1
                        sessions += int(open_sessions)
                        reserved += int(held or 0)
            if cursor == 0:
                return Census(accounts, sessions, reserved)


async def record_census(client: aioredis.Redis) -> None:
    """One pass of the ``census`` job: count, and set the gauges."""
    c = await take_census(client)
    metrics.ACTIVE_SESSIONS.set(c.sessions)
    metrics.RESERVED_MICROS.set(c.reserved_micros)
    metrics.ACCOUNTS_WITH_SESSIONS.set(c.accounts)
