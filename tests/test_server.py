"""The server as an operator runs it: health, reflection, metrics, lifecycle, embedded Redis, CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from charging.background import cancel_and_wait
from charging.clock import ManualClock
from charging.embedded_redis import EmbeddedRedis
from charging.server import App
from charging.settings import Settings
from tests.conftest import INITIAL, Stubs, free_port, session_request


async def test_health_and_reflection(stubs: Stubs) -> None:
    health = health_pb2_grpc.HealthStub(stubs.channel)
    for service in ("", "charging.v1.Charging", "charging.v1.TopUp", "charging.v1.Admin"):
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(stubs.channel)
    call = refl.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    answer = await call.read()
    await call.done_writing()
    names = {s.name for s in answer.list_services_response.service}
    assert {"charging.v1.Charging", "charging.v1.TopUp", "charging.v1.Admin", "grpc.health.v1.Health"} <= names


async def test_metrics_endpoint_counts_requests_without_personal_data(settings: Settings, clock: ManualClock) -> None:
    app = App(replace(settings, metrics_address="127.0.0.1:0"), clock=clock, run_background=True)
    await app.start()
    try:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")

        stubs = Stubs.on(channel)
        await stubs.subscriber(msisdn="491712345678", balance=1_000_000)
        await stubs.charging.ChargeSession(
            session_request("m1", INITIAL, 0, [{"rating_group": 10, "requested": {}}], msisdn="491712345678")
        )
        await stubs.charging.ChargeSession(session_request("m2", INITIAL, 0, [], msisdn="491799999999"))
        url = f"http://127.0.0.1:{app.metrics_port}/metrics"
        async with asyncio.timeout(10):  # until the census (every 0.05 s) has counted them
            while True:
                text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
                if "charging_active_sessions 1.0" in text:
                    break
                await asyncio.sleep(0.05)
        await channel.close()
    finally:
        await app.stop()
    assert 'charging_requests_total{method="ChargeSession",result="2001"}' in text
    assert 'charging_requests_total{method="ChargeSession",result="5030"}' in text
    assert "charging_request_duration_seconds_bucket" in text
    assert "charging_active_sessions 1.0" in text
    assert "charging_reserved_micros 500000.0" in text
    assert "491712345678" not in text and "491799999999" not in text


async def test_graceful_shutdown_goes_not_serving_and_drains(settings: Settings, clock: ManualClock) -> None:
    app = App(settings, clock=clock, run_background=True)
    await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
    health = health_pb2_grpc.HealthStub(channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    stopping = asyncio.create_task(app.stop())
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
    await stopping
    assert all(t.done() for t in asyncio.all_tasks() if t.get_name() in ("sweeper", "census"))
    await channel.close()


async def test_a_background_loop_that_loses_its_cancellation_still_stops() -> None:
    """On Python 3.11 asyncio.wait_for, around every command redis-py sends, can swallow
    a cancellation; the loop then runs on and a plain ``await task`` would never return."""
    rounds = 0

    async def loses_the_first_cancellation() -> None:
        nonlocal rounds
        lost = False
        while True:
            rounds += 1
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if lost:
                    raise
                lost = True

    task = asyncio.create_task(loses_the_first_cancellation(), name="sweeper")
    await asyncio.sleep(0.05)
    async with asyncio.timeout(5):
        await cancel_and_wait([task])
    assert task.cancelled()
    ended_at = rounds
    await asyncio.sleep(0.05)
    assert rounds == ended_at


async def test_embedded_redis_keeps_balances_across_restarts_and_is_supervised(tmp_path: Path) -> None:
    embedded = EmbeddedRedis("redis-server", tmp_path / "redis", appendfsync="always")
    url = await embedded.start()
    supervisor = asyncio.create_task(embedded.supervise())
    client = aioredis.Redis.from_url(url)
    await client.set("k", "1")
    assert embedded._proc is not None
    embedded._proc.kill()  # the child dies: the supervisor restarts it from the AOF
    for _ in range(100):
        try:
            if await client.get("k") == b"1":
                break
        except (aioredis.ConnectionError, OSError):
            pass
        await asyncio.sleep(0.1)
    assert await client.get("k") == b"1"
    await client.aclose()
    await embedded.stop()
    await asyncio.wait_for(supervisor, 5)
    assert embedded._proc.returncode is not None

    again = EmbeddedRedis("redis-server", tmp_path / "redis")
    client = aioredis.Redis.from_url(await again.start())
    assert await client.get("k") == b"1"
    await client.aclose()
    await again.stop()


async def test_missing_redis_server_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="apt-get install redis-server"):
        await EmbeddedRedis("no-such-redis-server", tmp_path).start()


def _cli(*args: str, port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "charging.cli", "--target", f"127.0.0.1:{port}", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


# A whole server with its embedded Redis and PostgreSQL, then a CLI process per step:
# about 20 s on a quiet machine, near 60 s under a load average of 15.
@pytest.mark.timeout(240)
def test_readme_tour_with_the_bundled_client(tmp_path: Path, postgres_dir: Path) -> None:
    """`charging serve` with no Redis or database URL starts its own redis-server and
    PostgreSQL; the client tour works."""
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "CHARGING_GRPC_ADDRESS": f"127.0.0.1:{port}",
        "CHARGING_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}",
        "CHARGING_NCHF_ADDRESS": f"127.0.0.1:{free_port()}",
        "CHARGING_REDIS_DIR": str(tmp_path / "redis"),
        "CHARGING_DATABASE_DIR": str(postgres_dir),
    }
    env.pop("CHARGING_REDIS_URL", None)
    env.pop("CHARGING_DATABASE_URL", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "charging.cli", "serve"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        for _ in range(100):
            if _cli("balance", "--msisdn", "491700000009", port=port).returncode == 2:
                err = _cli("balance", "--msisdn", "491700000009", port=port).stderr
                if "NOT_FOUND" in err:
                    break
            time.sleep(0.1)
        created = _cli("create-subscriber", "--msisdn", "491700000009", "--balance", "2.50", port=port)
        assert created.returncode == 0, created.stderr
        assert json.loads(created.stdout)["balance_micros"] == "2500000"
        session = _cli(
            "session", "--msisdn", "491700000009", "--rating-group", "10", "--used", "45", "--updates", "2", port=port
        )
        assert session.returncode == 0, session.stdout + session.stderr
        answers = [json.loads(line) for line in session.stdout.splitlines()]
        assert [a["result_code"] for a in answers] == [2001, 2001, 2001, 2001]
        event = _cli("event", "--msisdn", "491700000009", "--action", "debit", "--rating-group", "20", port=port)
        assert json.loads(event.stdout)["result_code"] == 2001
        topup = _cli("topup", "--msisdn", "491700000009", "--amount", "1", "--key", "tour-1", port=port)
        assert json.loads(topup.stdout)["balance"]["balance_micros"] == str(2_500_000 - 300_000 - 50_000 + 1_000_000)
        balance = _cli("balance", "--msisdn", "491700000009", port=port)
        assert balance.stdout.strip().startswith("balance 3.15 EUR")
        bought = _cli("buy-bundle", "--msisdn", "491700000009", "--bundle", "sms-100", "--key", "tour-2", port=port)
        assert json.loads(bought.stdout)["result"] == "PURCHASE_RESULT_PURCHASED", bought.stdout + bought.stderr
        sms = _cli("event", "--msisdn", "491700000009", "--action", "debit", "--rating-group", "20", port=port)
        assert json.loads(sms.stdout).get("cost_micros", "0") == "0"  # from the bundle
        balance = _cli("balance", "--msisdn", "491700000009", port=port)
        assert balance.stdout.splitlines()[0].startswith("balance 1.15 EUR")
        assert "bucket sms-100.1: 99 of 100 units left" in balance.stdout
        call = _cli(
            "session", "--msisdn", "491700000009", "--rating-group", "10", "--called", "112", "--used", "30", port=port
        )
        answers = [json.loads(line) for line in call.stdout.splitlines()]
        assert [(a["result_code"], a["rating_groups"][0]["result_code"]) for a in answers] == [(4011, 4011)]
        assert call.returncode == 0
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert 'charging_topups_total{channel="retail"} 1.0' in metrics
    finally:
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=20)
    assert server.returncode == 0
    assert "491700000009" not in stderr  # no MSISDN in logs
    assert '"msg": "stopped"' in stderr


async def test_redis_outage_is_unavailable_then_recovers(
    tmp_path: Path, settings: Settings, clock: ManualClock
) -> None:
    embedded = EmbeddedRedis("redis-server", tmp_path / "r", appendfsync="always")
    url = await embedded.start()
    app = App(replace(settings, redis_url=url), clock=clock, run_background=False)
    await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")

    stubs = Stubs.on(channel)
    try:
        await stubs.subscriber(balance=1_000_000)
        await embedded.stop()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.charging.ChargeSession(
                session_request("o", INITIAL, 0, [{"rating_group": 10, "requested": {}}])
            )
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        embedded = EmbeddedRedis("redis-server", tmp_path / "r")
        await embedded.start()
        a = await stubs.charging.ChargeSession(
            session_request("o", INITIAL, 0, [{"rating_group": 10, "requested": {}}])
        )
        assert a.result_code == 2001
        assert (await stubs.balance()).reserved_micros == 500_000
    finally:
        await channel.close()
        await app.stop()
        await embedded.stop()


async def test_cli_loads_a_catalog_file(app: App, tmp_path: Path) -> None:
    from charging.catalogs import read_catalog_file

    doc = read_catalog_file("")
    doc["version"] = "cli-test"
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(doc))
    out = await asyncio.to_thread(_cli, "load-catalog", str(path), port=app.grpc_port)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["version"] == "cli-test"
    assert "mobile-prepaid" in info["plan_ids"]
