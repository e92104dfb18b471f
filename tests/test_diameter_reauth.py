"""Server-initiated requests end to end: a data session runs out (final unit, redirect),
a top-up arrives over gRPC, the peer receives the RAR, re-authorizes with a CCR-U and gets
a full grant; a barred line's session gets an ASR, and a peer that refuses it is counted
and not asked again."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc
import pytest
from diameter.message import Message
from diameter.message import constants as c
from diameter.message.avp import Avp
from diameter.message.commands.credit_control import RequestedServiceUnit, UsedServiceUnit
from prometheus_client import REGISTRY

from charging.server import App
from charging.settings import Settings
from charging.v1 import admin_pb2, common_pb2, topup_pb2
from tests.conftest import Stubs
from tests.diameter_client import Client, find, granted, msccs, result_code

MSISDN = "491700000001"
WHO = common_pb2.SubscriberId(msisdn=MSISDN)
SID = "pgw.test.example;42;data"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, diameter_address="127.0.0.1:0")


@pytest.fixture
async def pgw(app: App) -> AsyncIterator[Client]:
    assert app.diameter is not None
    client = await Client.connect(app.diameter.port)
    assert result_code(await client.cer()) == 2001
    yield client
    await client.close()


@contextlib.asynccontextmanager
async def grpc_stubs(app: App) -> AsyncIterator[Stubs]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
    try:
        yield Stubs.on(channel)
    finally:
        await channel.close()


def sent(command: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("charging_diameter_sent_total", {"command": command, "outcome": outcome}) or 0.0


def data_request(pgw: Client, kind: int, number: int, used: int = 0) -> Message:
    ccr = pgw.ccr(SID, kind, number)
    ccr.add_subscription_id(subscription_id_type=c.E_SUBSCRIPTION_ID_TYPE_END_USER_E164, subscription_id_data=MSISDN)
    ccr.add_multiple_services_credit_control(
        requested_service_unit=RequestedServiceUnit(cc_total_octets=1_000_000),
        used_service_unit=UsedServiceUnit(cc_total_octets=used) if used else None,
        rating_group=30,
    )
    return ccr


def answer_avps(pgw: Client, request: Message, code: int) -> list[Avp]:
    sid = find(request.avps, c.AVP_SESSION_ID)
    assert sid is not None
    return [sid, Avp.new(c.AVP_RESULT_CODE, value=code), *pgw.origin()]


async def test_a_top_up_re_authorizes_a_session_that_got_a_final_unit_indication(stubs: Stubs, pgw: Client) -> None:
    await stubs.subscriber(MSISDN, balance=5_000)  # 500 KB of data
    cca = await pgw.send(data_request(pgw, 1, 0), application=4)
    (mscc,) = msccs(cca)
    assert granted(mscc) == {"CC-Total-Octets": 512_000}
    assert find(mscc, c.AVP_FINAL_UNIT_INDICATION) is not None

    before = sent("RAR", "answered")
    await stubs.topup.Recharge(
        topup_pb2.RechargeRequest(
            subscriber=WHO, amount_micros=1_000_000, channel=topup_pb2.CHANNEL_RETAIL, idempotency_key="r1"
        )
    )
    rar = await asyncio.wait_for(pgw.incoming.get(), 10)
    assert rar.header.command_code == c.CMD_RE_AUTH and rar.header.application_id == 4
    assert find(rar.avps, c.AVP_SESSION_ID).value == SID  # type: ignore[union-attr]
    assert find(rar.avps, c.AVP_RE_AUTH_REQUEST_TYPE).value == c.E_RE_AUTH_REQUEST_TYPE_AUTHORIZE_ONLY  # type: ignore[union-attr]
    assert find(rar.avps, c.AVP_DESTINATION_HOST).value == pgw.origin_host.encode()  # type: ignore[union-attr]
    assert find(rar.avps, c.AVP_AUTH_APPLICATION_ID).value == 4  # type: ignore[union-attr]
    await pgw.answer(rar, answer_avps(pgw, rar, 2001))

    # The PGW re-authorizes: the usage so far and a new request get a full grant.
    cca = await pgw.send(data_request(pgw, 2, 1, used=512_000), application=4)
    assert result_code(cca) == 2001
    (mscc,) = msccs(cca)
    assert granted(mscc) == {"CC-Total-Octets": 1_000_448}
    assert find(mscc, c.AVP_FINAL_UNIT_INDICATION) is None
    assert result_code(await pgw.dwr()) == 2001  # the RAA has been taken in
    assert sent("RAR", "answered") == before + 1

    # A second top-up finds no session with a final-unit indication: no RAR.
    await stubs.topup.Recharge(
        topup_pb2.RechargeRequest(
            subscriber=WHO, amount_micros=1_000_000, channel=topup_pb2.CHANNEL_RETAIL, idempotency_key="r2"
        )
    )
    assert result_code(await pgw.dwr()) == 2001
    assert pgw.incoming.empty()


async def test_barring_a_line_aborts_its_session_and_a_refused_asr_is_counted_once(stubs: Stubs, pgw: Client) -> None:
    await stubs.subscriber(MSISDN, balance=1_000_000)
    assert result_code(await pgw.send(data_request(pgw, 1, 0), application=4)) == 2001
    refused = sent("ASR", "refused")
    await stubs.admin.SetSubscriberStatus(
        admin_pb2.SetStatusRequest(subscriber=WHO, status=admin_pb2.SUBSCRIBER_STATUS_BARRED)
    )
    asr = await asyncio.wait_for(pgw.incoming.get(), 10)
    assert asr.header.command_code == c.CMD_ABORT_SESSION
    assert find(asr.avps, c.AVP_SESSION_ID).value == SID  # type: ignore[union-attr]
    # Like Open5GS, which has no ASR handler: its stack answers 3001.
    await pgw.answer(asr, answer_avps(pgw, asr, 3001))
    assert result_code(await pgw.dwr()) == 2001
    assert sent("ASR", "refused") == refused + 1
    # The next report is refused by the core all the same: the line is barred.
    cca = await pgw.send(data_request(pgw, 2, 1, used=1_000), application=4)
    assert result_code(cca) == 4010
    # Suspending it as well asks nobody again: the session is no longer held.
    await stubs.admin.SetSubscriberStatus(
        admin_pb2.SetStatusRequest(subscriber=WHO, status=admin_pb2.SUBSCRIBER_STATUS_SUSPENDED)
    )
    assert result_code(await pgw.dwr()) == 2001
    assert pgw.incoming.empty()


async def test_a_peer_that_does_not_answer_a_rar_is_counted_and_not_asked_again(settings: Settings) -> None:
    app = App(replace(settings, diameter_answer_timeout_s=0.2), run_background=False)
    await app.start()
    try:
        assert app.diameter is not None
        pgw = await Client.connect(app.diameter.port)
        assert result_code(await pgw.cer()) == 2001
        async with grpc_stubs(app) as own:
            account = (await own.subscriber(MSISDN, balance=5_000)).account_id
        cca = await pgw.send(data_request(pgw, 1, 0), application=4)
        assert find(msccs(cca)[0], c.AVP_FINAL_UNIT_INDICATION) is not None
        before = sent("RAR", "unanswered")
        await app.diameter.signalled("credit", account)
        await app.diameter.settled()  # returns once the RAR has timed out
        rar = await asyncio.wait_for(pgw.incoming.get(), 10)
        assert rar.header.command_code == c.CMD_RE_AUTH
        assert sent("RAR", "unanswered") == before + 1
        await app.diameter.signalled("credit", account)  # sent once: nothing more
        await app.diameter.settled()
        assert pgw.incoming.empty()
        await pgw.close()
    finally:
        await app.stop()
