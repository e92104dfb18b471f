"""The provisioning worker against the real HTTP network simulator and a real Redis:
activation only after acknowledgement, retries with backoff, no lost or doubled
commands when the network fails, times out, flaps, or the worker is killed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from charging.clock import ManualClock
from charging.jobs import Job, Jobs
from provisioning.keys import DEAD, DUE
from provisioning.keys import network_line as line_key
from provisioning.network import HttpNetworkAdapter
from provisioning.simulator import NetworkSimulator
from provisioning.worker import Backoff, ProvisioningWorker, command_between
from tests.conftest import async_redis_client

LINE = "491700000001"
WORKER = "test-provisioning-worker"  # the Redis client name of the worker fixture


@pytest.fixture
async def worker(redis_url: str, network: NetworkSimulator, clock: ManualClock) -> AsyncIterator[ProvisioningWorker]:
    client = await async_redis_client(redis_url, client_name=WORKER)
    # Long enough for a loaded machine: the tests' clock does not move by itself, so a
    # command that timed out is not retried (the timeout's own test has a short one).
    adapter = HttpNetworkAdapter(network.url, timeout_s=5)
    yield ProvisioningWorker(client, adapter, clock, Backoff(first_s=1, max_s=60, max_attempts=4))
    await adapter.aclose()
    await client.aclose()


def mode(network: NetworkSimulator, name: str, delay_s: float = 0.5) -> None:
    httpx.post(network.url + "/control", json={"mode": name, "delay_s": delay_s})


async def acked(worker: ProvisioningWorker, line: str = LINE) -> str:
    return str(await worker.client.hget(line_key(line), "acked"))


async def blocked_on_the_change_stream(client: aioredis.Redis) -> None:
    """Wait until the worker fixture is blocked in XREAD on the change stream, so that a
    change made now can only reach it through the wake-up (Redis says so: CLIENT LIST
    shows its connection with flag ``b``). A poll on that fact, not a guess at a delay: the
    worker has no hook to say it is waiting, and Redis knows."""
    async with asyncio.timeout(30):  # a bound for a loaded machine, not a timing assertion
        while not any(c["name"] == WORKER and "b" in c["flags"] for c in await client.client_list()):  # noqa: ASYNC110
            await asyncio.sleep(0.005)


@pytest.mark.parametrize(
    ("acked", "desired", "command"),
    [
        ("none", "active", "ACTIVATE"),
        ("active", "barred_outgoing", "BAR_OUTGOING"),
        ("barred_outgoing", "suspended", "SUSPEND"),
        ("suspended", "active", "RESUME"),
        ("active", "terminated", "TERMINATE"),
        ("none", "terminated", None),
        ("active", "active", None),
    ],
)
def test_commands_between_states(acked: str, desired: str, command: str | None) -> None:
    assert command_between(acked, desired) == command


async def test_a_line_is_active_only_once_the_network_acknowledges(
    worker: ProvisioningWorker, network: NetworkSimulator
) -> None:
    await worker.desire(LINE, "active", product="mobile-prepaid")
    assert await acked(worker) == "none"
    assert await worker.reconcile_once() == 1
    assert await acked(worker) == "active"
    assert network.lines[LINE] == {"line": LINE, "state": "active", "applied": 1, "product": "mobile-prepaid"}
    assert await worker.reconcile_once() == 0  # nothing left to do
    assert await worker.client.zcard(DUE) == 0


async def test_network_down_is_retried_with_backoff_and_applied_once(
    worker: ProvisioningWorker, network: NetworkSimulator, clock: ManualClock
) -> None:
    mode(network, "fail")
    await worker.desire(LINE, "active")
    assert await worker.reconcile_once() == 0
    assert await worker.client.hget(line_key(LINE), "attempts") == "1"
    assert await worker.reconcile_once() == 0  # backing off: not due yet
    assert network.requests == 1
    mode(network, "ok")
    clock.advance(seconds=1)
    assert await worker.reconcile_once() == 1
    assert network.lines[LINE]["applied"] == 1


async def test_a_timeout_after_the_network_applied_the_command_does_not_double_it(
    worker: ProvisioningWorker, network: NetworkSimulator, clock: ManualClock
) -> None:
    patient, worker.network = worker.network, HttpNetworkAdapter(network.url, timeout_s=0.3)
    mode(network, "timeout")
    await worker.desire(LINE, "active")
    assert await worker.reconcile_once() == 0  # applied, but the answer never came
    await network.commands_received(1)  # (applied by the time it counts)
    assert network.lines[LINE]["applied"] == 1
    mode(network, "ok")
    await worker.network.aclose()
    worker.network = patient  # the retry is not what this test times
    clock.advance(seconds=1)
    assert await worker.reconcile_once() == 1
    assert network.lines[LINE]["applied"] == 1  # the same command id: applied once


async def test_a_flapping_network_ends_with_every_change_applied_once(
    worker: ProvisioningWorker, network: NetworkSimulator, clock: ManualClock
) -> None:
    for desired in ("active", "barred_outgoing", "suspended", "active", "terminated"):
        await worker.desire(LINE, desired)
        for attempt in range(10):
            mode(network, "fail" if attempt % 2 == 0 else "ok")
            if await worker.reconcile_once():
                break
            clock.advance(seconds=60)
        assert await acked(worker) == desired
    assert network.lines[LINE]["state"] == "terminated"
    assert network.lines[LINE]["applied"] == 5


async def test_changes_made_while_a_command_is_in_flight_are_not_lost(
    worker: ProvisioningWorker, network: NetworkSimulator
) -> None:
    await worker.desire(LINE, "active")
    network.hold()
    running = asyncio.create_task(worker.reconcile_once())
    await network.commands_received(1)
    await worker.desire(LINE, "suspended")  # arrives while ACTIVATE is on the wire
    network.release()
    await running
    await worker.reconcile_once()
    assert await acked(worker) == "suspended"
    assert network.lines[LINE]["state"] == "suspended"


async def test_a_worker_killed_mid_command_resumes_without_repeating_it(
    redis_url: str, network: NetworkSimulator, clock: ManualClock
) -> None:
    client = await async_redis_client(redis_url)
    adapter = HttpNetworkAdapter(network.url, timeout_s=5)
    first = ProvisioningWorker(client, adapter, clock)
    await first.desire(LINE, "active")
    network.hold()
    task = asyncio.create_task(first.reconcile_once())
    await network.commands_received(1)  # the command has reached the network
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    network.release()
    second = ProvisioningWorker(client, adapter, clock)  # a new worker after the crash
    assert await second.reconcile_once() == 1
    assert network.lines[LINE]["applied"] == 1
    assert await acked(second) == "active"
    await adapter.aclose()
    await client.aclose()


async def test_a_worker_killed_after_the_ack_before_acting_on_it_acts_on_it_later(
    redis_url: str, network: NetworkSimulator, clock: ManualClock
) -> None:
    """The acknowledgement recorded, the worker dies while acting on it (charging status,
    the order) and cannot even record the failure: the line must stay due, or its order
    stays IN_PROGRESS for ever (found by the chaos suite: CRM orders left undecided after
    a redis-server was killed)."""
    client = await async_redis_client(redis_url)
    adapter = HttpNetworkAdapter(network.url, timeout_s=5)
    first = ProvisioningWorker(client, adapter, clock)

    async def dies(line: str, state: str, product: str) -> None:
        raise asyncio.CancelledError  # killed mid-way: nothing after this runs

    first.on_ack = dies
    await first.desire(LINE, "active")
    with pytest.raises(asyncio.CancelledError):
        await first.reconcile_once()
    assert await acked(first) == "active"
    followed: list[tuple[str, str]] = []

    async def follows(line: str, state: str, product: str) -> None:
        followed.append((line, state))

    second = ProvisioningWorker(client, adapter, clock)  # a new worker after the crash
    second.on_ack = follows
    await second.reconcile_once()
    assert followed == [(LINE, "active")]
    assert network.lines[LINE]["applied"] == 1
    await adapter.aclose()
    await client.aclose()


async def test_repeated_failure_goes_to_the_dead_letter_list(
    worker: ProvisioningWorker, network: NetworkSimulator, clock: ManualClock
) -> None:
    mode(network, "fail")
    await worker.desire(LINE, "active")
    for _ in range(4):
        await worker.reconcile_once()
        clock.advance(seconds=60)
    assert await worker.client.lrange(DEAD, 0, -1) == [LINE]
    assert await worker.client.zcard(DUE) == 0
    assert await acked(worker) == "none"


def worker_job(worker: ProvisioningWorker, clock: ManualClock, interval_s: float, pass_: Any = None) -> Job:
    """The ``provisioning`` job as the server runs it (``pass_`` in place of
    ``reconcile_once`` when given)."""
    return Job(
        "provisioning", pass_ or worker.reconcile_once, interval_s=interval_s, clock=clock, wake=worker.changes()
    )


async def test_the_background_worker_is_woken_by_a_change(
    worker: ProvisioningWorker, network: NetworkSimulator, clock: ManualClock
) -> None:
    jobs = Jobs()
    jobs.start(worker_job(worker, clock, interval_s=3600))
    try:  # the job is stopped also when the test fails (a task left behind hangs the loop's teardown)
        await blocked_on_the_change_stream(worker.client)
        await worker.desire(LINE, "active")
        await network.commands_received(1, timeout_s=30)  # well within the hour's interval: woken
    finally:
        await jobs.stop()
    assert network.lines[LINE]["state"] == "active"
    assert jobs.dead == []


async def test_a_change_made_while_the_worker_reconciles_is_not_left_for_the_interval(
    worker: ProvisioningWorker, network: NetworkSimulator, clock: ManualClock
) -> None:
    """A change written after a pass looked at the due lines, before the worker waits on
    the change stream, wakes it at once (it used to start reading at ``$`` after its
    first pass and so waited the interval, an hour here)."""
    passes = 0

    async def reconcile_then_a_change() -> int:
        nonlocal passes
        done = await worker.reconcile_once()
        passes += 1
        if passes == 1:
            await worker.desire(LINE, "active")  # between the reconcile and the wait
        return done

    jobs = Jobs()
    jobs.start(worker_job(worker, clock, interval_s=3600, pass_=reconcile_then_a_change))
    try:
        await network.commands_received(1, timeout_s=30)
    finally:
        await jobs.stop()
    assert network.lines[LINE]["state"] == "active"
