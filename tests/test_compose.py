"""docker-compose.yml cannot run here (no Docker engine), so it is checked as data: its
services, the ports each publishes against the addresses the servers are told to bind,
every ``CHARGING_*`` name against the settings the server reads, the Redis Cluster URL
against the nodes it names, and its Prometheus configuration with promtool."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from charging.cluster_link import ClusterUrl
from charging.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ("charging-a", "charging-b")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return doc


# Compose's interpolation: ${NAME}, ${NAME:?message}, ${NAME:-default}; "$$" is a "$".
VARIABLE = re.compile(r"\$\{([A-Z_]+)(?::?[-?][^}]*)?\}")


def env(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a container gets it, each variable of the caller's
    environment standing as "x"."""
    return {str(k): VARIABLE.sub("x", str(v)) for k, v in service.get("environment", {}).items()}


def test_it_asks_the_caller_only_for_the_secrets() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    uncommented = "\n".join(line.split(" #", 1)[0] for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert {m.group(1) for m in VARIABLE.finditer(uncommented)} == {"POSTGRES_PASSWORD", "CHARGING_DATA_KEY"}
    for m in VARIABLE.finditer(uncommented):
        assert ":?" in m.group(0), m.group(0)  # required: compose refuses to start without it


def test_it_has_a_cluster_a_database_the_servers_and_prometheus(compose: dict[str, Any]) -> None:
    services = compose["services"]
    nodes = [name for name in services if re.fullmatch(r"redis-\d", name)]
    assert len(nodes) == 6  # 3 primaries, 3 replicas
    for name in nodes:
        command = services[name]["command"]
        assert "--cluster-enabled" in command and "--appendonly" in command
    init = "\n".join(services["redis-cluster-init"]["command"])
    assert "--cluster-replicas 1" in init
    assert set(services["redis-cluster-init"]["depends_on"]) == set(nodes)
    assert services["postgres"]["image"].startswith("postgres:15")
    assert services["migrate"]["command"] == ["migrate"]
    assert {"prometheus", *SERVERS} <= set(services)
    for name, service in services.items():
        for needed in service.get("depends_on", {}):
            assert needed in services, (name, needed)


def test_every_setting_it_names_is_one_the_server_reads(compose: dict[str, Any]) -> None:
    known = {"CHARGING_" + f.name.upper() for f in dataclasses.fields(Settings)}
    for name in ("migrate", *SERVERS):
        names = set(env(compose["services"][name]))
        assert names, name
        assert names - known == set(), name
    # Every server shares the key ring, the database and the cluster.
    first = env(compose["services"][SERVERS[0]])
    assert "CHARGING_DATA_KEY" in first
    for name in SERVERS[1:]:
        assert env(compose["services"][name]) == first


def test_the_redis_url_names_the_cluster_and_the_database_url_the_postgres_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    settings = env(services[SERVERS[0]])
    cluster = ClusterUrl.parse(settings["CHARGING_REDIS_URL"])
    assert cluster is not None
    for host, port in cluster.seeds:
        assert host in services and port == 6379
    database = urlsplit(settings["CHARGING_DATABASE_URL"])
    assert (database.hostname, database.port, database.path) == ("postgres", 5432, "/charging")
    assert database.username == services["postgres"]["environment"]["POSTGRES_USER"]
    assert int(settings["CHARGING_WORKERS"]) >= 2


def test_published_ports_are_the_ports_the_servers_bind(compose: dict[str, Any]) -> None:
    services = compose["services"]
    published: set[str] = set()
    for name in SERVERS:
        settings = env(services[name])
        grpc_port = settings["CHARGING_GRPC_ADDRESS"].rsplit(":", 1)[1]
        metrics_port = settings["CHARGING_METRICS_ADDRESS"].rsplit(":", 1)[1]
        assert settings["CHARGING_GRPC_ADDRESS"].startswith("0.0.0.0:")  # reachable from the other containers
        targets = {p.rsplit(":", 1)[1] for p in services[name]["ports"]}
        assert targets == {grpc_port, metrics_port}, name
        hosts = {p.rsplit(":", 1)[0] for p in services[name]["ports"]}
        assert not hosts & published, "two services publish one host port"
        published |= hosts
    assert "9090:9090" in services["prometheus"]["ports"]


def test_prometheus_scrapes_every_server_on_its_metrics_port(compose: dict[str, Any]) -> None:
    services = compose["services"]
    mounts = dict(v.split(":")[:2] for v in services["prometheus"]["volumes"])
    config_file = ROOT / mounts["./ops/prometheus/prometheus.compose.yml"].replace(
        "/etc/prometheus/prometheus.yml", "ops/prometheus/prometheus.compose.yml"
    )
    config = yaml.safe_load(config_file.read_text())
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "charging"]
    targets = {t for c in job["static_configs"] for t in c["targets"]}
    expected = {f"{name}:{env(services[name])['CHARGING_METRICS_ADDRESS'].rsplit(':', 1)[1]}" for name in SERVERS}
    assert targets == expected
    assert "/etc/prometheus/alerts.yml" in mounts.values()
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (make test installs the Debian package prometheus)")
    check = subprocess.run(
        [promtool, "check", "config", config_file.name],
        cwd=config_file.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
