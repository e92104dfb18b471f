"""A peer that takes a RAR and never answers holds up nothing: the signal hub goes on, the
next signal's ASR reaches the peer while the RAR still waits for its answer (within a
60 s answer timeout), and the RAR is counted unanswered once it is given up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from diameter.message import constants as c

from charging.clock import ManualClock
from charging.server import App
from charging.settings import Settings
from charging.v1 import admin_pb2
from tests.conftest import Stubs
from tests.diameter_client import Client, find, msccs, result_code
from tests.test_backup import recharge
from tests.test_diameter_reauth import MSISDN, WHO, data_request, grpc_stubs, sent


@pytest.fixture
async def patient(settings: Settings, clock: ManualClock) -> AsyncIterator[App]:
    changed = replace(settings, diameter_address="127.0.0.1:0", diameter_answer_timeout_s=60.0)
    app = App(changed, clock=clock, run_background=False)
    await app.start()
    yield app
    await app.stop()


async def test_an_unanswered_rar_holds_up_neither_the_hub_nor_the_next_signal(patient: App) -> None:
    assert patient.diameter is not None
    pgw = await Client.connect(patient.diameter.port)
    try:
        assert result_code(await pgw.cer()) == 2001
        async with grpc_stubs(patient) as stubs:
            await Stubs.subscriber(stubs, MSISDN, balance=5_000)
            cca = await pgw.send(data_request(pgw, 1, 0), application=4)
            assert find(msccs(cca)[0], c.AVP_FINAL_UNIT_INDICATION) is not None
            await stubs.topup.Recharge(recharge(MSISDN, 1_000_000, "r1"))
            rar = await asyncio.wait_for(pgw.incoming.get(), 10)
            assert rar.header.command_code == c.CMD_RE_AUTH  # and never answered
            await stubs.admin.SetSubscriberStatus(
                admin_pb2.SetStatusRequest(subscriber=WHO, status=admin_pb2.SUBSCRIBER_STATUS_BARRED)
            )
            asr = await asyncio.wait_for(pgw.incoming.get(), 10)  # long before the RAR's 60 s
            assert asr.header.command_code == c.CMD_ABORT_SESSION
            unanswered = sent("RAR", "unanswered")
    finally:
        await pgw.close()
    # The peer went away: its RAR is given up and counted once.
    await asyncio.wait_for(patient.diameter.settled(), 30)
    assert sent("RAR", "unanswered") == unanswered + 1
