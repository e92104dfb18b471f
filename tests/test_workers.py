"""``charging serve --workers N`` as real processes: N workers on one port under one
supervisor that owns the embedded Redis, restarts a worker killed with SIGKILL, stops
everything on SIGTERM, keeps an unrelated server off its address, and serves one metrics
endpoint counting the requests of every worker."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from charging.v1 import admin_pb2, admin_pb2_grpc, common_pb2
from tests import server_process
from tests.conftest import free_port


def until(done: Callable[[], object], steps: int = 1500, step_s: float = 0.02) -> None:
    """Poll until ``done()`` is true (a bounded wait, not a timing assertion)."""
    for _ in range(steps):
        if done():
            return
        time.sleep(step_s)
    raise AssertionError("never happened")


def children(pid: int) -> dict[int, str]:
    """The live child processes of ``pid``, with their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found[int(entry.name)] = cmdline
    return found


def workers_of(supervisor: subprocess.Popen[str]) -> set[int]:
    return {pid for pid, cmd in children(supervisor.pid).items() if "charging.cli serve" in cmd}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def create(port: int, msisdn: str) -> None:
    """One request on a new connection (the kernel picks the worker for each connection)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        admin_pb2_grpc.AdminStub(channel).CreateSubscriber(
            admin_pb2.CreateSubscriberRequest(msisdn=msisdn, plan_id="default", initial_balance_micros=1_000_000),
            timeout=30,
        )


def lookup(port: int, msisdn: str) -> admin_pb2.Subscriber:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return admin_pb2_grpc.AdminStub(channel).GetSubscriber(common_pb2.SubscriberId(msisdn=msisdn), timeout=30)


class Served:
    def __init__(self, proc: subprocess.Popen[str], port: int, metrics_port: int, metrics_dir: Path) -> None:
        self.proc, self.port, self.metrics_port, self.metrics_dir = proc, port, metrics_port, metrics_dir


@pytest.fixture
def served(tmp_path: Path, app_database_url: str) -> Iterator[Served]:
    metrics_port = free_port()
    metrics_dir = tmp_path / "metrics"
    proc, port = server_process.serve(
        tmp_path / "redis",
        app_database_url,
        CHARGING_WORKERS="2",
        CHARGING_METRICS_ADDRESS=f"127.0.0.1:{metrics_port}",
        CHARGING_METRICS_DIR=str(metrics_dir),
    )
    try:
        server_process.wait_serving(proc, port)
        until(lambda: len(workers_of(proc)) == 2)
        yield Served(proc, port, metrics_port, metrics_dir)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=60)


def test_a_killed_worker_is_restarted_and_service_continues(served: Served) -> None:
    create(served.port, "491700000001")
    first = workers_of(served.proc)
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    until(lambda: len(workers_of(served.proc)) == 2 and victim not in workers_of(served.proc))
    # Every request on a fresh connection is served, whichever worker it lands on.
    for n in range(20):
        create(served.port, f"4917000001{n:02d}")
        assert lookup(served.port, "491700000001").balance_micros == 1_000_000
    assert served.proc.poll() is None


def test_sigterm_stops_every_worker_and_the_embedded_redis(served: Served) -> None:
    processes = children(served.proc.pid)
    assert any("redis-server" in cmd for cmd in processes.values())
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(timeout=60) == 0
    assert not [pid for pid in processes if alive(pid)]


def test_an_unrelated_server_cannot_join_the_address(served: Served, tmp_path: Path, app_database_url: str) -> None:
    for workers in ("2", "1"):
        other, _ = server_process.serve(
            tmp_path / f"other-{workers}", app_database_url, port=served.port, CHARGING_WORKERS=workers
        )
        _, err = other.communicate(timeout=60)
        assert other.returncode == 1
        assert f"gRPC address 127.0.0.1:{served.port} is in use" in err
    create(served.port, "491700000001")  # the first server still serves


def requests_in(directory: Path) -> float:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return sum(
        sample.value
        for family in registry.collect()
        if family.name == "charging_requests"
        for sample in family.samples
        if sample.name == "charging_requests_total"
    )


def per_worker(served: Served, tmp_path: Path) -> dict[int, float]:
    """Requests counted by each worker: its own files read alone."""
    counts = {}
    for pid in workers_of(served.proc):
        alone = tmp_path / f"alone-{pid}"
        alone.mkdir(exist_ok=True)
        for f in served.metrics_dir.glob(f"*_{pid}.db"):
            shutil.copy(f, alone / f.name)
        counts[pid] = requests_in(alone)
    return counts


def test_one_metrics_endpoint_counts_the_requests_of_both_workers(served: Served, tmp_path: Path) -> None:
    sent = 0
    while min(per_worker(served, tmp_path).values()) == 0:
        create(served.port, f"49170000{sent:04d}")
        sent += 1
        assert sent < 500
    counts = per_worker(served, tmp_path)
    assert len(counts) == 2 and all(n > 0 for n in counts.values())
    with urllib.request.urlopen(f"http://127.0.0.1:{served.metrics_port}/metrics", timeout=30) as response:
        text = response.read().decode()
    scraped = sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "charging_requests_total"
    )
    # Health checks are not counted; every CreateSubscriber is, in whichever worker.
    assert scraped == sent == sum(counts.values())
