"""A real Prometheus server for the monitoring tests: Debian's ``prometheus`` binary with the
repository's scrape configuration and rules (ops/prometheus), pointed at a server's metrics
port, on a free loopback port with its own storage; and its HTTP API."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port

OPS = Path(__file__).resolve().parent.parent / "ops"
DEADLINE_S = 60.0  # for Prometheus to start, and for a scrape to show what is asked


def configuration(metrics_port: int) -> str:
    """ops/prometheus/prometheus.yml as shipped, scraping ``metrics_port`` every second and
    evaluating alerts.yml every second."""
    text = (OPS / "prometheus" / "prometheus.yml").read_text()
    for old, new in (
        ("scrape_interval: 15s", "scrape_interval: 1s"),
        ("evaluation_interval: 15s", "evaluation_interval: 1s"),
        ("scrape_timeout: 10s", "scrape_timeout: 1s"),
        ('"127.0.0.1:9464"', f'"127.0.0.1:{metrics_port}"'),
        ("  - alerts.yml", f"  - {OPS / 'prometheus' / 'alerts.yml'}"),
    ):
        assert old in text, f"prometheus.yml no longer has {old!r}"
        text = text.replace(old, new)
    return text


class Prometheus:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: str) -> Any:
        """``data`` of an API answer; fails the test on an error answer."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as answer:
                body = json.load(answer)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's vector: each with ``metric`` (labels) and ``value``."""
        data = self.get("/api/v1/query", query=promql)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def value(self, promql: str) -> float | None:
        """The value of a query answering at most one series (None: no series)."""
        result = self.query(promql)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, what: str, ready: Callable[[], bool]) -> None:
        """Poll until ``ready()`` (a scrape or an evaluation has happened), within the deadline."""
        deadline = time.monotonic() + DEADLINE_S
        while not ready():
            assert time.monotonic() < deadline, f"Prometheus did not show {what} within {DEADLINE_S} s"
            time.sleep(0.1)


@contextmanager
def running(directory: Path, metrics_port: int) -> Iterator[Prometheus]:
    """Prometheus scraping ``metrics_port``, until the block ends."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed (make test installs the Debian package prometheus)")
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "prometheus.yml"
    config.write_text(configuration(metrics_port))
    port = free_port()
    log = (directory / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    prometheus = Prometheus(port)
    try:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            assert proc.poll() is None, (directory / "prometheus.log").read_text()
            try:
                with urllib.request.urlopen(f"{prometheus.url}/-/ready", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Prometheus did not become ready"
            time.sleep(0.1)
        yield prometheus
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
