"""The compiled gRPC door (door/grpc_door.cc) in front of a real server: the charging
calls it batches onto ChargeBatches streams are answered as the server answers them
(answers, retransmissions, errors naming the field, refusals), every other call passes
through (unary, server and bidirectional streams, initial metadata, health), a worker
that goes away is UNAVAILABLE and comes back, and the security model holds through it:
every method against every role's certificate, tokens on the token port, and metadata a
caller makes up about its certificate dropped. Last, ``charging serve`` with the door as
real processes: the supervisor starts it in front of its workers, restarts it when it
dies, and stops everything on SIGTERM.

The door is built by ``make door`` (``make test`` does); these tests fail, not skip,
without it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from grpc_health.v1 import health_pb2
from prometheus_client.parser import text_string_to_metric_families

from charging.api import READY
from charging.clock import ManualClock
from charging.security import certs
from charging.security.guard import RECHECK_S
from charging.security.mode import Mode
from charging.security.tokens import TokenStore
from charging.server import App
from charging.settings import Settings
from charging.supervisor import DoorMetrics, door_argv
from charging.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    charging_pb2,
    charging_pb2_grpc,
    common_pb2,
    topup_pb2,
    topup_pb2_grpc,
)
from tests import door_callers, server_process
from tests.conftest import INITIAL, TERMINATE, UPDATE, Stubs, free_port, session_request, sms_request
from tests.test_security import SALE, against_the_role_table, code_of, connect, creds, health, secured_settings
from tests.test_workers import children, until

DOOR = Path(__file__).resolve().parent.parent / "var" / "build" / "charging-grpc-door"


@dataclasses.dataclass
class Door:
    proc: subprocess.Popen[str]
    port: int
    token_port: int
    figures: Path  # what it writes once a second (--metrics-file)

    def figure(self, name: str, **labels: str) -> float:
        """One of the door's figures as it last wrote them (0 before it counted any)."""
        for family in DoorMetrics(self.figures).collect():
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return 0.0

    def figure_reaches(self, value: float, name: str, **labels: str) -> None:
        """Wait (bounded) until the door has written ``name`` at ``value`` or more."""
        until(lambda: self.figure(name, **labels) >= value, steps=250)


@contextlib.contextmanager
def door_in_front(settings: Settings, mode: Mode, sockets: list[Path]) -> Iterator[Door]:
    """The door on free loopback ports in front of ``sockets``, as the supervisor starts it."""
    assert DOOR.exists(), f"{DOOR} is missing: `make door` builds it"
    read_fd, write_fd = os.pipe()
    s = dataclasses.replace(settings, grpc_door=str(DOOR))
    figures = sockets[0].parent / "door.prom"
    argv = door_argv(s, mode, "127.0.0.1:0", sockets, write_fd, figures)
    proc = subprocess.Popen(argv, pass_fds=(write_fd,), stderr=subprocess.PIPE, text=True)
    os.close(write_fd)
    with os.fdopen(read_fd) as ready:
        said = ready.read().split()
    try:
        assert said[:1] == ["serving"], proc.communicate(timeout=30)[1]
        yield Door(proc, int(said[1]), int(said[2]), figures)
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate(timeout=30)
            err += "\n(the door did not stop within 30 s of SIGTERM)"
        print(err)  # shown when the test fails
        assert "pure virtual" not in err and "terminate called" not in err, err
        # Every call finished within the grace period (a call left open makes it exit 1).
        assert proc.returncode == 0, err


@contextlib.contextmanager
def socket_directory() -> Iterator[Path]:
    """A short directory for Unix sockets (their paths are limited to 107 bytes)."""
    directory = Path(tempfile.mkdtemp(prefix="door-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def behind_door(settings: Settings, clock: ManualClock, socket: Path, mode: Mode) -> App:
    app = App(
        dataclasses.replace(settings, grpc_address=f"unix:{socket}", grpc_token_address="", behind_door=mode.value),
        clock=clock,
        run_background=False,
    )
    await app.start()
    return app


@dataclasses.dataclass
class Served:
    app: App
    door: Door
    socket: Path


@pytest.fixture
async def served(settings: Settings, clock: ManualClock) -> AsyncIterator[Served]:
    with socket_directory() as directory:
        socket = directory / "w.sock"
        served = Served(await behind_door(settings, clock, socket, Mode.LOCAL), None, socket)  # type: ignore[arg-type]
        try:
            with door_in_front(settings, Mode.LOCAL, [socket]) as served.door:
                yield served
        finally:
            await served.app.stop()  # a test may have started it again


@pytest.fixture
async def through(served: Served) -> AsyncIterator[Stubs]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{served.door.port}")
    yield Stubs.on(channel)
    await channel.close()


@pytest.fixture
async def direct(served: Served) -> AsyncIterator[Stubs]:
    """The worker's own socket, for comparison."""
    channel = grpc.aio.insecure_channel(f"unix:{served.socket}")
    yield Stubs.on(channel)
    await channel.close()


VOICE = 10  # 0.10 EUR per started minute on the default plan


async def test_a_session_and_events_are_answered_as_the_server_answers_them(through: Stubs, direct: Stubs) -> None:
    await through.subscriber(balance=2_500_000)
    steps = [
        session_request("s1", INITIAL, 0, [{"rating_group": VOICE, "requested": {"time_s": 300}}]),
        session_request("s1", UPDATE, 1, [{"rating_group": VOICE, "used": {"time_s": 45}, "requested": {}}]),
        session_request("s1", UPDATE, 2, [{"rating_group": VOICE, "used": {"time_s": 45}, "requested": {}}]),
        session_request("s1", TERMINATE, 3, [{"rating_group": VOICE, "used": {"time_s": 45}}]),
    ]
    answers = [await through.charging.ChargeSession(step, timeout=10) for step in steps]
    assert [a.result_code for a in answers] == [2001] * 4
    assert answers[0].rating_groups[0].granted.time_s == 300
    assert [a.rating_groups[0].cost_micros for a in answers[1:]] == [100_000] * 3
    # A retransmission, through the door or not, gets the identical answer once.
    assert await through.charging.ChargeSession(steps[2], timeout=10) == answers[2]
    assert await direct.charging.ChargeSession(steps[2], timeout=10) == answers[2]
    debit = await through.charging.ChargeEvent(sms_request("sms-1"), timeout=10)
    assert (debit.result_code, debit.cost_micros, debit.balance_micros) == (2001, 50_000, 2_150_000)
    refund = sms_request("refund-1")
    refund.action, refund.refund_information = charging_pb2.REQUESTED_ACTION_REFUND_ACCOUNT, debit.refund_information
    assert (await through.charging.ChargeEvent(refund, timeout=10)).balance_micros == 2_200_000
    check = sms_request("check-1")
    check.action = charging_pb2.REQUESTED_ACTION_CHECK_BALANCE
    assert (await through.charging.ChargeEvent(check, timeout=10)).result_code == 2001
    unknown = await through.charging.ChargeEvent(sms_request("sms-2", msisdn="491799999999"), timeout=10)
    assert unknown.result_code == 5030
    assert (await through.balance()).balance_micros == 2_200_000


async def test_a_bad_request_is_refused_as_the_server_refuses_it(through: Stubs, direct: Stubs) -> None:
    await through.subscriber()
    bad = session_request("", INITIAL, 0, [{"rating_group": VOICE, "requested": {"time_s": 60}}])
    refusals = []
    for stubs in (through, direct):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stubs.charging.ChargeSession(bad, timeout=10)
        refusals.append((refused.value.code(), refused.value.details()))
    assert refusals[0] == refusals[1]
    assert refusals[0][0] == grpc.StatusCode.INVALID_ARGUMENT
    assert "session_id" in refusals[0][1]
    # Bytes that are no request: the field cannot be named, the call is still refused.
    with pytest.raises(grpc.aio.AioRpcError) as garbage:
        await through.channel.unary_unary("/charging.v1.Charging/ChargeEvent")(b"\xff\xff\xff", timeout=10)
    assert garbage.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_many_concurrent_sessions_are_each_charged_once(through: Stubs) -> None:
    subscribers = [f"4917000010{n:02d}" for n in range(20)]
    for msisdn in subscribers:
        await through.subscriber(msisdn=msisdn, balance=1_000_000)

    async def session(msisdn: str, n: int) -> list[int]:
        sid = f"{msisdn};{n}"
        codes = []
        for number, (kind, used) in enumerate(((INITIAL, 0), (UPDATE, 30), (UPDATE, 30), (TERMINATE, 30))):
            group: dict[str, object] = {"rating_group": VOICE}
            if used:
                group["used"] = {"time_s": used}
            if kind != TERMINATE:
                group["requested"] = {"time_s": 60}
            step = session_request(sid, kind, number, [group], msisdn=msisdn)
            answer = await through.charging.ChargeSession(step, timeout=30)
            if used and number == 2:  # a retransmission on the way: answered once
                assert await through.charging.ChargeSession(step, timeout=30) == answer
            codes.append(answer.result_code)
        return codes

    results = await asyncio.gather(*(session(m, n) for m in subscribers for n in range(5)))
    assert all(codes == [2001] * 4 for codes in results)
    # Five sessions of 90 s each, priced per started minute: 2 minutes, 0.20 EUR each.
    for msisdn in subscribers:
        assert (await through.balance(msisdn)).balance_micros == 1_000_000 - 5 * 200_000


async def test_streams_watches_and_health_pass_through(served: Served, through: Stubs) -> None:
    await through.subscriber()
    watch = through.charging.WatchSessions(charging_pb2.WatchRequest(), timeout=10)
    assert tuple(await watch.initial_metadata()) == READY
    watch.cancel()
    call = through.charging.ChargeStream(timeout=10)
    step = session_request("s3", INITIAL, 0, [{"rating_group": VOICE, "requested": {"time_s": 60}}])
    await call.write(charging_pb2.ChargeMessage(correlation_id=7, session=step))
    reply = await call.read()
    assert (reply.correlation_id, reply.session.result_code) == (7, 2001)
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.OK
    assert await health(through.channel) == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await through.admin.GetSubscriber(common_pb2.SubscriberId(msisdn="491799999999"), timeout=10)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_worker_that_goes_away_is_unavailable_until_it_is_back(
    served: Served, through: Stubs, settings: Settings, clock: ManualClock
) -> None:
    await through.subscriber()
    first = session_request("s4", INITIAL, 0, [{"rating_group": VOICE, "requested": {"time_s": 60}}])
    assert (await through.charging.ChargeSession(first, timeout=10)).result_code == 2001
    await served.app.stop()
    step = session_request("s4", UPDATE, 1, [{"rating_group": VOICE, "used": {"time_s": 30}, "requested": {}}])
    for call in (through.charging.ChargeSession(step, timeout=10), through.balance()):
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await call
        assert gone.value.code() == grpc.StatusCode.UNAVAILABLE
    served.app = await behind_door(settings, clock, served.socket, Mode.LOCAL)
    answer = None
    for _ in range(100):  # the door reconnects within its channel's backoff
        try:
            answer = await through.charging.ChargeSession(step, timeout=10)
            break
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
            await asyncio.sleep(0.1)
    assert answer is not None and answer.result_code == 2001
    assert answer.rating_groups[0].cost_micros == 100_000
    assert served.door.proc.poll() is None


async def test_beyond_a_workers_bound_a_call_is_refused_at_once_having_changed_nothing(
    settings: Settings, clock: ManualClock
) -> None:
    """The door holds a worker to its own in-flight bound (CHARGING_MAX_IN_FLIGHT): one
    more charging call is answered RESOURCE_EXHAUSTED at once, as the worker answers a
    unary call beyond it, instead of queueing in the door."""
    s = dataclasses.replace(settings, max_in_flight=2)
    with socket_directory() as directory:
        socket = directory / "w.sock"
        app = await behind_door(s, clock, socket, Mode.LOCAL)
        try:
            with door_in_front(s, Mode.LOCAL, [socket]) as door:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{door.port}") as channel:
                    stubs = Stubs.on(channel)
                    await stubs.subscriber(balance=10_000_000)

                    async def sms(n: int) -> int | grpc.StatusCode:
                        try:
                            return (await stubs.charging.ChargeEvent(sms_request(f"sms-{n}"), timeout=30)).result_code
                        except grpc.aio.AioRpcError as exc:
                            assert exc.details() == "server overloaded: retry later"
                            return exc.code()

                    outcomes = await asyncio.gather(*(sms(n) for n in range(120)))
                    charged = outcomes.count(2001)
                    assert charged + outcomes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 120
                    assert charged >= 2 and outcomes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) > 0
                    assert (await stubs.balance()).balance_micros == 10_000_000 - charged * 50_000
                refused = outcomes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
                # Counted by the door, which answered them itself (charging_door_*).
                event = {"method": "ChargeBatches", "request": "ChargeEvent"}

                def counted() -> tuple[float, ...]:
                    return (
                        door.figure("charging_door_calls_total", handling="charging", **event),
                        door.figure("charging_door_refusals_total", reason="busy", **event),
                        door.figure("charging_door_refusals_total", reason="deadline", **event),
                        door.figure("charging_door_in_flight", worker="0"),
                        door.figure("charging_door_batched_requests_total"),
                    )

                # As the door writes them once a second: wait for the snapshot after the calls.
                with contextlib.suppress(AssertionError):
                    until(lambda: counted() == (120, refused, 0, 0, charged), steps=250)
                assert counted() == (120, refused, 0, 0, charged)
                assert 1 <= door.figure("charging_door_batch_messages_total") <= charged
        finally:
            await app.stop()


def raw_call(port: int, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> list[object]:
    """One gRPC call written by hand over HTTP/2 (h2, without its header checks): what a
    caller may send that grpc's own clients refuse to. The events it got back."""
    config = h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False
    )
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    request = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path.encode()),
        (b":authority", b"localhost"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        *headers,
    ]
    conn.send_headers(1, request)
    conn.send_data(1, b"\x00" + len(body).to_bytes(4, "big") + body, end_stream=True)
    events: list[object] = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(conn.data_to_send())
        while not any(isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)) for e in events):
            data = sock.recv(65536)
            if not data:
                break
            events += conn.receive_data(data)
            sock.sendall(conn.data_to_send())
    return events


async def test_headers_grpc_would_not_send_are_dropped_not_fatal(served: Served, through: Stubs) -> None:
    """A caller's header that gRPC's own client refuses (upper case, bytes outside ASCII,
    control characters) is dropped: the door stays up and the call is answered."""
    await through.subscriber()
    check = sms_request("check-2")
    check.action = charging_pb2.REQUESTED_ACTION_CHECK_BALANCE
    for header in (
        (b"X-Upper", b"a"),
        (b"x-value", b"caf\xe9"),
        (b"x-control", b"a\x01b"),
        (b"authorization", b"\x7f"),
    ):
        for path, body in (
            ("/charging.v1.Charging/ChargeEvent", check.SerializeToString()),
            ("/charging.v1.Admin/GetSubscriber", common_pb2.SubscriberId(msisdn="491700000001").SerializeToString()),
        ):
            events = await asyncio.to_thread(raw_call, served.door.port, path, [header], body)
            trailers = [dict(e.headers) for e in events if isinstance(e, h2.events.TrailersReceived)]
            assert trailers and trailers[-1][b"grpc-status"] == b"0", (header, path, events)
    assert served.door.proc.poll() is None
    assert (await through.charging.ChargeEvent(check, timeout=10)).result_code == 2001


async def test_calls_given_up_by_their_callers_all_end(served: Served, through: Stubs) -> None:
    """Watches cancelled and calls past their deadline, many at once (tests/door_callers.py,
    a process of its own): every call ends, as the caller gave it up, answered or shed,
    never as an error of the door's, and the door drains within its grace period (its
    teardown asserts it)."""
    await through.subscriber()
    callers = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "tests.door_callers", str(served.door.port)],
        capture_output=True,
        text=True,
        timeout=45,
    )
    assert callers.returncode == 0, callers.stderr
    ended = json.loads(callers.stdout)
    assert sum(ended.values()) == door_callers.WATCHES + 2 * door_callers.HURRIED
    # RESOURCE_EXHAUSTED: a worker shedding load it cannot answer in time (admission).
    assert set(ended) <= {"OK", "CANCELLED", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}, ended
    assert ended["CANCELLED"] >= door_callers.WATCHES
    assert await health(through.channel) == health_pb2.HealthCheckResponse.SERVING


async def test_many_callers_do_not_fill_the_one_connection_to_a_worker(through: Stubs) -> None:
    """Each caller (here: gateway name) has its own stream to the worker, all on the
    door's one connection: more of them than a caller's connection may have streams
    (CHARGING_MAX_STREAMS_PER_CONNECTION, 48) still leave room for everyone."""
    await through.subscriber()
    check = sms_request("check-3")
    check.action = charging_pb2.REQUESTED_ACTION_CHECK_BALANCE
    for n in range(60):
        answer = await through.charging.ChargeEvent(check, metadata=[("charging-gateway", f"gw{n}")], timeout=10)
        assert answer.result_code == 2001
    watches = [through.charging.WatchSessions(charging_pb2.WatchRequest(), timeout=30) for _ in range(10)]
    for watch in watches:
        assert tuple(await watch.initial_metadata()) == READY
    assert (await through.charging.ChargeEvent(check, timeout=10)).result_code == 2001
    assert (await through.balance()).balance_micros == 1_000_000
    for watch in watches:
        watch.cancel()


# Secured: the door holds the certificates; the worker trusts what it forwards.


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    directory = tmp_path / "certs"
    certs.write_dev_set(directory)
    return directory


@pytest.fixture
async def secured(settings: Settings, clock: ManualClock, pki: Path) -> AsyncIterator[tuple[App, Door]]:
    s = secured_settings(settings, pki)
    with socket_directory() as directory:
        socket = directory / "w.sock"
        app = await behind_door(s, clock, socket, Mode.SECURED)
        try:
            with door_in_front(s, Mode.SECURED, [socket]) as door:
                yield app, door
        finally:
            await app.stop()


@pytest.mark.timeout(180)
async def test_every_method_against_every_role_certificate_through_the_door(
    secured: tuple[App, Door], pki: Path
) -> None:
    _, door = secured
    assert await against_the_role_table(door.port, pki) == []


async def test_without_a_certificate_there_is_no_connection(secured: tuple[App, Door], pki: Path) -> None:
    _, door = secured
    async with connect(door.port, creds(pki)) as anonymous:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health(anonymous)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_tokens_on_the_token_port_and_no_identity_made_up_in_metadata(
    secured: tuple[App, Door], pki: Path
) -> None:
    app, door = secured
    assert app.redis is not None
    async with connect(door.port, creds(pki, "operator")) as operator:
        await Stubs.on(operator).subscriber(balance=0)
    recharge = topup_pb2.RechargeRequest(
        subscriber=common_pb2.SubscriberId(msisdn="491700000001"),
        amount_micros=2_000_000,
        channel=topup_pb2.CHANNEL_RETAIL,
        idempotency_key="shop-1",
    )
    # A caller without a token claims the operator's certificate names: dropped by the door.
    claims = [("charging-door-peer-uri", certs.role_uri("operator")), ("charging-door-peer-dns", "localhost")]
    async with connect(door.token_port, creds(pki)) as anonymous:
        for method, body in (
            ("/charging.v1.TopUp/Recharge", recharge.SerializeToString()),
            ("/charging.v1.Charging/ChargeSession", b""),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await anonymous.unary_unary(method)(body, metadata=claims, timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, method
    token = await TokenStore(app.redis).create("webshop", ("channel",), ("RETAIL",), 1_800_000_000)
    async with connect(door.token_port, creds(pki, token=token)) as shop:
        answer = await topup_pb2_grpc.TopUpStub(shop).Recharge(recharge, timeout=10)
        assert answer.balance.balance_micros == 2_000_000
        # The shop's token has no network role: a charging call is refused, as directly.
        assert await code_of(shop, "/charging.v1.Charging/ChargeEvent") == grpc.StatusCode.PERMISSION_DENIED
        await TokenStore(app.redis).revoke("webshop")
        assert await code_of(shop, "/charging.v1.TopUp/Recharge", SALE) == grpc.StatusCode.UNAUTHENTICATED


async def test_a_revoked_token_is_shut_out_of_the_door_s_open_stream_within_a_second(
    secured: tuple[App, Door], pki: Path
) -> None:
    """The door keeps one ChargeBatches stream per caller open to the worker; the worker
    judges that stream's caller again once a second, so a revoked token's next call is
    UNAUTHENTICATED well before the door would replace the stream (30 s), and changes
    nothing."""
    app, door = secured
    assert app.redis is not None
    async with connect(door.port, creds(pki, "operator")) as operator:
        await Stubs.on(operator).subscriber()
        tokens = TokenStore(app.redis)
        token = await tokens.create("pgw-9", ("network",), (), 1_800_000_000)
        async with connect(door.token_port, creds(pki, token=token)) as pgw:
            charging = Stubs.on(pgw).charging
            first = await charging.ChargeEvent(sms_request("sms-1"), timeout=10)
            assert first.result_code == 2001
            await tokens.revoke("pgw-9")
            await asyncio.sleep(RECHECK_S + 0.5)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await charging.ChargeEvent(sms_request("sms-2"), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as refused:  # and on a new stream
                await charging.ChargeEvent(sms_request("sms-3"), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert (await Stubs.on(operator).balance()).balance_micros == 1_000_000 - first.cost_micros
    # Both answered by the end of their stream, which the door counts by status.
    door.figure_reaches(
        2, "charging_door_stream_ends_total", method="ChargeBatches", request="ChargeEvent", result="UNAUTHENTICATED"
    )


async def test_a_network_element_charges_through_the_door_with_its_certificate(
    secured: tuple[App, Door], pki: Path
) -> None:
    _, door = secured
    async with connect(door.port, creds(pki, "operator")) as operator:
        await Stubs.on(operator).subscriber()
    async with connect(door.port, creds(pki, "network")) as network:
        step = session_request("s5", INITIAL, 0, [{"rating_group": VOICE, "requested": {"time_s": 60}}])
        assert (await Stubs.on(network).charging.ChargeSession(step, timeout=10)).result_code == 2001
    async with connect(door.port, creds(pki, "monitor")) as monitor:
        assert await code_of(monitor, "/charging.v1.Charging/ChargeSession") == grpc.StatusCode.PERMISSION_DENIED


# `charging serve` with the door, as real processes.


def test_the_supervisor_runs_the_door_in_front_of_its_workers(tmp_path: Path, app_database_url: str) -> None:
    metrics_port = free_port()
    proc, port = server_process.serve(
        tmp_path / "redis",
        app_database_url,
        CHARGING_WORKERS="2",
        CHARGING_GRPC_DOOR=str(DOOR),
        CHARGING_METRICS_ADDRESS=f"127.0.0.1:{metrics_port}",
    )
    try:
        server_process.wait_serving(proc, port)

        def doors() -> list[int]:
            return [pid for pid, cmd in children(proc.pid).items() if "charging-grpc-door" in cmd]

        until(lambda: len(doors()) == 1)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            admin_pb2_grpc.AdminStub(channel).CreateSubscriber(
                admin_pb2.CreateSubscriberRequest(
                    msisdn="491700000001", plan_id="default", initial_balance_micros=1_000_000
                ),
                timeout=30,
            )
        first = doors()[0]
        os.kill(first, signal.SIGKILL)
        until(lambda: len(doors()) == 1 and first not in doors())
        server_process.wait_serving(proc, port)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            charge = charging_pb2_grpc.ChargingStub(channel).ChargeEvent
            answer = None
            for _ in range(100):
                try:
                    answer = charge(sms_request("sms-9"), timeout=30)
                    break
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE  # a worker not reached yet
            assert answer is not None and answer.result_code == 2001

        def scraped() -> float:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30) as response:
                families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
            calls = families.get("charging_door_calls")
            if calls is None:
                return 0.0
            assert calls.type == "counter" and families["charging_door_in_flight"].type == "gauge"
            labels = {"handling": "charging", "method": "ChargeBatches", "request": "ChargeEvent"}
            return sum(float(s.value) for s in calls.samples if s.name.endswith("_total") and s.labels == labels)

        # The restarted door's figures, typed, on the supervisor's one metrics endpoint.
        until(lambda: scraped() >= 1, steps=250)
        processes = children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert not [pid for pid in processes if Path(f"/proc/{pid}").exists() and "Z" not in stat_of(pid)]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=60)


@pytest.mark.timeout(120)
def test_a_call_whose_worker_is_at_its_bound_is_answered_by_another(tmp_path: Path, app_database_url: str) -> None:
    """Two workers, each taking 2 requests from the door at once; one is stopped
    (SIGSTOP: alive, answering nothing). The 2 calls that reach it wait there; every later
    call the caller's turn gives it goes, unsent, to the other worker: answered, none
    refused RESOURCE_EXHAUSTED. Resumed, the stopped worker answers its own."""
    proc, port = server_process.serve(
        tmp_path / "redis",
        app_database_url,
        CHARGING_WORKERS="2",
        CHARGING_GRPC_DOOR=str(DOOR),
        CHARGING_MAX_IN_FLIGHT="2",
    )
    stopped = 0
    try:
        server_process.wait_serving(proc, port)
        workers = [pid for pid, cmd in children(proc.pid).items() if "charging.cli" in cmd]
        assert len(workers) == 2, children(proc.pid)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            admin_pb2_grpc.AdminStub(channel).CreateSubscriber(
                admin_pb2.CreateSubscriberRequest(
                    msisdn="491700000001", plan_id="default", initial_balance_micros=10_000_000
                ),
                timeout=30,
            )
            charge = charging_pb2_grpc.ChargingStub(channel).ChargeEvent
            for n in range(4):  # the door's streams to both workers are open
                assert charge(sms_request(f"warm-{n}"), timeout=30).result_code == 2001
            stopped = workers[0]
            os.kill(stopped, signal.SIGSTOP)
            # One call at a time, so the running worker is never at its bound: the calls
            # the turn gives the stopped one wait there until it holds 2, then go on.
            waiting = []
            for n in range(12):
                call = charge.future(sms_request(f"sms-{n}"), timeout=60)
                try:
                    assert call.result(timeout=5).result_code == 2001
                except grpc.FutureTimeoutError:
                    waiting.append(call)
            assert len(waiting) == 2
            os.kill(stopped, signal.SIGCONT)
            stopped = 0
            assert [call.result().result_code for call in waiting] == [2001] * len(waiting)
            balance = admin_pb2_grpc.AdminStub(channel).GetSubscriber(
                common_pb2.SubscriberId(msisdn="491700000001"), timeout=30
            )
            assert balance.balance_micros == 10_000_000 - 16 * 50_000
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if stopped:
            os.kill(stopped, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=60)


def stat_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
