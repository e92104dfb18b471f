"""Supervision: reservations that are not refreshed in time are returned exactly."""

from __future__ import annotations

import asyncio
import time

from charging import keys
from charging.clock import ManualClock
from charging.ledger import SWEEP
from charging.script_args import SweepArgs
from charging.server import App
from tests.conftest import INITIAL, TERMINATE, UPDATE, Stubs, redis_client, session_request
from tests.test_sessions import MINUTE, ledger_is_consistent

VOICE_SUPERVISION_S = 2 * 3600  # 2 x the default tariff's longest validity time (data, 3600 s)


async def test_unrefreshed_reservation_is_released_exactly(
    stubs: Stubs, app: App, clock: ManualClock, redis_url: str
) -> None:
    await stubs.subscriber(balance=2_000_000)
    await stubs.charging.ChargeSession(session_request("old", INITIAL, 0, [{"rating_group": 10, "requested": {}}]))
    clock.advance(seconds=60)
    await stubs.charging.ChargeSession(session_request("new", INITIAL, 0, [{"rating_group": 11, "requested": {}}]))
    assert (await stubs.balance()).reserved_micros == 5 * MINUTE + 300 * 1700

    assert app.sweeper is not None
    clock.advance(seconds=VOICE_SUPERVISION_S - 61)
    assert await app.sweeper.sweep_once() == 0
    clock.advance(seconds=2)
    assert await app.sweeper.sweep_once() == 1
    b = await stubs.balance()
    assert (b.balance_micros, b.reserved_micros) == (2_000_000, 300 * 1700)
    ledger_is_consistent(redis_url)

    late = await stubs.charging.ChargeSession(
        session_request("old", UPDATE, 1, [{"rating_group": 10, "used": {"time_s": 30}}])
    )
    assert late.result_code == 5002
    assert (await stubs.balance()).balance_micros == 2_000_000

    # The other session was refreshed: it lives until its own deadline.
    clock.advance(seconds=30)
    await stubs.charging.ChargeSession(
        session_request("new", UPDATE, 1, [{"rating_group": 11, "requested": {}, "used": {"time_s": 10}}])
    )
    clock.advance(seconds=VOICE_SUPERVISION_S - 1)
    assert await app.sweeper.sweep_once() == 0
    clock.advance(seconds=2)
    assert await app.sweeper.sweep_once() == 1
    b = await stubs.balance()
    assert (b.balance_micros, b.reserved_micros) == (2_000_000 - 10 * 1700, 0)
    # With nothing open, the account leaves the sweeper's index.
    r = redis_client(redis_url)
    assert sum(r.zcard(due) for due, _ in keys.SWEEP_SHARDS) == 0
    r.close()


async def test_terminated_sessions_leave_nothing_to_sweep(stubs: Stubs, app: App, clock: ManualClock) -> None:
    await stubs.subscriber(balance=1_000_000)
    await stubs.charging.ChargeSession(session_request("t", INITIAL, 0, [{"rating_group": 10, "requested": {}}]))
    await stubs.charging.ChargeSession(
        session_request("t", TERMINATE, 1, [{"rating_group": 10, "used": {"time_s": 5}}])
    )
    clock.advance(seconds=VOICE_SUPERVISION_S + 1)
    assert app.sweeper is not None
    assert await app.sweeper.sweep_once() == 0
    assert (await stubs.balance()).balance_micros == 1_000_000 - MINUTE


async def test_many_accounts_and_sessions_are_swept_in_batches(
    stubs: Stubs, app: App, clock: ManualClock, redis_url: str
) -> None:
    for i in range(30):
        await stubs.subscriber(msisdn=f"4917000001{i:02d}", balance=1_000_000)
    await asyncio.gather(
        *(
            stubs.charging.ChargeSession(
                session_request(
                    f"s{i}-{j}",
                    INITIAL,
                    0,
                    [{"rating_group": 11, "requested": {"time_s": 10}}],
                    msisdn=f"4917000001{i:02d}",
                )
            )
            for i in range(30)
            for j in range(10)
        )
    )
    assert app.sweeper is not None
    app.sweeper.batch = 7
    clock.advance(seconds=VOICE_SUPERVISION_S + 1)
    released = 0
    for _ in range(100):
        n = await app.sweeper.sweep_once()
        released += n
        if n == 0:
            break
    assert released == 300
    ledger_is_consistent(redis_url)
    for i in range(30):
        b = await stubs.balance(f"4917000001{i:02d}")
        assert (b.balance_micros, b.reserved_micros) == (1_000_000, 0)


async def test_background_sweeper_runs_by_itself(settings, clock: ManualClock) -> None:
    application = App(settings, clock=clock, run_background=True)
    await application.start()
    try:
        import grpc

        from charging.v1 import admin_pb2_grpc, charging_pb2_grpc, topup_pb2_grpc
        from tests.conftest import Stubs as S

        channel = grpc.aio.insecure_channel(f"127.0.0.1:{application.grpc_port}")
        stubs = S(
            channel,
            charging_pb2_grpc.ChargingStub(channel),
            topup_pb2_grpc.TopUpStub(channel),
            admin_pb2_grpc.AdminStub(channel),
        )
        await stubs.subscriber(balance=1_000_000)
        await stubs.charging.ChargeSession(session_request("bg", INITIAL, 0, [{"rating_group": 10, "requested": {}}]))
        clock.advance(seconds=VOICE_SUPERVISION_S + 1)
        deadline = time.monotonic() + 30  # the background sweeper's pass (bounded, not timed)
        while (await stubs.balance()).reserved_micros != 0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        assert (await stubs.balance()).reserved_micros == 0
        await channel.close()
    finally:
        await application.stop()


async def test_a_session_refreshed_after_the_sweeper_looked_is_left_alone(
    stubs: Stubs, app: App, clock: ManualClock, redis_url: str
) -> None:
    account = (await stubs.subscriber(balance=2_000_000)).account_id
    await stubs.charging.ChargeSession(session_request("r", INITIAL, 0, [{"rating_group": 10, "requested": {}}]))
    clock.advance(seconds=VOICE_SUPERVISION_S + 1)
    looked_at = clock.now_ms()
    # The sweeper read "r" as due; an UPDATE refreshes it before the sweep script runs.
    await stubs.charging.ChargeSession(
        session_request("r", UPDATE, 1, [{"rating_group": 10, "requested": {}, "used": {"time_s": 30}}])
    )
    assert app.sweeper is not None
    script_keys = (
        keys.account(account),
        keys.sessions(account),
        keys.buckets(account),
        keys.outbox(account),
        keys.session(account, "r"),
    )
    reply = await SWEEP(app.sweeper.ledger.client, script_keys, SweepArgs(looked_at, True, ("r",)))
    assert int(reply[0]) == 0
    b = await stubs.balance()
    assert (b.balance_micros, b.reserved_micros) == (2_000_000 - MINUTE, 5 * MINUTE)
    ledger_is_consistent(redis_url)
