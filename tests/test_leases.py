"""Job leases (charging/leases.py) on a real Redis: one holder at a time, given back on
stop, taken over when the holder stops renewing; and across real server processes, a job
whose holder is killed with SIGKILL is taken over by another process."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import redis
import redis.asyncio as aioredis

from charging.clock import ManualClock
from charging.jobs import Job, Jobs
from charging.leases import LEASE, Lease, holder_of
from charging.script_args import LeaseExtend
from tests import server_process

# The lease period of the tests where one holder must keep its lease while another asks
# for it: the holder renews every third of it, so a renewal may come up to two thirds of
# a period late (a loaded machine's stalled event loop) before the other takes the lease.
LEASE_S = 2.0


async def test_one_holder_at_a_time_and_a_released_lease_is_taken_at_once(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    a, b = Lease(client, "sweeper", 30, "host:1:a"), Lease(client, "sweeper", 30, "host:2:b")
    assert await a.hold()
    assert not await b.hold()
    assert await holder_of(client, "sweeper") == "host:1:a"
    await a.release()
    assert await b.hold()
    assert not await a.hold()
    await b.release()
    assert await holder_of(client, "sweeper") is None
    await client.aclose()


async def test_only_the_holder_extends_or_releases(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    await client.set("lease:{census}", "someone-else", px=60_000)
    assert await LEASE(client, ["lease:{census}"], LeaseExtend("host:1:a", 1)) == 0
    lease = Lease(client, "census", 30, "host:1:a")
    lease._valid_until = 1e18  # believes it holds it: its release must not delete another's lease
    await lease.release()
    assert await client.get("lease:{census}") == "someone-else"
    assert await client.pttl("lease:{census}") > 1000
    await client.aclose()


async def test_a_holder_that_stops_renewing_is_taken_over(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    a, b = Lease(client, "renewer", LEASE_S, "host:1:a"), Lease(client, "renewer", LEASE_S, "host:2:b")
    assert await a.hold()
    # The holder's renewals keep it past its first lease period and more ...
    for _ in range(5):
        await asyncio.sleep(b.retry_s)
        assert not await b.hold()
    # ... and when they stop (the process hangs or dies), the key expires and b takes it.
    assert a._keeper is not None
    a._keeper.cancel()
    for _ in range(200):
        if await b.hold():
            break
        await asyncio.sleep(b.retry_s)
    assert await holder_of(client, "renewer") == "host:2:b"
    await b.release()
    await client.aclose()


async def test_jobs_under_one_lease_run_in_one_process_and_hand_over_on_stop(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    clock = ManualClock()
    runs = {"a": 0, "b": 0}

    def job(name: str) -> Job:
        async def pass_() -> None:
            runs[name] += 1

        return Job("census", pass_, interval_s=0.01, clock=clock, gate=Lease(client, "census", LEASE_S, f"h:{name}"))

    first, second = Jobs(), Jobs()
    first.start(job("a"))
    await until(lambda: runs["a"] >= 20)
    second.start(job("b"))
    start = runs["a"]
    await until(lambda: runs["a"] >= start + 20)
    assert runs["b"] == 0  # the holder ran twenty passes meanwhile, the other none
    await first.stop()  # gives the lease back: the other process takes the job
    await until(lambda: runs["b"] >= 5)
    await second.stop()
    await client.aclose()


async def until(done: Callable[[], object], step_s: float = 0.02, steps: int = 1500) -> None:
    """Poll until ``done()`` is true (a bounded wait, not a timing assertion)."""
    for _ in range(steps):
        if done():
            return
        await asyncio.sleep(step_s)
    raise AssertionError("never happened")


def holder_pid(r: redis.Redis, job: str) -> int | None:
    token = r.get(f"lease:{{{job}}}")
    return None if token is None else int(str(token).split(":")[1])


async def test_a_killed_holder_process_is_taken_over_by_another(
    redis_url: str, r: redis.Redis, app_database_url: str, tmp_path: Path
) -> None:
    env = {"CHARGING_LEASE_S": "1", "CHARGING_CENSUS_INTERVAL_S": "0.2"}
    one, port_one = server_process.serve(tmp_path / "a", app_database_url, redis_url=redis_url, **env)
    two, port_two = server_process.serve(tmp_path / "b", app_database_url, redis_url=redis_url, **env)
    try:
        server_process.wait_serving(one, port_one)
        server_process.wait_serving(two, port_two)
        pids = {one.pid, two.pid}
        await until(lambda: holder_pid(r, "sweeper") in pids and holder_pid(r, "census") in pids)
        victim = one if holder_pid(r, "sweeper") == one.pid else two
        survivor = two if victim is one else one
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)
        # Within a lease period of the kill the survivor holds every job lease.
        for job in ("sweeper", "renewer", "census", "provisioning", "order_resumer"):
            await until(lambda job=job: holder_pid(r, job) == survivor.pid)  # type: ignore[misc]
    finally:
        for proc in (one, two):
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)
