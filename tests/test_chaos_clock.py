"""The chaos suite's clock jumps (chaos/clock.py) on real processes: libfaketime moves the
server's wall clock and nothing else, a forward jump past a bundle's validity has the
sweeper expire it (its units counted expired), a forward jump past supervision releases a
session's reservation once, and a backward jump afterwards brings neither back."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from chaos.clock import DAY_S, FakeClock, expired_left, expired_units
from chaos.system import ExternalRedis, System
from chaos.workload import Stubs, who
from charging import keys
from charging.v1 import admin_pb2, charging_pb2, topup_pb2

MSISDN = "491709990001"
PROBE = "import time; print(time.time(), time.monotonic(), flush=True); input(); print(time.time(), time.monotonic())"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_only_the_wall_clock_jumps(tmp_path: Path) -> None:
    clock = FakeClock(tmp_path / "faketime.rc")
    env = {"PATH": "/usr/bin:/bin", **clock.env()}
    with subprocess.Popen(
        [sys.executable, "-c", PROBE], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        wall0, mono0 = map(float, proc.stdout.readline().split())
        clock.jump(31 * DAY_S)
        proc.stdin.write("\n")
        proc.stdin.flush()
        wall1, mono1 = map(float, proc.stdout.readline().split())
        proc.wait(30)
    assert 31 * DAY_S <= wall1 - wall0 < 31 * DAY_S + 60
    assert 0 <= mono1 - mono0 < 60  # CLOCK_MONOTONIC untouched (FAKETIME_DONT_FAKE_MONOTONIC)
    clock.jump(-300)
    assert clock.offset_s == 31 * DAY_S - 300 and clock.furthest_s == 31 * DAY_S
    clock.restore()
    assert clock.offset_s == 31 * DAY_S


async def until(what: str, check: Callable[[], Awaitable[bool]], timeout_s: float = 30.0) -> None:
    """Poll ``check`` (bounded): the sweeper acts on its own schedule."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"not within {timeout_s:g} s: {what}"
        await asyncio.sleep(0.1)


async def test_jumps_expire_buckets_and_release_reservations_once(database_url: str, tmp_path: Path) -> None:
    external = ExternalRedis(tmp_path / "redis", free_port())
    external.start()
    clock = FakeClock(tmp_path / "faketime.rc")
    env = {**clock.env(), "CHARGING_REDIS_URL": f"redis://127.0.0.1:{external.port}/0"}
    system = System(tmp_path, database_url, free_port(), env, external)
    try:
        await asyncio.to_thread(system.start)
        client = system.redis_client()
        async with grpc.aio.insecure_channel(system.address) as channel:
            stubs = Stubs(channel)
            account = (
                await stubs.admin.CreateSubscriber(
                    admin_pb2.CreateSubscriberRequest(
                        msisdn=MSISDN, plan_id="default", initial_balance_micros=20_000_000
                    ),
                    timeout=30,
                )
            ).account_id
            bought = await stubs.topup.BuyBundle(
                topup_pb2.BuyBundleRequest(
                    subscriber=who(MSISDN), bundle_id="sms-100", channel=topup_pb2.CHANNEL_APP, idempotency_key="b1"
                ),
                timeout=10,
            )
            assert bought.result == topup_pb2.PURCHASE_RESULT_PURCHASED
            after_purchase = 20_000_000 - 2_000_000

            async def balance() -> topup_pb2.Balance:
                b: topup_pb2.Balance = await stubs.topup.GetBalance(
                    topup_pb2.BalanceRequest(subscriber=who(MSISDN)), timeout=10
                )
                return b

            # A session holds money (the default catalog: validity times of up to an hour, so
            # supervision is hours away); a jump of three hours has the sweeper release it.
            start = charging_pb2.SessionRequest(
                session_id="s1", request_type=charging_pb2.REQUEST_TYPE_INITIAL, request_number=0,
                subscriber=who(MSISDN), called_party="491711234567",
            )  # fmt: skip
            start.rating_groups.add(rating_group=10).requested.SetInParent()
            answer = await stubs.charging.ChargeSession(start, timeout=10)
            assert answer.result_code == 2001
            assert (await balance()).reserved_micros > 0
            clock.jump(3 * 3600)

            async def released() -> bool:
                return (await balance()).reserved_micros == 0

            await until("the session swept", released)
            assert (await balance()).balance_micros == after_purchase  # nothing used, all given back

            # 31 days on: the bundle's bucket expires, its 100 units counted expired.
            assert (await balance()).buckets[0].amount == 100
            clock.jump(31 * DAY_S)

            async def expired() -> bool:
                return not client.hgetall(keys.buckets(account))

            await until("the bucket expired", expired)
            assert expired_units(client, [account]) == {account: 100}
            assert expired_left(client, [account], clock.now_s()) == []

            # Back five minutes: the bucket stays expired, the reservation stays released.
            clock.jump(-300)
            # An SMS at the earlier time (a script that reads and writes the buckets): paid
            # with money, the expired bucket not brought back.
            sms = charging_pb2.EventRequest(
                event_id="e1", action=charging_pb2.REQUESTED_ACTION_DIRECT_DEBITING, subscriber=who(MSISDN),
                rating_group=20, called_party="491711234567",
            )  # fmt: skip
            sms.requested.service_specific_units = 1
            debit = await stubs.charging.ChargeEvent(sms, timeout=10)
            assert debit.result_code == 2001 and debit.cost_micros > 0
            after_purchase -= debit.cost_micros
            final = await balance()
            assert list(final.buckets) == [] and not client.hgetall(keys.buckets(account))
            assert expired_units(client, [account]) == {account: 100}
            assert (final.balance_micros, final.reserved_micros) == (after_purchase, 0)
            # The late TERMINATE of the swept session changes nothing either.
            end = charging_pb2.SessionRequest(
                session_id="s1", request_type=charging_pb2.REQUEST_TYPE_TERMINATE, request_number=1,
                subscriber=who(MSISDN), called_party="491711234567",
            )  # fmt: skip
            end.rating_groups.add(rating_group=10).used.time_s = 30
            await stubs.charging.ChargeSession(end, timeout=10)
            final = await balance()
            assert (final.balance_micros, final.reserved_micros) == (after_purchase, 0)
        client.close()
    finally:
        await asyncio.to_thread(system.stop)
        external.stop()
