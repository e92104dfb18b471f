"""A Redis that cannot answer *now* (loading its dataset after a restart, busy with a
script, a replica without its master) makes calls UNAVAILABLE, which clients retry,
never INTERNAL; start-up waits for it, within a bound."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import redis
import redis.asyncio as aioredis

from charging.clock import ManualClock
from charging.errors import StartupError, StorageUnavailable
from charging.redis_link import RedisLink
from charging.server import App
from charging.settings import Settings
from charging.store import storage_errors
from charging.v1 import common_pb2, topup_pb2
from tests.conftest import INITIAL, Stubs, free_port, session_request

# Loading one key takes this long (microseconds, redis-server's key-load-delay) until a
# test sets it to 0, and Redis answers clients between keys: its loading lasts as long as
# a test needs.
KEY_LOAD_DELAY_US = 200_000


class RedisProcess:
    """A redis-server of this module's own, on a free port, that tests stop and restart."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *args: str) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.proc = subprocess.Popen(
            [
                *(binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)),
                *("--save", "", "--appendonly", "no", "--loading-process-events-interval-bytes", "1024", *args),
            ],
            stdout=subprocess.DEVNULL,
        )

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def wait_for(self, error: type[Exception] | None) -> None:
        """Until PING raises ``error`` (None: answers)."""
        client = self.client()
        try:
            while True:
                assert self.proc is not None and self.proc.poll() is None
                try:
                    client.ping()
                    if error is None:
                        return
                except redis.RedisError as exc:
                    if error is not None and isinstance(exc, error):
                        return
                time.sleep(0.02)
        finally:
            client.close()

    def restart_loading(self) -> None:
        """Save the dataset padded with 300 keys of 1 KB (one event-processing step each),
        restart, and return while Redis loads it (until ``finish_loading``)."""
        client = self.client()
        client.mset({f"padding:{i}": os.urandom(1024) for i in range(300)})
        client.save()
        client.shutdown(nosave=True)
        client.close()
        assert self.proc is not None
        self.proc.wait(10)
        self.start("--key-load-delay", str(KEY_LOAD_DELAY_US))
        self.wait_for(redis.BusyLoadingError)

    def finish_loading(self) -> None:
        client = self.client()
        client.config_set("key-load-delay", 0)  # CONFIG is served while loading
        client.close()
        self.wait_for(None)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path)
    server.start()
    server.wait_for(None)
    yield server
    server.stop()


@pytest.fixture
async def served(own_redis: RedisProcess, settings: Settings, clock: ManualClock) -> AsyncIterator[Stubs]:
    app = App(replace(settings, redis_url=own_redis.url), clock=clock, run_background=False)
    await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
    stubs = Stubs.on(channel)
    await stubs.subscriber(balance=5_000_000)
    yield stubs
    await channel.close()
    await app.stop()


def charge(session_id: str) -> object:
    return session_request(session_id, INITIAL, 0, [{"rating_group": 10, "requested": {}}])


def recharge(key: str) -> topup_pb2.RechargeRequest:
    return topup_pb2.RechargeRequest(
        subscriber=common_pb2.SubscriberId(msisdn="491700000001"),
        amount_micros=1_000_000,
        channel=topup_pb2.CHANNEL_RETAIL,
        idempotency_key=key,
    )


async def statuses(stubs: Stubs) -> dict[str, grpc.StatusCode]:
    """The status of a session, a top-up and a balance query."""
    calls = {
        "ChargeSession": stubs.charging.ChargeSession(charge("s2")),
        "Recharge": stubs.topup.Recharge(recharge("r1")),
        "GetBalance": stubs.topup.GetBalance(
            topup_pb2.BalanceRequest(subscriber=common_pb2.SubscriberId(msisdn="491700000001"))
        ),
    }
    found = {}
    for name, call in calls.items():
        try:
            await call
            found[name] = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            found[name] = exc.code()
    return found


UNAVAILABLE = dict.fromkeys(("ChargeSession", "Recharge", "GetBalance"), grpc.StatusCode.UNAVAILABLE)


async def test_calls_while_redis_loads_its_dataset_are_unavailable_then_succeed(
    served: Stubs, own_redis: RedisProcess
) -> None:
    assert (await served.charging.ChargeSession(charge("s1"))).result_code == 2001
    await asyncio.to_thread(own_redis.restart_loading)
    assert await statuses(served) == UNAVAILABLE
    await asyncio.to_thread(own_redis.finish_loading)
    assert await statuses(served) == dict.fromkeys(UNAVAILABLE, grpc.StatusCode.OK)
    assert (await served.balance()).balance_micros == 6_000_000


def loop_until_killed(client: redis.Redis) -> None:
    with pytest.raises(redis.ResponseError, match="killed"):
        client.eval("while true do end", 0)
    client.close()


async def test_calls_while_a_script_keeps_redis_busy_are_unavailable(served: Stubs, own_redis: RedisProcess) -> None:
    admin = own_redis.client()
    admin.config_set("busy-reply-threshold", 10)  # milliseconds before others get BUSY
    looping = threading.Thread(target=loop_until_killed, args=(own_redis.client(),))
    looping.start()
    try:
        own_redis.wait_for(redis.ResponseError)
        assert await statuses(served) == UNAVAILABLE
    finally:
        admin.script_kill()
        looping.join()
        admin.close()
    assert (await statuses(served))["ChargeSession"] == grpc.StatusCode.OK


async def test_start_up_waits_for_redis_to_load_and_says_so_within_a_bound(
    own_redis: RedisProcess, settings: Settings, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    await asyncio.to_thread(own_redis.restart_loading)
    settings = replace(settings, redis_url=own_redis.url, redis_ready_timeout_s=0.2)
    impatient = App(settings, clock=clock, run_background=False)
    with pytest.raises(StartupError, match=re.escape("is still loading its dataset after 0.2 s")):
        await impatient.start()
    await impatient.stop()

    app = App(replace(settings, redis_ready_timeout_s=60), clock=clock, run_background=False)
    with caplog.at_level(logging.INFO, logger="charging.redis"):
        starting = asyncio.create_task(app.start())
        while not any(getattr(r, "reason", "") == "loading its dataset" for r in caplog.records):
            assert not starting.done(), starting.exception()
            await asyncio.sleep(0.02)
        assert not starting.done()
        await asyncio.to_thread(own_redis.finish_loading)
        await starting
    try:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
        stubs = Stubs.on(channel)
        await stubs.subscriber(balance=1_000_000)
        assert (await stubs.charging.ChargeSession(charge("after"))).result_code == 2001
        await channel.close()
    finally:
        await app.stop()


@pytest.mark.parametrize("client", ["pipelined link", "pooled client"])
async def test_a_replica_without_its_master_is_unavailable(tmp_path: Path, client: str) -> None:
    replica = RedisProcess(tmp_path)
    replica.start("--replicaof", "127.0.0.1", str(free_port()), "--replica-serve-stale-data", "no")
    try:
        await asyncio.to_thread(replica.wait_for, redis.exceptions.MasterDownError)
        with pytest.raises(StorageUnavailable, match="without its master"), storage_errors():
            if client == "pipelined link":
                link = RedisLink(replica.url)
                try:
                    await link.execute("GET", "k")
                finally:
                    await link.aclose()
            else:
                pooled = aioredis.Redis.from_url(replica.url)
                try:
                    await pooled.get("k")
                finally:
                    await pooled.aclose()
    finally:
        replica.stop()


def test_a_worker_process_without_redis_gives_up_after_the_bound_in_one_line() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    env = {
        **os.environ,
        "CHARGING_REDIS_URL": url,
        "CHARGING_NETWORK_URL": "http://127.0.0.1:9",
        "CHARGING_REDIS_READY_TIMEOUT_S": "0.3",
    }
    done = subprocess.run(
        [sys.executable, "-m", "charging.cli", "worker"], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"error: redis at {url} is still not reachable after 0.3 s (CHARGING_REDIS_READY_TIMEOUT_S)"
    ]
