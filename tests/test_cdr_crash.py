"""The record relay killed (kill -9) between its commit to PostgreSQL and its trim of the
outboxes: real server processes, a real redis-server and PostgreSQL. Nothing is lost and
nothing is counted twice: the next server finds the records at start (its scan) and the
tables keep each record once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import psycopg
import redis

from charging import keys
from charging.v1 import admin_pb2, admin_pb2_grpc, charging_pb2_grpc, topup_pb2_grpc
from tests.conftest import DATA_KEY, MSISDN, free_port, sms_request
from tests.server_process import stop, wait_serving
from tests.test_topups import recharge

START = 10_000_000
WAIT_S = 60.0  # a bound on waiting for the processes, never an assertion on time


def start(
    module: str, redis_url: str, database_url: str, tmp_path: Path, **env: str
) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    environ = {
        **os.environ,
        "CHARGING_GRPC_ADDRESS": f"127.0.0.1:{port}",
        "CHARGING_METRICS_ADDRESS": "",
        "CHARGING_NCHF_ADDRESS": "",
        "CHARGING_REDIS_URL": redis_url,
        "CHARGING_REDIS_DIR": str(tmp_path / "redis"),
        "CHARGING_DATABASE_URL": database_url,
        "CHARGING_DATA_KEY": DATA_KEY,
        "CHARGING_BILLING_INTERVAL_S": "0",
        "CHARGING_SHUTDOWN_DELAY_S": "0",
        **env,
    }
    argv = [sys.executable, "-m", module] + (["serve"] if module == "charging.cli" else [])
    proc = subprocess.Popen(argv, env=environ, stderr=subprocess.PIPE, text=True)
    wait_serving(proc, port)
    return proc, port


def wait_for(what: str, done: object) -> None:
    deadline = time.monotonic() + WAIT_S
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.05)


def counts(database_url: str, account: str) -> tuple[int, int, int, int]:
    """Usage rows, distinct usage ids, audit entries, distinct audit ids of the account."""
    with psycopg.connect(database_url) as conn:
        u = conn.execute(
            "SELECT count(*), count(DISTINCT record_id) FROM usage_records WHERE account = %s", (account,)
        ).fetchone()
        a = conn.execute(
            "SELECT count(*), count(DISTINCT entry_id) FROM audit WHERE subject = %s", ("account:" + account,)
        ).fetchone()
    assert u is not None and a is not None
    return int(u[0]), int(u[1]), int(a[0]), int(a[1])


def test_kill_9_between_commit_and_trim_loses_nothing_and_repeats_nothing(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    mark = tmp_path / "committed"
    first, port = start("tests.cdr_crash_server", redis_url, database_url, tmp_path, CDR_CRASH_MARK=str(mark))
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            admin = admin_pb2_grpc.AdminStub(channel)
            account = admin.CreateSubscriber(
                admin_pb2.CreateSubscriberRequest(msisdn=MSISDN, initial_balance_micros=START), timeout=10
            ).account_id
            charging = charging_pb2_grpc.ChargingStub(channel)
            topup = topup_pb2_grpc.TopUpStub(channel)
            for i in range(20):
                assert charging.ChargeEvent(sms_request(f"sms-{i}"), timeout=10).result_code == 2001
                if i % 4 == 0:
                    topup.Recharge(recharge(1_000_000, f"t{i}"), timeout=10)
        wait_for("the relay's first commit", mark.exists)
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
        outbox = keys.cdr_outbox(account)
        committed = counts(database_url, account)
        assert committed[0] + committed[2] > 0  # the relay committed ...
        assert client.llen(outbox) == 25  # ... and trimmed nothing: killed in between

        second, _port = start("charging.cli", redis_url, database_url, tmp_path)
        try:
            wait_for("the next server to relay the outbox", lambda: not client.exists(outbox))
        finally:
            stop(second)
        assert counts(database_url, account) == (20, 20, 5, 5)
        with psycopg.connect(database_url) as conn:
            row = conn.execute("SELECT sum(money_micros) FROM usage_records WHERE account = %s", (account,)).fetchone()
        balance = int(client.hget(keys.account(account), "balance") or 0)
        assert row is not None and START + 5 * 1_000_000 - int(row[0]) == balance
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate(timeout=30)
        client.close()
