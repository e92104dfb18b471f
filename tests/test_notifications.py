"""The notification relay: at least once, never lost, also with relays racing."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

from charging import keys
from charging.clock import ManualClock
from charging.jobs import Job, Jobs
from charging.notifications import Notifier


async def test_racing_relays_lose_nothing(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    outbox = keys.outbox("9")
    first, second = Notifier(client), Notifier(client)

    async def producer() -> None:
        for n in range(300):
            await client.rpush(outbox, f"bundle_80 b{n} 1 {n} {n}")
            if n % 7 == 0:
                await asyncio.sleep(0)

    async def relays() -> None:
        for _ in range(40):
            await asyncio.gather(first.relay("9", batch=13), second.relay("9", batch=17))

    await asyncio.gather(producer(), relays())
    await first.relay("9")
    entries: Any = await client.xrange(keys.NOTIFICATIONS)
    assert {fields["bucket"] for _id, fields in entries} == {f"b{n}" for n in range(300)}
    assert await client.llen(outbox) == 0
    await client.aclose()


async def test_a_wake_during_a_relay_relays_again(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    notifier = Notifier(client)
    jobs = Jobs()
    jobs.start(Job("notifications", notifier.relay_woken, interval_s=3600, clock=ManualClock(), wake=notifier.wakeup))
    try:
        await client.rpush(keys.outbox("9"), "low_balance - money 5 1")
        notifier.wake("9")
        await client.rpush(keys.outbox("9"), "bundle_100 b1 1 0 2")
        notifier.wake("9")  # while the first relay may still run
        await notifier.idle()
    finally:
        await jobs.stop()
    assert await client.xlen(keys.NOTIFICATIONS) == 2
    assert await client.llen(keys.outbox("9")) == 0
    await client.aclose()
