"""Admission control against a real server and Redis: the in-flight limit, deadlines,
and the bounds on idle connections (issue 10 item 10).

Calls are made slow without sleeping anywhere: ``CLIENT PAUSE ... WRITE`` holds every
script in Redis until the test says ``CLIENT UNPAUSE``, so the calls it lets through
stay in flight for exactly as long as the test needs."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from charging.admission import server_options
from charging.clock import ManualClock
from charging.errors import InvalidRequest
from charging.server import App
from charging.settings import Settings
from charging.subscribers import Identity
from charging.v1 import charging_pb2
from tests.conftest import MSISDN, Stubs, balance, sms_request

SMS_MICROS = 50_000  # one SMS on the default plan


def rejections(method: str, reason: str) -> float:
    value = REGISTRY.get_sample_value("charging_admission_rejections_total", {"method": method, "reason": reason})
    return value or 0.0


@pytest.fixture
async def small(settings: Settings, clock: ManualClock) -> AsyncIterator[App]:
    """A server that works on at most 2 calls at once."""
    application = App(dataclasses.replace(settings, max_in_flight=2), clock=clock, run_background=False)
    await application.start()
    yield application
    await application.stop()


async def in_flight(app: App, count: int) -> None:
    """Until the server works on ``count`` calls (the test's timeout bounds the wait)."""
    assert app.admission is not None
    while app.admission.in_flight != count:  # noqa: ASYNC110 (a count, not an event)
        await asyncio.sleep(0.005)


async def test_calls_beyond_the_limit_are_refused_and_change_nothing(small: App, r: redis.Redis) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{small.grpc_port}") as channel:
        stubs = Stubs.on(channel)
        await stubs.subscriber(balance=1_000_000)
        refused_before = rejections("ChargeEvent", "in_flight")

        r.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
        try:
            held = [asyncio.ensure_future(stubs.charging.ChargeEvent(sms_request(f"sms-{n}"))) for n in range(2)]
            await in_flight(small, 2)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stubs.charging.ChargeEvent(sms_request("sms-2"))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            with pytest.raises(grpc.aio.AioRpcError) as refused_read:
                await balance(stubs)
            assert refused_read.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # Health is never refused: the load balancer sees the process alive.
            health = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(health_pb2.HealthCheckRequest(service="charging.v1.Charging"))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            r.execute_command("CLIENT", "UNPAUSE")

        assert [a.result_code for a in await asyncio.gather(*held)] == [2001, 2001]
        assert (await balance(stubs)).balance_micros == 1_000_000 - 2 * SMS_MICROS
        assert rejections("ChargeEvent", "in_flight") == refused_before + 1
        # The refused event left no trace: sent again, it is charged, not answered as a repeat.
        again = await stubs.charging.ChargeEvent(sms_request("sms-2"))
        assert again.result_code == 2001
        assert (await balance(stubs)).balance_micros == 1_000_000 - 3 * SMS_MICROS


async def test_a_call_past_its_deadline_is_not_sent_to_redis(app: App, stubs: Stubs, r: redis.Redis) -> None:
    """The subscriber lookup waits for Redis (paused for every command) while the test
    holds the event loop past the call's deadline, as a busy server does. The loop then
    resumes the call before grpc's own cancellation reaches it; the debit is not sent."""
    await stubs.subscriber(balance=1_000_000)
    warm_up = sms_request("warm-up")
    warm_up.action = charging_pb2.REQUESTED_ACTION_CHECK_BALANCE  # connects the link; changes nothing
    assert (await stubs.charging.ChargeEvent(warm_up)).result_code == 2001
    assert app.sessions is not None
    app.sessions.ctx.directory.forget(Identity("msisdn", MSISDN))
    refused_before = rejections("ChargeEvent", "deadline")

    # Redis answers nobody for 0.5 s (it cannot be told to go on earlier: that would be
    # a command too); the call's deadline is 1.5 s away.
    r.execute_command("CLIENT", "PAUSE", 500, "ALL")
    call = asyncio.ensure_future(stubs.charging.ChargeEvent(sms_request("late"), timeout=1.5))
    await in_flight(app, 1)
    # The event loop is held (by design: a busy server) until Redis has answered the
    # lookup and the deadline has passed; grpc's cancellation then waits its turn.
    time.sleep(2.0)  # noqa: ASYNC251

    with pytest.raises(grpc.aio.AioRpcError) as late:
        await call
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert (await balance(stubs)).balance_micros == 1_000_000
    assert rejections("ChargeEvent", "deadline") == refused_before + 1
    # Nothing was recorded under the event id: sent again in time, it is charged once.
    assert (await stubs.charging.ChargeEvent(sms_request("late"))).result_code == 2001
    assert (await balance(stubs)).balance_micros == 1_000_000 - SMS_MICROS


async def test_an_idle_connection_is_closed_by_the_server(settings: Settings, clock: ManualClock) -> None:
    # Long enough that the channel is still READY when looked at right after the call (a
    # loaded machine may hold the test up between the reply and the look); the test then
    # waits one to two of these for the server's GOAWAY, whatever the machine.
    application = App(dataclasses.replace(settings, grpc_max_idle_s=1.0), clock=clock, run_background=False)
    await application.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{application.grpc_port}") as channel:
            stubs = Stubs.on(channel)
            await stubs.subscriber()
            assert channel.get_state() == grpc.ChannelConnectivity.READY
            # The server's GOAWAY moves the channel out of READY; nothing else would.
            state = channel.get_state()
            while state == grpc.ChannelConnectivity.READY:
                await channel.wait_for_state_change(state)
                state = channel.get_state()
            assert state in (grpc.ChannelConnectivity.IDLE, grpc.ChannelConnectivity.CONNECTING)
            # A new call reconnects.
            assert (await balance(stubs, MSISDN)).balance_micros == 1_000_000
    finally:
        await application.stop()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CHARGING_MAX_IN_FLIGHT", "0"),
        ("CHARGING_MAX_STREAMS_PER_CONNECTION", "0"),
        ("CHARGING_MAX_WAITING_CALLS", "-1"),
        ("CHARGING_GRPC_MAX_IDLE_S", "0"),
        ("CHARGING_GRPC_KEEPALIVE_S", "-1"),
    ],
)
def test_admission_settings_must_be_positive(name: str, value: str) -> None:
    with pytest.raises(InvalidRequest) as bad:
        Settings.from_env({name: value})
    assert bad.value.field == name


@pytest.mark.parametrize(("waiting", "queue"), [("", 32), ("0", 32), ("200", 200)])
def test_grpc_s_queue_is_as_long_as_the_in_flight_bound_unless_set(waiting: str, queue: int) -> None:
    env = {"CHARGING_MAX_IN_FLIGHT": "32"} | ({"CHARGING_MAX_WAITING_CALLS": waiting} if waiting else {})
    options = dict(server_options(Settings.from_env(env)))
    assert (
        options["grpc.server.max_pending_requests"] == options["grpc.server.max_pending_requests_hard_limit"] == queue
    )


async def test_one_connection_s_burst_waits_in_its_transport_not_in_our_queue(
    settings: Settings, clock: ManualClock, r: redis.Redis
) -> None:
    """A client that opens more calls at once than its connection may carry (HTTP/2
    SETTINGS_MAX_CONCURRENT_STREAMS) has the rest held by its own transport until earlier
    ones are answered: a burst larger than the process's in-flight limit, sent on one
    connection to an idle server, is served whole rather than partly refused. Only other
    connections can take the process to its limit."""
    limited = dataclasses.replace(settings, max_in_flight=4, max_streams_per_connection=2)
    application = App(limited, clock=clock, run_background=False)
    await application.start()
    target = f"127.0.0.1:{application.grpc_port}"

    def connection() -> grpc.aio.Channel:  # channels to one target share a connection unless told not to
        return grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])

    try:
        async with connection() as one, connection() as two:
            first, second = Stubs.on(one), Stubs.on(two)
            await first.subscriber(balance=1_000_000)
            await balance(second)  # both connections are up before Redis is held
            refused_before = rejections("ChargeEvent", "in_flight")
            r.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
            try:
                burst = [asyncio.ensure_future(first.charging.ChargeEvent(sms_request(f"b-{n}"))) for n in range(6)]
                await in_flight(application, 2)  # the connection's two streams; four wait in the client
                other = [asyncio.ensure_future(second.charging.ChargeEvent(sms_request(f"o-{n}"))) for n in range(2)]
                await in_flight(application, 4)  # had the burst reached the server, it would be past 4
                async with connection() as three:
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await Stubs.on(three).charging.ChargeEvent(sms_request("third"))
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            finally:
                r.execute_command("CLIENT", "UNPAUSE")
            answers = await asyncio.gather(*burst, *other)
            assert [a.result_code for a in answers] == [2001] * 8
            assert rejections("ChargeEvent", "in_flight") == refused_before + 1
            assert (await balance(first)).balance_micros == 1_000_000 - 8 * SMS_MICROS
    finally:
        await application.stop()
