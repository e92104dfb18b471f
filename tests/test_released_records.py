"""Usage records for what is not an ordinary rated use, written by the script that makes
the change: usage of a rating group answered 4011 (free: toll-free, emergency) and a
session released by the supervision sweeper, each with its cause. Real Redis, real
PostgreSQL, the test clock."""

from __future__ import annotations

import dataclasses

import redis

from charging import keys
from charging.cdr_relay import drain
from charging.cdrs import NOT_RATED, SUPERVISION
from charging.clock import ManualClock
from charging.server import App
from charging.settings import Settings
from tests.conftest import INITIAL, UPDATE, Stubs, session_request
from tests.test_cdrs import app, audit_rows, relay_of, usage_rows
from tests.test_sessions import MINUTE
from tests.test_sweeper import VOICE_SUPERVISION_S

__all__ = ["app"]  # the fixture

FREEPHONE = 40  # free in the sample catalog: answered 4011


async def test_free_usage_and_a_swept_session_are_recorded_with_their_cause(
    app: App, stubs: Stubs, clock: ManualClock, database_url: str, r: redis.Redis
) -> None:
    account = (await stubs.subscriber(balance=10 * MINUTE)).account_id
    groups: list[dict[str, object]] = [{"rating_group": 10, "requested": {}}, {"rating_group": FREEPHONE}]
    opened = await stubs.charging.ChargeSession(session_request("c", INITIAL, 0, groups))
    assert [g.result_code for g in opened.rating_groups] == [2001, 4011]
    used: list[dict[str, object]] = [
        {"rating_group": 10, "requested": {}, "used": {"time_s": 60}},
        {"rating_group": FREEPHONE, "used": {"time_s": 125}},
    ]
    update = session_request("c", UPDATE, 1, used)
    assert [g.result_code for g in (await stubs.charging.ChargeSession(update)).rating_groups] == [2001, 4011]
    assert (await stubs.charging.ChargeSession(update)).result_code == 2001  # a retransmission: recorded once
    reserved = (await stubs.balance()).reserved_micros
    assert reserved > 0

    # No report comes in time: the sweeper releases the session.
    clock.advance(seconds=VOICE_SUPERVISION_S + 1)
    assert app.sweeper is not None
    assert await app.sweeper.sweep_once() == 1
    b = await stubs.balance()
    assert (b.balance_micros, b.reserved_micros) == (9 * MINUTE, 0)
    await drain(relay_of(app))

    rows = {u["record_id"]: u for u in usage_rows(database_url, account)}
    rated, free, swept = (rows[f"{account}:s:c:1:10"], rows[f"{account}:s:c:1:{FREEPHONE}"], rows[f"{account}:w:c:1"])
    assert len(rows) == 3
    assert (rated["cause"], rated["units"], rated["money_micros"]) == ("", 60, MINUTE)
    assert (free["cause"], free["service"], free["unit"], free["units"]) == (NOT_RATED, "freephone", "time", 125)
    assert (free["cost_micros"], free["money_micros"], free["bucket_units"]) == (0, 0, {})
    assert (free["session_id"], free["request_number"], free["msisdn"]) == ("c", 1, "491700000001")
    assert (swept["cause"], swept["units"], swept["cost_micros"], swept["money_micros"]) == (SUPERVISION, 0, 0, 0)
    assert (swept["session_id"], swept["request_number"], swept["plan_id"]) == ("c", 1, "default")
    [released] = [a for a in audit_rows(database_url, account) if a["action"] == "session_released"]
    assert (released["actor"], released["reason"], released["entry_id"]) == (
        "supervision",
        SUPERVISION,
        swept["record_id"],
    )
    assert released["details"]["released_micros"] == reserved
    assert released["details"]["released_units"] == {"10": 300}  # the grant the client never reported on
    assert not r.exists(keys.cdr_outbox(account))


async def test_records_off_means_none_from_the_sweeper_either(
    settings: Settings, database_url: str, clock: ManualClock, r: redis.Redis
) -> None:
    import grpc

    off = App(dataclasses.replace(settings, usage_records=False), clock=clock, run_background=False)
    await off.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{off.grpc_port}") as channel:
            stubs = Stubs.on(channel)
            account = (await stubs.subscriber(balance=10 * MINUTE)).account_id
            await stubs.charging.ChargeSession(
                session_request("c", INITIAL, 0, [{"rating_group": 10, "requested": {}}])
            )
        clock.advance(seconds=VOICE_SUPERVISION_S + 1)
        assert off.sweeper is not None and await off.sweeper.sweep_once() == 1
        assert not r.exists(keys.cdr_outbox(account))
    finally:
        await off.stop()
