"""Backups of Redis as the runbook (docs/operations.md) takes and restores them: a live
server's Redis is backed up with ops/redis/backup.sh while it serves, changes go on after
the backup, and each backup restored into a fresh redis-server gives a charging server
the balances of the moment of the backup.

* RDB: restored with the AOF off, then the AOF turned on from it (CONFIG SET appendonly
  yes) and the server restarted on that AOF alone.
* AOF: the directory copied as it is into a fresh data directory."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import grpc
import pytest
import redis

from charging.clock import ManualClock
from charging.embedded_redis import redis_command
from charging.server import App
from charging.settings import Settings
from charging.v1 import common_pb2, topup_pb2
from tests.conftest import DATA_KEY, INITIAL, TERMINATE, Stubs, free_port, session_request

pytestmark = pytest.mark.timeout(180)
BACKUP = Path(__file__).resolve().parent.parent / "ops" / "redis" / "backup.sh"
ALICE, BOB = "491700000001", "491700000002"


@contextmanager
def redis_server(directory: Path, *options: str) -> Iterator[tuple[str, int]]:
    """redis-server on ``directory`` as the embedded one runs (AOF on, no RDB saves), on a
    free port, with ``options`` last (they win); its URL and port."""
    binary = shutil.which("redis-server")
    assert binary is not None
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen([*redis_command(binary, directory, "always", port=port), *options])
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.ping():
                    break
            except (redis.ConnectionError, redis.BusyLoadingError):
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield url, port
    finally:
        client.close()
        proc.terminate()  # SIGTERM: a clean shutdown, the AOF flushed
        proc.wait(30)


@asynccontextmanager
async def charging_server(url: str, database_url: str) -> AsyncIterator[Stubs]:
    settings = Settings(
        grpc_address="127.0.0.1:0",
        metrics_address="",
        redis_url=url,
        database_url=database_url,
        data_key=DATA_KEY,
        shutdown_delay_s=0.0,
        grace_period_s=1.0,
    )
    app = App(settings, clock=ManualClock(), run_background=False)
    await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
    try:
        yield Stubs.on(channel)
    finally:
        await channel.close()
        await app.stop()


async def balances(stubs: Stubs) -> dict[str, tuple[int, int, int]]:
    """Each subscriber's (balance, reserved, units left in its buckets)."""
    out = {}
    for msisdn in (ALICE, BOB):
        b = await stubs.topup.GetBalance(topup_pb2.BalanceRequest(subscriber=common_pb2.SubscriberId(msisdn=msisdn)))
        out[msisdn] = (b.balance_micros, b.reserved_micros, sum(x.amount for x in b.buckets))
    return out


def recharge(msisdn: str, amount: int, key: str) -> topup_pb2.RechargeRequest:
    return topup_pb2.RechargeRequest(
        subscriber=common_pb2.SubscriberId(msisdn=msisdn),
        amount_micros=amount,
        channel=topup_pb2.CHANNEL_RETAIL,
        idempotency_key=key,
    )


def back_up(port: int, dest: Path) -> None:
    done = subprocess.run(
        ["sh", str(BACKUP), str(dest), "-h", "127.0.0.1", "-p", str(port)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert (dest / "dump.rdb").stat().st_size > 0
    assert (dest / "appendonlydir").is_dir()


async def test_a_backup_restored_into_a_fresh_redis_gives_the_balances_of_its_moment(
    tmp_path: Path, app_database_url: str
) -> None:
    with redis_server(tmp_path / "live") as (url, port):
        async with charging_server(url, app_database_url) as stubs:
            await stubs.subscriber(msisdn=ALICE, balance=5_000_000)
            await stubs.subscriber(msisdn=BOB, balance=7_500_000, imsi="262011234567891")
            ask = [{"rating_group": 10, "requested": {"time_s": 300}}]
            assert (await stubs.charging.ChargeSession(session_request("s1", INITIAL, 0, ask))).result_code == 2001
            used = [{"rating_group": 10, "used": {"time_s": 135}}]
            assert (await stubs.charging.ChargeSession(session_request("s1", TERMINATE, 1, used))).result_code == 2001
            await stubs.topup.Recharge(recharge(BOB, 1_000_000, "r1"))
            await stubs.topup.BuyBundle(
                topup_pb2.BuyBundleRequest(
                    subscriber=common_pb2.SubscriberId(msisdn=BOB),
                    bundle_id="sms-100",
                    channel=topup_pb2.CHANNEL_APP,
                    idempotency_key="b1",
                )
            )
            at_backup = await balances(stubs)
            assert at_backup[ALICE][0] == 5_000_000 - 300_000  # 3 started minutes at 0.10
            assert at_backup[BOB][2] == 100  # the SMS bundle

            back_up(port, tmp_path / "backup")

            await stubs.topup.Recharge(recharge(ALICE, 2_000_000, "r2"))  # after the backup: not in it
            assert (await balances(stubs))[ALICE] != at_backup[ALICE]

    # The pitfall the runbook warns of: an RDB alone under `appendonly yes` is ignored
    # (Redis starts from a new, empty AOF).
    pitfall = tmp_path / "restored-rdb-wrongly"
    pitfall.mkdir()
    shutil.copy(tmp_path / "backup" / "dump.rdb", pitfall / "dump.rdb")
    with redis_server(pitfall) as (url, _port):
        client = redis.Redis.from_url(url)
        assert client.dbsize() == 0
        client.close()

    # RDB: into a fresh directory with the AOF off, then the AOF made from it, then a
    # restart on the AOF alone.
    rdb_dir = tmp_path / "restored-rdb"
    rdb_dir.mkdir()
    shutil.copy(tmp_path / "backup" / "dump.rdb", rdb_dir / "dump.rdb")
    with redis_server(rdb_dir, "--appendonly", "no") as (url, _port):
        async with charging_server(url, app_database_url) as stubs:
            assert await balances(stubs) == at_backup
        client = redis.Redis.from_url(url, decode_responses=True)
        client.config_set("appendonly", "yes")
        deadline = time.monotonic() + 60
        while (info := client.info("persistence"))["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"]:
            assert time.monotonic() < deadline, "the AOF was not written"
            await asyncio.sleep(0.05)
        assert info["aof_last_bgrewrite_status"] == "ok"
        client.close()
    (rdb_dir / "dump.rdb").unlink()
    with redis_server(rdb_dir) as (url, _port):
        async with charging_server(url, app_database_url) as stubs:
            assert await balances(stubs) == at_backup

    # AOF: the directory as copied.
    aof_dir = tmp_path / "restored-aof"
    aof_dir.mkdir()
    shutil.copytree(tmp_path / "backup" / "appendonlydir", aof_dir / "appendonlydir")
    with redis_server(aof_dir) as (url, _port):
        async with charging_server(url, app_database_url) as stubs:
            assert await balances(stubs) == at_backup
