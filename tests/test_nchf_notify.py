"""ChargingNotify end to end through the real Nchf door: the SMF is a real HTTP/2 server on
127.0.0.1 (hypercorn, h2c with prior knowledge, or TLS) whose notifyUri the create names.
A data session runs out (final unit, redirect), a top-up arrives over gRPC, the SMF gets
a REAUTHORIZATION naming the rating group, sends its update and gets a full grant; a
barred line's resource gets ABORT_CHARGING. Each notification is sent once, bounded by
the timeout, and counted."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from prometheus_client import REGISTRY

from charging.clock import ManualClock
from charging.nchf.notify import ChargingNotifier, Notification, client_tls
from charging.security import certs
from charging.server import App
from charging.settings import Settings
from charging.v1 import admin_pb2, common_pb2
from tests.conftest import Stubs
from tests.smf_server import Smf, smf_server
from tests.test_backup import recharge
from tests.test_nchf import IMSI, MSISDN, ROOT, request

WHO = common_pb2.SubscriberId(msisdn=MSISDN)


def notified(kind: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value("charging_nchf_notifications_total", {"type": kind, "outcome": outcome})
    return value or 0.0


async def start_chf(settings: Settings, clock: ManualClock, **changes: Any) -> App:
    app = App(dataclasses.replace(settings, nchf_address="127.0.0.1:0", **changes), clock=clock, run_background=False)
    await app.start()
    return app


@pytest.fixture
async def chf(settings: Settings, clock: ManualClock) -> AsyncIterator[App]:
    app = await start_chf(settings, clock)
    yield app
    await app.stop()


@pytest.fixture
async def stubs(chf: App) -> AsyncIterator[Stubs]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{chf.grpc_port}")
    yield Stubs.on(channel)
    await channel.close()


@pytest.fixture
async def http(chf: App) -> AsyncIterator[httpx.AsyncClient]:
    assert chf.nchf is not None
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{chf.nchf.port}", http1=False, http2=True) as client:
        yield client


@pytest.fixture
async def smf() -> AsyncIterator[Smf]:
    async with smf_server() as server:
        yield server


def notifier(app: App) -> ChargingNotifier:
    assert app.nchf is not None and app.nchf.notifier is not None
    return app.nchf.notifier


def asking(seq: int, smf: Smf, used: int | None = None) -> dict[str, Any]:
    unit: dict[str, Any] = {"ratingGroup": 30, "requestedUnit": {"totalVolume": 1_048_576}}
    if used is not None:
        unit["usedUnitContainer"] = [{"localSequenceNumber": seq, "totalVolume": used}]
    return request(seq, [unit], notifyUri=smf.uri())


async def final_grant(http: httpx.AsyncClient, stubs: Stubs, smf: Smf) -> str:
    """A subscriber with 500 KB of credit and a create that gets them as a final grant;
    the ChargingDataRef."""
    await stubs.subscriber(MSISDN, balance=5_000, imsi=IMSI)
    created = await http.post(ROOT, json=asking(0, smf))
    assert created.status_code == 201, created.text
    (unit,) = created.json()["multipleUnitInformation"]
    assert unit["grantedUnit"] == {"totalVolume": 500 * 1024}
    assert unit["finalUnitIndication"]["finalUnitAction"] == "REDIRECT"
    return str(created.headers["location"].rsplit("/", 1)[1])


async def test_a_top_up_notifies_reauthorization_and_the_update_gets_a_full_grant(
    chf: App, http: httpx.AsyncClient, stubs: Stubs, smf: Smf
) -> None:
    ref = await final_grant(http, stubs, smf)
    answered = notified("REAUTHORIZATION", "answered")
    await stubs.topup.Recharge(recharge(MSISDN, 1_000_000, "r1"))

    got = await asyncio.wait_for(smf.received.get(), 10)
    assert got.path == "/nsmf-callback/notify_1"
    assert got.http_version == "2"  # h2c with prior knowledge, as SBI clients speak
    assert got.content_type == "application/json"
    assert got.body == {"notificationType": "REAUTHORIZATION", "reauthorizationDetails": [{"ratingGroup": 30}]}
    await notifier(chf).settled()
    assert notified("REAUTHORIZATION", "answered") == answered + 1

    # The SMF re-authorizes: its usage so far and a new request get a full grant.
    update = await http.post(f"{ROOT}/{ref}/update", json=asking(1, smf, used=500 * 1024))
    assert update.status_code == 200, update.text
    (unit,) = update.json()["multipleUnitInformation"]
    assert unit["grantedUnit"] == {"totalVolume": 1_048_576}
    assert "finalUnitIndication" not in unit

    # A second top-up finds no final-unit indication: nothing is sent. Barring the line
    # then aborts the resource; it is the next (and last) thing the SMF hears.
    await stubs.topup.Recharge(recharge(MSISDN, 1_000_000, "r2"))
    await stubs.admin.SetSubscriberStatus(
        admin_pb2.SetStatusRequest(subscriber=WHO, status=admin_pb2.SUBSCRIBER_STATUS_BARRED)
    )
    got = await asyncio.wait_for(smf.received.get(), 10)
    assert got.body == {"notificationType": "ABORT_CHARGING"}
    await notifier(chf).settled()
    assert smf.received.empty()
    assert len(notifier(chf).held) == 0
    # The consumer's next update is answered as usual: the line is barred.
    refused = await http.post(f"{ROOT}/{ref}/update", json=asking(2, smf, used=1024))
    assert refused.status_code == 403


async def test_a_released_resource_and_one_without_notify_uri_are_not_notified(
    chf: App, http: httpx.AsyncClient, stubs: Stubs, smf: Smf
) -> None:
    ref = await final_grant(http, stubs, smf)
    released = await http.post(f"{ROOT}/{ref}/release", json=asking(1, smf, used=1024))
    assert released.status_code == 204
    body = asking(0, smf)
    del body["notifyUri"]
    body["pDUSessionChargingInformation"]["chargingId"] = 124
    assert (await http.post(ROOT, json=body)).status_code == 201
    assert len(notifier(chf).held) == 0
    await stubs.admin.SetSubscriberStatus(
        admin_pb2.SetStatusRequest(subscriber=WHO, status=admin_pb2.SUBSCRIBER_STATUS_BARRED)
    )
    await notifier(chf).settled()
    assert smf.received.empty()


async def test_a_refused_notification_is_counted_once_and_404_forgets_the_resource(
    chf: App, http: httpx.AsyncClient, stubs: Stubs, smf: Smf
) -> None:
    await final_grant(http, stubs, smf)
    account = (await stubs.balance(MSISDN)).account_id
    smf.status = 404
    refused = notified("REAUTHORIZATION", "refused")
    await notifier(chf).signalled("credit", account)
    await notifier(chf).settled()
    assert (await smf.received.get()).body["notificationType"] == "REAUTHORIZATION"
    assert notified("REAUTHORIZATION", "refused") == refused + 1
    assert len(notifier(chf).held) == 0
    await notifier(chf).signalled("blocked", account)  # nothing held: nothing sent
    await notifier(chf).settled()
    assert smf.received.empty()


async def test_an_unanswered_notification_times_out_once_and_is_not_retried(
    settings: Settings, clock: ManualClock, smf: Smf
) -> None:
    # Long enough to open a connection to the SMF on a loaded machine: the SMF must have
    # the request before the timeout, or it is not the unanswered case.
    app = await start_chf(settings, clock, nchf_notify_timeout_s=1.0)
    try:
        assert app.nchf is not None
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.nchf.port}", http1=False, http2=True) as http,
        ):
            stubs = Stubs.on(channel)
            await final_grant(http, stubs, smf)
            account = (await stubs.balance(MSISDN)).account_id
            smf.answering.clear()  # the SMF takes the request and never answers
            unanswered = notified("REAUTHORIZATION", "unanswered")
            await notifier(app).signalled("credit", account)
            await notifier(app).settled()  # returns once the POST has timed out
            assert notified("REAUTHORIZATION", "unanswered") == unanswered + 1
            got = await asyncio.wait_for(smf.received.get(), 10)
            assert got.body["notificationType"] == "REAUTHORIZATION"
            await notifier(app).signalled("credit", account)  # sent once: nothing more
            await notifier(app).settled()
            assert smf.received.empty()
    finally:
        await app.stop()


async def test_a_cleartext_notify_uri_off_loopback_is_not_sent_to(
    chf: App, http: httpx.AsyncClient, stubs: Stubs
) -> None:
    await stubs.subscriber(MSISDN, balance=1_000_000, imsi=IMSI)
    body = request(0, [{"ratingGroup": 30, "requestedUnit": {}}], notifyUri="http://192.0.2.10:8080/notify_1")
    assert (await http.post(ROOT, json=body)).status_code == 201
    insecure, unanswered = notified("ABORT_CHARGING", "insecure"), notified("ABORT_CHARGING", "unanswered")
    await stubs.admin.SetSubscriberStatus(
        admin_pb2.SetStatusRequest(subscriber=WHO, status=admin_pb2.SUBSCRIBER_STATUS_SUSPENDED)
    )
    while notified("ABORT_CHARGING", "insecure") == insecure:  # noqa: ASYNC110 (a count, not an event)
        await asyncio.sleep(0.005)
    await notifier(chf).settled()
    assert notified("ABORT_CHARGING", "unanswered") == unanswered  # no connection was tried


async def test_a_notify_uri_that_is_no_http_uri_is_400_naming_it(http: httpx.AsyncClient, stubs: Stubs) -> None:
    await stubs.subscriber(MSISDN, balance=1_000_000, imsi=IMSI)
    for bad in ("ftp://192.0.2.10/notify", "/nsmf-callback/notify_1", "http://192.0.2.10:99999/x"):
        answer = await http.post(ROOT, json=request(0, [{"ratingGroup": 30, "requestedUnit": {}}], notifyUri=bad))
        assert answer.status_code == 400, bad
        assert [p["param"] for p in answer.json()["invalidParams"]] == ["/notifyUri"]
    assert (await stubs.balance(MSISDN)).reserved_micros == 0


async def test_tls_to_the_consumer_verifies_its_certificate(chf: App, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    certs.write_dev_set(pki)
    directory = notifier(chf).directory
    async with smf_server(pki) as smf:
        trusting = ChargingNotifier(directory, timeout_s=5.0, tls=client_tls("", "", str(pki / "ca.pem")))
        stranger = ChargingNotifier(directory, timeout_s=5.0, tls=client_tls("", "", ""))  # the system's CAs
        try:
            answered, unanswered = notified("ABORT_CHARGING", "answered"), notified("ABORT_CHARGING", "unanswered")
            await trusting.send("r", Notification(smf.uri(host="localhost"), "ABORT_CHARGING"))
            got = smf.received.get_nowait()
            assert got.http_version == "2" and got.body == {"notificationType": "ABORT_CHARGING"}
            assert notified("ABORT_CHARGING", "answered") == answered + 1
            await stranger.send("r", Notification(smf.uri(host="localhost"), "ABORT_CHARGING"))
            assert notified("ABORT_CHARGING", "unanswered") == unanswered + 1
            assert smf.received.empty()  # the handshake failed: nothing reached it
        finally:
            await trusting.close()
            await stranger.close()
