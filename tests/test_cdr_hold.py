"""The relay's hold: a usage record reaches PostgreSQL only after it has been in Redis for
the hold, so that a machine death under ``appendfsync everysec`` cannot leave the system
of record holding a write Redis lost (``charging/cdr_hold.py``). Real Redis, real
PostgreSQL, the test clock."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from charging import keys
from charging.cdr_hold import EVERYSEC_HOLD_MS, hold_ms, probe_hold
from charging.cdr_relay import CdrRelay
from charging.cdr_store import CdrStore
from charging.clock import ManualClock
from charging.embedded_redis import EmbeddedRedis
from charging.server import App
from charging.settings import Settings
from tests.conftest import Stubs, sms_request
from tests.test_cdrs import START, app, relay_of, usage_rows, without_the_job

__all__ = ["app"]  # the fixture

HOLD = 2500


@pytest.fixture
async def client(app: App) -> AsyncIterator[redis.asyncio.Redis]:
    c = redis.asyncio.Redis.from_url(app.settings.redis_url, decode_responses=True)
    yield c
    await c.aclose()


def held_relay(app: App, client: redis.asyncio.Redis, clock: ManualClock, **kw: int) -> CdrRelay:
    assert app.database is not None
    return CdrRelay(client, CdrStore(app.database), clock, hold_ms=HOLD, **kw)


def outbox_events(r: redis.Redis, account: str) -> list[str]:
    return [json.loads(e)[5] for e in r.lrange(keys.cdr_outbox(account), 0, -1)]


@pytest.mark.parametrize(
    ("appendonly", "appendfsync", "hold"),
    [("yes", "everysec", EVERYSEC_HOLD_MS), ("yes", "always", 0), ("yes", "no", 0), ("no", "everysec", 0)],
)
def test_the_hold_follows_what_redis_writes_to_disk(appendonly: str, appendfsync: str, hold: int) -> None:
    assert hold_ms(appendonly, appendfsync) == hold


async def test_the_hold_is_read_from_the_redis_in_use(tmp_path: Path, client: redis.asyncio.Redis) -> None:
    assert await probe_hold(client, "everysec") == 0  # the tests' Redis: appendfsync no
    embedded = EmbeddedRedis("redis-server", tmp_path / "redis", appendfsync="everysec")
    url = await embedded.start()
    try:
        everysec = redis.asyncio.Redis.from_url(url, decode_responses=True)
        assert await probe_hold(everysec, "always") == EVERYSEC_HOLD_MS
        await everysec.config_set("appendfsync", "always")
        assert await probe_hold(everysec, "everysec") == 0
        await everysec.aclose()
    finally:
        await embedded.stop()


async def test_a_record_younger_than_the_hold_is_not_relayed_and_is_after(
    app: App, stubs: Stubs, clock: ManualClock, r: redis.Redis, database_url: str, client: redis.asyncio.Redis
) -> None:
    without_the_job(app)
    account = (await stubs.subscriber(balance=START)).account_id
    await stubs.charging.ChargeEvent(sms_request("sms-0"))
    relay = held_relay(app, client, clock)
    relay.wake(account)
    assert await relay.relay_waiting() == 0  # read and marked, not relayed
    assert outbox_events(r, account) == ["sms-0"] and not usage_rows(database_url, account)
    assert relay.held_for_s() == HOLD / 1000  # the job runs again then
    clock.advance(ms=HOLD - 1)
    assert await relay.relay_waiting() == 0
    assert relay.waiting() == 1
    clock.advance(ms=1)
    assert await relay.relay_waiting() == 1
    assert [u["event_id"] for u in usage_rows(database_url, account)] == ["sms-0"]
    assert not r.exists(keys.cdr_outbox(account)) and relay.waiting() == 0 and relay.held_for_s() is None


async def test_a_record_behind_the_mark_waits_for_its_own_hold(
    app: App, stubs: Stubs, clock: ManualClock, r: redis.Redis, database_url: str, client: redis.asyncio.Redis
) -> None:
    without_the_job(app)
    account = (await stubs.subscriber(balance=START)).account_id
    relay = held_relay(app, client, clock)
    await stubs.charging.ChargeEvent(sms_request("sms-0"))
    relay.wake(account)
    await relay.relay_waiting()  # sms-0 marked at t
    clock.advance(ms=HOLD - 1)
    await stubs.charging.ChargeEvent(sms_request("sms-1"))  # written just before t + hold
    clock.advance(ms=1)
    assert await relay.relay_waiting() == 1  # only what the mark covers
    assert outbox_events(r, account) == ["sms-1"]
    clock.advance(ms=HOLD - 1)
    assert await relay.relay_waiting() == 0
    clock.advance(ms=1)
    assert await relay.relay_waiting() == 1
    assert [u["event_id"] for u in usage_rows(database_url, account)] == ["sms-0", "sms-1"]


async def test_a_mark_another_relay_moved_makes_what_is_left_wait(
    app: App, stubs: Stubs, clock: ManualClock, r: redis.Redis, database_url: str, client: redis.asyncio.Redis
) -> None:
    without_the_job(app)
    account = (await stubs.subscriber(balance=START)).account_id
    relay = held_relay(app, client, clock)
    await stubs.charging.ChargeEvent(sms_request("sms-0"))
    relay.wake(account)
    await relay.relay_waiting()  # sms-0 marked
    other = held_relay(app, client, clock)
    other.wake(account)
    await other.relay_waiting()
    clock.advance(ms=HOLD)
    assert await other.relay_waiting() == 1  # the other process relays sms-0
    await stubs.charging.ChargeEvent(sms_request("sms-1"))  # just written
    assert await relay.relay_waiting() == 0  # its mark is gone: sms-1 is not taken for older
    assert outbox_events(r, account) == ["sms-1"]
    clock.advance(ms=HOLD)
    assert await relay.relay_waiting() == 1
    assert [u["event_id"] for u in usage_rows(database_url, account)] == ["sms-0", "sms-1"]


async def test_a_mark_further_back_than_a_batch_lets_the_whole_batch_go(
    app: App, stubs: Stubs, clock: ManualClock, r: redis.Redis, database_url: str, client: redis.asyncio.Redis
) -> None:
    without_the_job(app)
    account = (await stubs.subscriber(balance=START)).account_id
    for i in range(3):
        await stubs.charging.ChargeEvent(sms_request(f"sms-{i}"))
    relay = held_relay(app, client, clock)
    relay.wake(account)
    await relay.relay_waiting()  # the three read, sms-2 marked
    relay.batch = 2
    clock.advance(ms=HOLD)
    await stubs.charging.ChargeEvent(sms_request("sms-3"))
    assert await relay.relay_accounts([account]) == 2  # sms-0, sms-1: the mark is behind them
    assert await relay.relay_accounts([account]) == 1  # sms-2, the mark; sms-3 is newer
    assert outbox_events(r, account) == ["sms-3"]


async def test_the_server_takes_the_hold_from_its_settings(
    settings: Settings, database_url: str, clock: ManualClock
) -> None:
    for configured, expected in ((-1, 0), (700, 700)):  # -1: the tests' Redis (appendfsync no)
        app = App(dataclasses.replace(settings, cdr_hold_ms=configured), clock=clock, run_background=False)
        await app.start()
        try:
            assert relay_of(app).hold_ms == expected
        finally:
            await app.stop()
