"""Account signals reach the client held by another process: two real ``charging serve``
processes on one Redis (as the workers of ``charging serve --workers N`` are, each with
its own subscription, charging/signals.py). Process A holds a Diameter peer's session and
an Nchf consumer's resource; top-ups and a bar made through process B's gRPC API reach
them: A sends the RAR and the ChargingNotify REAUTHORIZATION, then the ASR and the
ABORT_CHARGING. And a peer that reconnected to another process since its session was
answered gets the RAR and ASR from there (charging/diameter/relay.py), once."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from diameter.message import Message
from diameter.message import constants as c
from diameter.message.avp import Avp
from diameter.message.commands.credit_control import RequestedServiceUnit, UsedServiceUnit
from prometheus_client.parser import text_string_to_metric_families

from charging.v1 import admin_pb2, common_pb2
from tests import server_process
from tests.conftest import Stubs, free_port
from tests.diameter_client import Client, find, msccs, result_code
from tests.smf_server import Smf, smf_server
from tests.test_backup import recharge
from tests.test_nchf import ROOT, request

PGW_LINE, SMF_LINE, SMF_IMSI = "491700000011", "491700000012", "262011234567812"
SID = "pgw.test.example;7;data"


@dataclass(frozen=True)
class Two:
    grpc_a: int
    diameter_a: int
    nchf_a: int
    grpc_b: int


@pytest.fixture
def two(redis_url: str, app_database_url: str, tmp_path: Path) -> Iterator[Two]:
    diameter, nchf = free_port(), free_port()
    doors = {"CHARGING_DIAMETER_ADDRESS": f"127.0.0.1:{diameter}", "CHARGING_NCHF_ADDRESS": f"127.0.0.1:{nchf}"}
    a, port_a = server_process.serve(tmp_path / "a", app_database_url, redis_url=redis_url, **doors)
    try:
        server_process.wait_serving(a, port_a)
        b, port_b = server_process.serve(tmp_path / "b", app_database_url, redis_url=redis_url)
        try:
            server_process.wait_serving(b, port_b)
            yield Two(port_a, diameter, nchf, port_b)
        finally:
            server_process.stop(b)
    finally:
        server_process.stop(a)


@pytest.fixture
async def smf() -> AsyncIterator[Smf]:
    async with smf_server() as server:
        yield server


def ccr_i(pgw: Client) -> Message:
    ccr = pgw.ccr(SID, 1, 0)
    ccr.add_subscription_id(subscription_id_type=c.E_SUBSCRIPTION_ID_TYPE_END_USER_E164, subscription_id_data=PGW_LINE)
    ccr.add_multiple_services_credit_control(
        requested_service_unit=RequestedServiceUnit(cc_total_octets=1_000_000), rating_group=30
    )
    return ccr


def create(smf: Smf) -> dict[str, Any]:
    body = request(0, [{"ratingGroup": 30, "requestedUnit": {"totalVolume": 1_048_576}}], notifyUri=smf.uri())
    body["subscriberIdentifier"] = f"imsi-{SMF_IMSI}"
    return body


async def answered(pgw: Client, command: int) -> Message:
    """The next request A sends the peer, which must be ``command``; answered 2001."""
    got = await asyncio.wait_for(pgw.incoming.get(), 30)
    assert got.header.command_code == command
    assert find(got.avps, c.AVP_SESSION_ID).value == SID  # type: ignore[union-attr]
    sid = find(got.avps, c.AVP_SESSION_ID)
    assert sid is not None
    await pgw.answer(got, [sid, Avp.new(c.AVP_RESULT_CODE, value=2001), *pgw.origin()])
    return got


async def test_top_ups_and_a_bar_made_in_one_process_reach_the_clients_held_by_another(two: Two, smf: Smf) -> None:
    pgw = await Client.connect(two.diameter_a)
    try:
        assert result_code(await pgw.cer()) == 2001
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{two.grpc_b}") as channel,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{two.nchf_a}", http1=False, http2=True) as http,
        ):
            b = Stubs.on(channel)
            await b.subscriber(PGW_LINE, balance=5_000)
            await b.subscriber(SMF_LINE, balance=5_000, imsi=SMF_IMSI)
            # Both sessions charged by A, each getting its last 500 KB as a final grant.
            cca = await pgw.send(ccr_i(pgw), application=4)
            assert find(msccs(cca)[0], c.AVP_FINAL_UNIT_INDICATION) is not None
            created = await http.post(ROOT, json=create(smf))
            assert created.status_code == 201, created.text
            assert "finalUnitIndication" in created.json()["multipleUnitInformation"][0]

            # Credit through B: A re-authorizes both.
            await b.topup.Recharge(recharge(PGW_LINE, 1_000_000, "t1"))
            await answered(pgw, c.CMD_RE_AUTH)
            await b.topup.Recharge(recharge(SMF_LINE, 1_000_000, "t2"))
            got = await asyncio.wait_for(smf.received.get(), 30)
            assert got.body == {"notificationType": "REAUTHORIZATION", "reauthorizationDetails": [{"ratingGroup": 30}]}

            # Lines barred through B: A aborts both.
            for line in (PGW_LINE, SMF_LINE):
                await b.admin.SetSubscriberStatus(
                    admin_pb2.SetStatusRequest(
                        subscriber=common_pb2.SubscriberId(msisdn=line), status=admin_pb2.SUBSCRIBER_STATUS_BARRED
                    )
                )
            await answered(pgw, c.CMD_ABORT_SESSION)
            got = await asyncio.wait_for(smf.received.get(), 30)
            assert got.body == {"notificationType": "ABORT_CHARGING"}
            assert result_code(await pgw.dwr()) == 2001
            assert pgw.incoming.empty() and smf.received.empty()
    finally:
        await pgw.close()


@dataclass(frozen=True)
class Door:
    grpc: int
    diameter: int
    metrics: int


@pytest.fixture
def two_doors(redis_url: str, app_database_url: str, tmp_path: Path) -> Iterator[tuple[Door, Door]]:
    """Two processes on one Redis, each with a Diameter door and a metrics endpoint."""
    started: list[Any] = []
    doors = []
    try:
        for name in ("a", "b"):
            diameter, metrics = free_port(), free_port()
            proc, port = server_process.serve(
                tmp_path / name,
                app_database_url,
                redis_url=redis_url,
                CHARGING_DIAMETER_ADDRESS=f"127.0.0.1:{diameter}",
                CHARGING_METRICS_ADDRESS=f"127.0.0.1:{metrics}",
            )
            started.append(proc)
            server_process.wait_serving(proc, port)
            doors.append(Door(port, diameter, metrics))
        yield doors[0], doors[1]
    finally:
        for proc in reversed(started):
            server_process.stop(proc)


def sample(door: Door, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{door.metrics}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


async def until(done: Any) -> None:
    """Poll until ``done()`` (a bounded wait on another process, not a timing assertion)."""
    for _ in range(600):
        if done():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("never happened")


async def test_a_peer_that_reconnected_to_another_process_gets_the_rar_and_asr_from_there_once(
    two_doors: tuple[Door, Door],
) -> None:
    a, b = two_doors
    first = await Client.connect(a.diameter)
    assert result_code(await first.cer()) == 2001
    async with grpc.aio.insecure_channel(f"127.0.0.1:{b.grpc}") as channel:
        stubs = Stubs.on(channel)
        await stubs.subscriber(PGW_LINE, balance=5_000)
        cca = await first.send(ccr_i(first), application=4)
        assert find(msccs(cca)[0], c.AVP_FINAL_UNIT_INDICATION) is not None  # A holds the session
        assert result_code(await first.dpr()) == 2001
        await first.close()
        await until(lambda: sample(a, "charging_diameter_connections") == 0)
        pgw = await Client.connect(b.diameter)  # the same peer, now on B
        try:
            assert result_code(await pgw.cer(state_id=1)) == 2001

            await stubs.topup.Recharge(recharge(PGW_LINE, 1_000_000, "t1"))
            await answered(pgw, c.CMD_RE_AUTH)  # decided by A, sent by B
            ccr = pgw.ccr(SID, 2, 1)
            ccr.add_subscription_id(
                subscription_id_type=c.E_SUBSCRIPTION_ID_TYPE_END_USER_E164, subscription_id_data=PGW_LINE
            )
            ccr.add_multiple_services_credit_control(
                requested_service_unit=RequestedServiceUnit(cc_total_octets=1_000_000),
                used_service_unit=UsedServiceUnit(cc_total_octets=512_000),
                rating_group=30,
            )
            cca = await pgw.send(ccr, application=4)
            assert result_code(cca) == 2001
            assert find(msccs(cca)[0], c.AVP_FINAL_UNIT_INDICATION) is None  # now B holds it too

            # Barred: A relays its ASR, B decides its own; the peer gets one.
            await stubs.admin.SetSubscriberStatus(
                admin_pb2.SetStatusRequest(
                    subscriber=common_pb2.SubscriberId(msisdn=PGW_LINE), status=admin_pb2.SUBSCRIBER_STATUS_BARRED
                )
            )
            await answered(pgw, c.CMD_ABORT_SESSION)
            await until(lambda: sample(b, "charging_diameter_sent_total", command="ASR", outcome="elsewhere") == 1)
            assert result_code(await pgw.dwr()) == 2001
            assert pgw.incoming.empty()
            assert sample(a, "charging_diameter_sent_total", command="RAR", outcome="relayed") == 1
            assert sample(a, "charging_diameter_sent_total", command="ASR", outcome="relayed") == 1
            assert sample(b, "charging_diameter_sent_total", command="RAR", outcome="answered") == 1
            assert sample(b, "charging_diameter_sent_total", command="ASR", outcome="answered") == 1
        finally:
            await pgw.close()
