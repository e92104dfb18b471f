"""The embedded redis-server never outlives its server and never runs twice on one data
directory: a server killed with SIGKILL takes its Redis with it, and the restarted one
finds every acknowledged change."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis

from charging.embedded_redis import LOCK_FILE, EmbeddedRedis, redis_command
from charging.errors import StartupError
from charging.v1 import admin_pb2, admin_pb2_grpc, common_pb2, topup_pb2, topup_pb2_grpc
from tests.server_process import serve, stop, wait_serving

MSISDN = "491700000077"


def working_in(directory: Path) -> list[int]:
    """Pids of the processes whose working directory is ``directory``: the redis-servers
    on it (redis-server changes into its data directory)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and Path(os.readlink(entry / "cwd")) == directory:
                pids.append(int(entry.name))
        except OSError:
            pass
    return pids


@pytest.fixture
def directory(tmp_path: Path) -> Iterator[Path]:
    """A data directory; whatever still runs on it at the end is stopped."""
    path = (tmp_path / "redis").resolve()
    path.mkdir()
    yield path
    for pid in working_in(path):
        os.kill(pid, signal.SIGKILL)


def test_a_server_killed_with_sigkill_takes_its_redis_along_and_no_acknowledged_change_is_lost(
    directory: Path, app_database_url: str
) -> None:
    first, port = serve(directory, app_database_url)
    try:
        wait_serving(first, port)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            admin_pb2_grpc.AdminStub(channel).CreateSubscriber(
                admin_pb2.CreateSubscriberRequest(msisdn=MSISDN, plan_id="default", initial_balance_micros=1_000_000)
            )
            answer = topup_pb2_grpc.TopUpStub(channel).Recharge(
                topup_pb2.RechargeRequest(
                    subscriber=common_pb2.SubscriberId(msisdn=MSISDN),
                    amount_micros=2_500_000,
                    channel=topup_pb2.CHANNEL_RETAIL,
                    idempotency_key="before-the-kill",
                )
            )
        assert answer.balance.balance_micros == 3_500_000
    finally:
        first.kill()
        first.communicate()
    # Its redis-server follows it (the parent-death signal), by a clean shutdown; the
    # per-test timeout bounds the wait.
    while working_in(directory):
        time.sleep(0.02)
    assert "Received SIGTERM" in (directory / "redis.log").read_text()

    second, _ = serve(directory, app_database_url, port)
    try:
        wait_serving(second, port)
        running = working_in(directory)
        assert len(running) == 1, f"redis-servers on the data directory: {running}"
        assert Path(f"/proc/{running[0]}/comm").read_text().strip() == "redis-server"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            balance = topup_pb2_grpc.TopUpStub(channel).GetBalance(
                topup_pb2.BalanceRequest(subscriber=common_pb2.SubscriberId(msisdn=MSISDN))
            )
        assert balance.balance_micros == 3_500_000
    finally:
        stop(second)
    assert second.returncode == 0
    assert working_in(directory) == []


def start_stray(directory: Path, lock_fd: int | None = None) -> subprocess.Popen[bytes]:
    """A redis-server on ``directory`` that no live server owns, holding a set key."""
    proc = subprocess.Popen(
        redis_command("redis-server", directory, "always"),
        stdout=subprocess.DEVNULL,
        pass_fds=() if lock_fd is None else (lock_fd,),
    )
    client = redis.Redis(unix_socket_path=str(directory / "redis.sock"))
    while True:
        assert proc.poll() is None
        try:
            client.set("left", "behind")
            break
        except redis.ConnectionError:
            time.sleep(0.02)
    client.close()
    return proc


async def started_alone(directory: Path, caplog: pytest.LogCaptureFixture, stray: subprocess.Popen[bytes]) -> None:
    """Start an EmbeddedRedis on ``directory``: the stray is stopped, said so in the log,
    its data kept, and one redis-server runs there."""
    embedded = EmbeddedRedis("redis-server", directory)
    with caplog.at_level(logging.WARNING, logger="charging.redis"):
        url = await embedded.start()
    try:
        assert stray.wait(timeout=10) == 0  # it shut down cleanly: SIGTERM flushes the AOF
        assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(stray.pid in getattr(r, "pids", []) for r in caplog.records)
        assert working_in(directory) == [embedded._proc.pid if embedded._proc else -1]
        client = redis.Redis.from_url(url)
        assert client.get("left") == b"behind"
        client.close()
    finally:
        await embedded.stop()


async def test_a_redis_server_running_on_the_directory_without_its_lock_is_stopped_first(
    directory: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await started_alone(directory, caplog, start_stray(directory))


def start_orphan(directory: Path) -> subprocess.Popen[bytes]:
    """What SIGKILL of a server leaves when its redis-server missed the parent-death
    signal: the redis-server holds the locked file, which names a process that no longer
    runs (pids stay below pid_max)."""
    gone = int(Path("/proc/sys/kernel/pid_max").read_text())
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, f"{gone} 1\n".encode())
    stray = start_stray(directory, lock_fd=fd)
    os.close(fd)
    return stray


async def test_a_redis_server_holding_the_lock_of_a_dead_server_is_stopped_first(
    directory: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await started_alone(directory, caplog, start_orphan(directory))


async def test_a_second_server_on_a_directory_in_use_refuses_to_start(directory: Path) -> None:
    first = EmbeddedRedis("redis-server", directory)
    await first.start()
    try:
        with pytest.raises(StartupError, match=f"data directory {directory} is in use by process {os.getpid()}"):
            await EmbeddedRedis("redis-server", directory).start()
        assert len(working_in(directory)) == 1
    finally:
        await first.stop()
    again = EmbeddedRedis("redis-server", directory)  # free once the first has stopped
    await again.start()
    await again.stop()
