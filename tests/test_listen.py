"""A server never shares its gRPC or metrics address with another: the second one exits
at once with one line saying which address is in use, and the first keeps serving."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc

from charging.v1 import admin_pb2, admin_pb2_grpc, common_pb2
from tests.conftest import free_port
from tests.server_process import serve, stop, wait_serving


def refused(proc: subprocess.Popen[str]) -> tuple[int, list[str]]:
    """Exit status and stderr lines of a server expected to exit by itself."""
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:  # it did not exit: it serves beside the first
            stop(proc)
    return proc.returncode, err.splitlines()


def test_a_server_whose_grpc_or_metrics_address_is_in_use_exits_at_once_saying_which(
    tmp_path: Path, app_database_url: str
) -> None:
    metrics = f"127.0.0.1:{free_port()}"
    first, port = serve(tmp_path / "first", app_database_url, CHARGING_METRICS_ADDRESS=metrics)
    try:
        wait_serving(first, port)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            admin = admin_pb2_grpc.AdminStub(channel)
            admin.CreateSubscriber(admin_pb2.CreateSubscriberRequest(msisdn="491700000088", plan_id="default"))

            same_port, _ = serve(tmp_path / "second", app_database_url, port)
            assert refused(same_port) == (1, [f"error: gRPC address 127.0.0.1:{port} is in use"])

            same_metrics, _ = serve(tmp_path / "third", app_database_url, CHARGING_METRICS_ADDRESS=metrics)
            code, lines = refused(same_metrics)
            assert (code, len(lines)) == (1, 1), lines
            assert lines[0].startswith(f"error: cannot listen on metrics address {metrics}: ")

            # Every call still reaches the first server and its database.
            for _ in range(20):
                admin.GetSubscriber(common_pb2.SubscriberId(msisdn="491700000088"))
    finally:
        stop(first)
    assert first.returncode == 0
    assert not (tmp_path / "second").exists()  # it stopped before starting a Redis
