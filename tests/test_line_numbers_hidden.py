"""Line numbers (MSISDN, IMSI, the called party) never reach the logs or the metrics: a
real ``charging serve`` logging at DEBUG carries a session (by MSISDN and by IMSI), an
event, a top-up and refused requests over gRPC, Diameter (CCR-I/U/T by MSISDN and IMSI,
an event, an unknown line, an ASR) and Nchf (create/update/release by IMSI, an unknown
line, an invalid identity, an ABORT_CHARGING notification); neither its log output nor
its /metrics page holds any of the numbers, nor does a refusal's error message (gRPC
details, Diameter Error-Message, Nchf problem details)."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import grpc
import httpx
import pytest
from diameter.message import constants as c
from diameter.message.avp import Avp
from diameter.message.commands.credit_control import RequestedServiceUnit, UsedServiceUnit

from charging.v1 import admin_pb2, charging_pb2, common_pb2, topup_pb2
from tests.conftest import INITIAL, TERMINATE, Stubs, free_port, session_request, sms_request
from tests.diameter_client import Client, find, result_code
from tests.server_process import serve, stop, wait_serving
from tests.smf_server import smf_server
from tests.test_backup import recharge
from tests.test_nchf import ROOT, request

# Numbers nothing else in a server's output could contain by chance.
MSISDN, IMSI, CALLED, UNKNOWN = "491706318529", "262017364512983", "491523847106", "491709274635"
NUMBERS = (MSISDN, IMSI, CALLED, UNKNOWN)


def by_imsi(session_id: str, kind: int, number: int, groups: list[dict[str, object]]) -> charging_pb2.SessionRequest:
    req = session_request(session_id, kind, number, groups, msisdn="", called_party=CALLED)
    req.subscriber.CopyFrom(common_pb2.SubscriberId(imsi=IMSI))
    return req


def traffic(port: int) -> list[str]:
    """A day's traffic of one line, and requests the server refuses; their error messages."""
    refusals = []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stubs = Stubs.on(channel)  # type: ignore[arg-type]  # sync stubs on a sync channel
        stubs.admin.CreateSubscriber(
            admin_pb2.CreateSubscriberRequest(msisdn=MSISDN, imsi=IMSI, plan_id="default", initial_balance_micros=10**7)
        )
        ask = [{"rating_group": 10, "requested": {"time_s": 60}}]
        used = [{"rating_group": 10, "used": {"time_s": 42}}]
        assert stubs.charging.ChargeSession(session_request("s1", INITIAL, 0, ask, MSISDN, CALLED)).result_code == 2001
        assert (
            stubs.charging.ChargeSession(session_request("s1", TERMINATE, 1, used, MSISDN, CALLED)).result_code == 2001
        )
        assert stubs.charging.ChargeSession(by_imsi("s2", INITIAL, 0, ask)).result_code == 2001
        assert stubs.charging.ChargeSession(by_imsi("s2", TERMINATE, 1, used)).result_code == 2001
        event = sms_request("e1", msisdn=MSISDN)
        event.called_party = CALLED
        assert stubs.charging.ChargeEvent(event).result_code == 2001
        assert stubs.topup.Recharge(recharge(MSISDN, 5_000_000, "t1")).balance.balance_micros > 0
        # Refused: an unknown line, a top-up of nothing, a duplicate subscriber.
        unknown = stubs.charging.ChargeSession(session_request("s3", INITIAL, 0, ask, UNKNOWN, CALLED))
        assert unknown.result_code != 2001
        for call in (
            lambda: stubs.topup.Recharge(recharge(UNKNOWN, 1_000_000, "t2")),
            lambda: stubs.topup.Recharge(recharge(MSISDN, 0, "t3")),
            lambda: stubs.admin.CreateSubscriber(admin_pb2.CreateSubscriberRequest(msisdn=MSISDN, plan_id="default")),
            lambda: stubs.topup.GetBalance(
                topup_pb2.BalanceRequest(subscriber=common_pb2.SubscriberId(msisdn=UNKNOWN))
            ),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                call()
            refusals.append(str(refused.value.details()))  # type: ignore[attr-defined]
    return refusals


async def network_traffic(port: int, diameter_port: int, nchf_port: int) -> list[str]:
    """The same line over Diameter and Nchf, then barred (ASR, ABORT_CHARGING); the error
    texts of the refused requests."""
    refusals: list[str] = []
    pgw = await Client.connect(diameter_port)
    async with (
        smf_server() as smf,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{nchf_port}", http1=False, http2=True) as http,
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        assert result_code(await pgw.cer()) == 2001
        for n, (kind, number) in enumerate(
            ((c.E_SUBSCRIPTION_ID_TYPE_END_USER_E164, MSISDN), (c.E_SUBSCRIPTION_ID_TYPE_END_USER_IMSI, IMSI))
        ):
            sid = f"pgw.test.example;{n};data"
            for request_type, number_ in ((1, 0), (2, 1), (3, 2)):
                ccr = pgw.ccr(sid, request_type, number_)
                ccr.add_subscription_id(subscription_id_type=kind, subscription_id_data=number)
                ccr.add_multiple_services_credit_control(
                    requested_service_unit=RequestedServiceUnit(cc_total_octets=100_000) if request_type < 3 else None,
                    used_service_unit=UsedServiceUnit(cc_total_octets=50_000) if request_type > 1 else None,
                    rating_group=30,
                )
                assert result_code(await pgw.send(ccr, application=4)) == 2001
        unknown = pgw.ccr("pgw.test.example;9;data", 1, 0)
        unknown.add_subscription_id(
            subscription_id_type=c.E_SUBSCRIPTION_ID_TYPE_END_USER_E164, subscription_id_data=UNKNOWN
        )
        unknown.add_multiple_services_credit_control(
            requested_service_unit=RequestedServiceUnit(cc_total_octets=100_000), rating_group=30
        )
        refused = await pgw.send(unknown, application=4)
        assert result_code(refused) == 5030
        message = find(refused.avps, c.AVP_ERROR_MESSAGE)
        refusals.append(str(message.value) if message is not None else "")
        # A session held open over each door, for the abort below.
        ccr = pgw.ccr("pgw.test.example;5;data", 1, 0)
        ccr.add_subscription_id(
            subscription_id_type=c.E_SUBSCRIPTION_ID_TYPE_END_USER_E164, subscription_id_data=MSISDN
        )
        ccr.add_multiple_services_credit_control(
            requested_service_unit=RequestedServiceUnit(cc_total_octets=100_000), rating_group=30
        )
        assert result_code(await pgw.send(ccr, application=4)) == 2001

        by_imsi = request(0, [{"ratingGroup": 30, "requestedUnit": {}}], subscriberIdentifier=f"imsi-{IMSI}")
        by_imsi["notifyUri"] = smf.uri()
        created = await http.post(ROOT, json=by_imsi)
        assert created.status_code == 201, created.text
        ref = created.headers["location"].rsplit("/", 1)[1]
        used = [{"ratingGroup": 30, "usedUnitContainer": [{"localSequenceNumber": 1, "totalVolume": 1000}]}]
        update = request(1, [{**used[0], "requestedUnit": {}}], subscriberIdentifier=f"imsi-{IMSI}")
        update["notifyUri"] = smf.uri()
        assert (await http.post(f"{ROOT}/{ref}/update", json=update)).status_code == 200
        second = request(0, [{"ratingGroup": 30, "requestedUnit": {}}], subscriberIdentifier=f"msisdn-{MSISDN}")
        second["pDUSessionChargingInformation"]["chargingId"] = 2
        created = await http.post(ROOT, json=second)
        assert created.status_code == 201, created.text
        ref = created.headers["location"].rsplit("/", 1)[1]
        release = request(1, used, subscriberIdentifier=f"msisdn-{MSISDN}")
        assert (await http.post(f"{ROOT}/{ref}/release", json=release)).status_code == 204
        for identity, status in ((f"msisdn-{UNKNOWN}", 404), (f"imsi-{UNKNOWN}", 400), (f"msisdn-{MSISDN}x", 400)):
            body = request(0, [{"ratingGroup": 30, "requestedUnit": {}}], subscriberIdentifier=identity)
            answer = await http.post(ROOT, json=body)
            assert answer.status_code == status, answer.text
            refusals.append(answer.text)

        await Stubs.on(channel).admin.SetSubscriberStatus(
            admin_pb2.SetStatusRequest(
                subscriber=common_pb2.SubscriberId(msisdn=MSISDN), status=admin_pb2.SUBSCRIBER_STATUS_BARRED
            )
        )
        asr = await asyncio.wait_for(pgw.incoming.get(), 30)
        assert asr.header.command_code == c.CMD_ABORT_SESSION
        sid_avp = find(asr.avps, c.AVP_SESSION_ID)
        assert sid_avp is not None
        await pgw.answer(asr, [sid_avp, Avp.new(c.AVP_RESULT_CODE, value=2001), *pgw.origin()])
        got = await asyncio.wait_for(smf.received.get(), 30)
        assert got.body == {"notificationType": "ABORT_CHARGING"}
        assert result_code(await pgw.dwr()) == 2001
    await pgw.close()
    return refusals


def test_no_line_number_in_the_logs_or_the_metrics(tmp_path: Path, database_url: str) -> None:
    metrics_port, diameter_port, nchf_port = free_port(), free_port(), free_port()
    proc, port = serve(
        tmp_path / "redis",
        database_url,
        CHARGING_LOG_LEVEL="DEBUG",
        CHARGING_METRICS_ADDRESS=f"127.0.0.1:{metrics_port}",
        CHARGING_DIAMETER_ADDRESS=f"127.0.0.1:{diameter_port}",
        CHARGING_NCHF_ADDRESS=f"127.0.0.1:{nchf_port}",
    )
    try:
        wait_serving(proc, port)
        refusals = traffic(port)
        refusals += asyncio.run(network_traffic(port, diameter_port, nchf_port))
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as answer:
            metrics = answer.read().decode()
    finally:
        logged = stop(proc)
    assert '"level": "DEBUG"' in logged  # it did log at DEBUG
    assert "no subscriber has this identity" in refusals
    assert "charging_" in metrics  # the page is the server's
    assert "charging_diameter_requests_total" in metrics and "charging_nchf_requests_total" in metrics
    assert 'charging_nchf_notifications_total{outcome="answered",type="ABORT_CHARGING"} 1.0' in metrics
    for number in NUMBERS:
        assert [line for line in logged.splitlines() if number in line] == [], number
        assert [line for line in metrics.splitlines() if number in line] == [], number
        assert [r for r in refusals if number in r] == [], number
