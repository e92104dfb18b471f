"""`charging serve` as a real process, as an operator starts it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import free_port


def serve(
    redis_dir: Path, database_url: str, port: int | None = None, redis_url: str = "", **env: str
) -> tuple[subprocess.Popen[str], int]:
    """Start ``charging serve`` with its own embedded Redis in ``redis_dir`` (or on
    ``redis_url``), the test session's PostgreSQL at ``database_url``, gRPC on ``port`` (a
    free one by default), one process unless ``CHARGING_WORKERS`` is given, and no metrics
    endpoint unless given in ``env`` (``CHARGING_*`` names)."""
    port = port or free_port()
    environ = {
        **os.environ,
        "CHARGING_GRPC_ADDRESS": f"127.0.0.1:{port}",
        "CHARGING_METRICS_ADDRESS": "",
        "CHARGING_NCHF_ADDRESS": "",
        "CHARGING_REDIS_DIR": str(redis_dir),
        "CHARGING_DATABASE_URL": database_url,
        "CHARGING_BILLING_INTERVAL_S": "0",
        "CHARGING_SHUTDOWN_DELAY_S": "0",
        "CHARGING_WORKERS": "1",
        **env,
    }
    environ.pop("CHARGING_REDIS_URL", None)
    if redis_url:
        environ["CHARGING_REDIS_URL"] = redis_url
    proc = subprocess.Popen(
        [sys.executable, "-m", "charging.cli", "serve"], env=environ, stderr=subprocess.PIPE, text=True
    )
    return proc, port


def wait_serving(proc: subprocess.Popen[str], port: int) -> None:
    """Return once the server answers its health check SERVING; fail if it exits."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while proc.poll() is None:
            try:
                if (
                    health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    raise AssertionError(f"the server exited with {proc.returncode}: {proc.communicate()[1]}")


def stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM, wait, and its stderr."""
    if proc.poll() is None:
        proc.terminate()
    return proc.communicate(timeout=30)[1]
