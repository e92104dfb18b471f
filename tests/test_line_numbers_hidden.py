"""Line numbers (MSISDN, IMSI, the called party) never reach the logs or the metrics: a
real ``charging serve`` logging at DEBUG carries a session (by MSISDN and by IMSI), an
event, a top-up and refused requests; neither its log output nor its /metrics page holds
any of the numbers, nor does a refusal's error message."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import grpc
import pytest

from charging.v1 import admin_pb2, charging_pb2, common_pb2, topup_pb2
from tests.conftest import INITIAL, TERMINATE, Stubs, free_port, session_request, sms_request
from tests.server_process import serve, stop, wait_serving
from tests.test_backup import recharge

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


def test_no_line_number_in_the_logs_or_the_metrics(tmp_path: Path, database_url: str) -> None:
    metrics_port = free_port()
    proc, port = serve(
        tmp_path / "redis",
        database_url,
        CHARGING_LOG_LEVEL="DEBUG",
        CHARGING_METRICS_ADDRESS=f"127.0.0.1:{metrics_port}",
    )
    try:
        wait_serving(proc, port)
        refusals = traffic(port)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as answer:
            metrics = answer.read().decode()
    finally:
        logged = stop(proc)
    assert '"level": "DEBUG"' in logged  # it did log at DEBUG
    assert "no subscriber has this identity" in refusals
    assert "charging_" in metrics  # the page is the server's
    for number in NUMBERS:
        assert [line for line in logged.splitlines() if number in line] == [], number
        assert [line for line in metrics.splitlines() if number in line] == [], number
        assert [r for r in refusals if number in r] == [], number
