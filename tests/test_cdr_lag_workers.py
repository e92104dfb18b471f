"""The relay's lag gauge on the shared metrics endpoint of ``charging serve`` with two
workers (multiprocess Prometheus): a real server, a real request, a record held back."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families

from charging.v1 import charging_pb2_grpc
from tests import server_process
from tests.conftest import free_port, sms_request
from tests.test_workers import create, until, workers_of


def lag_samples(metrics_port: int) -> list[float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return [
        s.value
        for family in text_string_to_metric_families(text)
        if family.name == "charging_cdr_relay_lag_seconds"
        for s in family.samples
    ]


def test_the_lag_of_a_waiting_record_is_on_the_workers_endpoint(tmp_path: Path, app_database_url: str) -> None:
    metrics_port = free_port()
    proc, port = server_process.serve(
        tmp_path / "redis",
        app_database_url,
        CHARGING_WORKERS="2",
        CHARGING_METRICS_ADDRESS=f"127.0.0.1:{metrics_port}",
        CHARGING_METRICS_DIR=str(tmp_path / "metrics"),
        CHARGING_CDR_HOLD_MS="3600000",  # the record waits in Redis for the whole test
    )
    try:
        server_process.wait_serving(proc, port)
        until(lambda: len(workers_of(proc)) == 2)
        until(lambda: lag_samples(metrics_port) == [0.0])  # one series, the workers' largest
        create(port, "491700000001")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = charging_pb2_grpc.ChargingStub(channel).ChargeEvent(sms_request("sms-0"), timeout=30)
        assert answer.result_code == 2001
        until(lambda: len(lag_samples(metrics_port)) == 1 and lag_samples(metrics_port)[0] > 0)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=60)
