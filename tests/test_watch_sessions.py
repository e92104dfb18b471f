"""Charging.WatchSessions end to end on a real server: a gRPC gateway's session gets a
final-unit indication, a top-up arrives, the stream says REAUTHORIZE and the next UPDATE
gets a full grant; barring the line says ABORT; another gateway's stream hears only its
own sessions. And the pure parts: what a signal asks of a held session, the table."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from charging.clock import ManualClock
from charging.held import HeldSessions
from charging.security import certs
from charging.security.tokens import TokenStore
from charging.server import App
from charging.settings import Settings
from charging.signals import due
from charging.v1 import admin_pb2, charging_pb2, common_pb2, topup_pb2
from charging.watch import Watched
from tests.conftest import INITIAL, UPDATE, Stubs, session_request
from tests.test_security import connect, creds, secured_settings

A, B = (("charging-gateway", "pgw-a"),), (("charging-gateway", "pgw-b"),)
MSISDN_A, MSISDN_B = "491700000001", "491700000002"
REAUTHORIZE, ABORT = charging_pb2.SESSION_ACTION_REAUTHORIZE, charging_pb2.SESSION_ACTION_ABORT
DATA = {"rating_group": 30, "requested": {"total_octets": 1_000_000}}
# A bound against a hang only: every signal here is delivered within milliseconds.
BOUND_S = 10


@pytest.mark.parametrize(
    ("kind", "final_unit", "action"),
    [("credit", True, "reauth"), ("credit", False, None), ("blocked", True, "abort"), ("blocked", False, "abort")],
)
def test_what_a_signal_asks_of_a_held_session(kind: str, final_unit: bool, action: str | None) -> None:
    assert due(kind, final_unit) == action  # type: ignore[arg-type]


def test_held_sessions_by_account_and_oldest_out_first() -> None:
    held: HeldSessions[Watched] = HeldSessions(limit=2)
    held.record("s1", Watched("7", "gw"))
    held.record("s2", Watched("7", "gw"))
    held.record("s3", Watched("8", "gw"))
    assert [sid for sid, _ in held.of_account("7")] == ["s2"] and len(held) == 2
    held.forget("s2")
    assert held.of_account("7") == [] and held.get("s3") == Watched("8", "gw")


async def watch(stubs: Stubs, gateway: tuple[tuple[str, str], ...]) -> grpc.aio.UnaryStreamCall:  # type: ignore[type-arg]
    call = stubs.charging.WatchSessions(charging_pb2.WatchRequest(), metadata=gateway)
    await call.initial_metadata()  # sent once the watch is in place
    return call


async def next_signal(call: grpc.aio.UnaryStreamCall) -> tuple[str, int]:  # type: ignore[type-arg]
    signal = await asyncio.wait_for(call.read(), BOUND_S)
    assert isinstance(signal, charging_pb2.SessionSignal)
    return signal.session_id, signal.action


async def recharge(stubs: Stubs, msisdn: str, key: str) -> None:
    await stubs.topup.Recharge(
        topup_pb2.RechargeRequest(
            subscriber=common_pb2.SubscriberId(msisdn=msisdn),
            amount_micros=1_000_000,
            channel=topup_pb2.CHANNEL_RETAIL,
            idempotency_key=key,
        )
    )


async def test_a_gateway_hears_re_authorize_after_a_top_up_and_abort_after_a_bar(stubs: Stubs) -> None:
    await stubs.subscriber(MSISDN_A, balance=5_000)  # 500 KB of data
    await stubs.subscriber(MSISDN_B, balance=5_000)
    a, b = await watch(stubs, A), await watch(stubs, B)

    first = await stubs.charging.ChargeSession(session_request("a-1", INITIAL, 0, [DATA], MSISDN_A), metadata=A)
    assert first.result_code == 2001 and first.rating_groups[0].HasField("final_unit")
    assert first.rating_groups[0].granted.total_octets == 512_000

    await recharge(stubs, MSISDN_A, "r1")
    assert await next_signal(a) == ("a-1", REAUTHORIZE)
    used = {**DATA, "used": {"total_octets": 512_000}}
    again = await stubs.charging.ChargeSession(session_request("a-1", UPDATE, 1, [used], MSISDN_A), metadata=A)
    assert again.result_code == 2001 and not again.rating_groups[0].HasField("final_unit")
    assert again.rating_groups[0].granted.total_octets == 1_000_448

    # No final unit any more: a second top-up asks nothing; barring the line aborts it.
    await recharge(stubs, MSISDN_A, "r2")
    await stubs.admin.SetSubscriberStatus(
        admin_pb2.SetStatusRequest(
            subscriber=common_pb2.SubscriberId(msisdn=MSISDN_A), status=admin_pb2.SUBSCRIBER_STATUS_BARRED
        )
    )
    assert await next_signal(a) == ("a-1", ABORT)

    # Gateway B heard none of that: its first signal is for its own session, signalled last.
    own = await stubs.charging.ChargeSession(session_request("b-1", INITIAL, 0, [DATA], MSISDN_B), metadata=B)
    assert own.rating_groups[0].HasField("final_unit")
    await recharge(stubs, MSISDN_B, "r3")
    assert await next_signal(b) == ("b-1", REAUTHORIZE)
    a.cancel()
    b.cancel()


async def test_a_session_charged_without_a_label_is_not_told_to_a_labelled_watch(stubs: Stubs) -> None:
    await stubs.subscriber(MSISDN_A, balance=5_000)
    labelled, bare = await watch(stubs, A), await watch(stubs, ())
    await stubs.charging.ChargeSession(session_request("s-1", INITIAL, 0, [DATA], MSISDN_A))
    await stubs.admin.SetSubscriberStatus(
        admin_pb2.SetStatusRequest(
            subscriber=common_pb2.SubscriberId(msisdn=MSISDN_A), status=admin_pb2.SUBSCRIBER_STATUS_SUSPENDED
        )
    )
    assert await next_signal(bare) == ("s-1", ABORT)
    # The labelled stream's next signal is one of its own, published after.
    await stubs.subscriber(MSISDN_B, balance=5_000)
    await stubs.charging.ChargeSession(session_request("a-2", INITIAL, 0, [DATA], MSISDN_B), metadata=A)
    await recharge(stubs, MSISDN_B, "r4")
    assert await next_signal(labelled) == ("a-2", REAUTHORIZE)
    labelled.cancel()
    bare.cancel()


async def test_a_malformed_gateway_label_is_refused_naming_the_metadata(stubs: Stubs) -> None:
    bad = (("charging-gateway", "no spaces allowed"),)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stubs.charging.WatchSessions(charging_pb2.WatchRequest(), metadata=bad).read()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "charging-gateway" in (refused.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stubs.charging.ChargeSession(session_request("x", INITIAL, 0, [DATA]), metadata=bad)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture
async def secured(settings: Settings, clock: ManualClock, tmp_path: Path) -> AsyncIterator[tuple[App, Path]]:
    pki = tmp_path / "certs"
    certs.write_dev_set(pki)
    application = App(secured_settings(settings, pki), clock=clock, run_background=False)
    await application.start()
    yield application, pki
    await application.stop()


async def test_the_gateway_is_the_authenticated_caller_whatever_label_it_sends(secured: tuple[App, Path]) -> None:
    """Two network elements with the same label: one by certificate, one by token. Each
    watch hears only the sessions its own credential charged."""
    app, pki = secured
    assert app.redis is not None
    token = await TokenStore(app.redis).create("pgw-two", ("network",), (), 1_800_000_000)
    same = (("charging-gateway", "pgw"),)
    async with (
        connect(app.grpc_port, creds(pki, "operator")) as operator,
        connect(app.grpc_port, creds(pki, "channel")) as shop,
        connect(app.grpc_port, creds(pki, "network")) as certified,
        connect(app.token_port, creds(pki, token=token)) as tokened,
    ):
        ops, one, two = Stubs.on(operator), Stubs.on(certified), Stubs.on(tokened)
        sales = Stubs.on(shop)
        await ops.subscriber(MSISDN_A, balance=5_000)
        await ops.subscriber(MSISDN_B, balance=5_000)
        first, second = await watch(one, same), await watch(two, same)
        await one.charging.ChargeSession(session_request("one-1", INITIAL, 0, [DATA], MSISDN_A), metadata=same)
        await two.charging.ChargeSession(session_request("two-1", INITIAL, 0, [DATA], MSISDN_B), metadata=same)
        await recharge(sales, MSISDN_A, "t1")
        await recharge(sales, MSISDN_B, "t2")
        assert await next_signal(first) == ("one-1", REAUTHORIZE)
        assert await next_signal(second) == ("two-1", REAUTHORIZE)  # not one-1, signalled first
        first.cancel()
        second.cancel()
