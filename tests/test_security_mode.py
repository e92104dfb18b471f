"""When a server may start, and in which security mode; the policy file checked whole;
the tools (``charging`` CLI, its health check) against a secured ``charging serve``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from charging.errors import StartupError
from charging.security.mode import Mode, decide, is_loopback
from charging.security.policy import PolicyInvalid, load_policy, parse_policy
from tests.conftest import free_port
from tests.server_process import serve, stop, wait_serving


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.9.9.9:1", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        (":50051", False),
        ("10.0.0.5:50051", False),
        ("charging.example:50051", False),
    ],
)
def test_loopback_addresses(address: str, loopback: bool) -> None:
    assert is_loopback(address) == loopback


@pytest.mark.parametrize(
    ("addresses", "tls", "policy", "insecure", "mode"),
    [
        (["127.0.0.1:50051"], False, False, False, Mode.LOCAL),
        (["127.0.0.1:50051"], True, False, False, Mode.SECURED),
        (["0.0.0.0:50051"], True, True, False, Mode.SECURED),
        (["0.0.0.0:50051"], False, False, True, Mode.INSECURE),
        (["0.0.0.0:50051"], True, False, True, Mode.INSECURE),
        (["127.0.0.1:50051", ""], True, True, False, Mode.SECURED),
    ],
)
def test_modes(addresses: list[str], tls: bool, policy: bool, insecure: bool, mode: Mode) -> None:
    assert decide(addresses, tls, policy, insecure) is mode


@pytest.mark.parametrize(
    ("tls", "policy", "missing"),
    [
        (False, False, "has no TLS (CHARGING_TLS_CERT and CHARGING_TLS_KEY) and no policy (CHARGING_POLICY_FILE);"),
        (True, False, "has no policy (CHARGING_POLICY_FILE);"),
        (False, True, "has no TLS (CHARGING_TLS_CERT and CHARGING_TLS_KEY);"),
    ],
)
def test_an_exposed_address_without_tls_and_policy_is_refused(tls: bool, policy: bool, missing: str) -> None:
    with pytest.raises(StartupError, match=r"0\.0\.0\.0:50051 is not loopback") as refused:
        decide(["0.0.0.0:50051"], tls, policy, insecure=False)
    assert missing in str(refused.value)


def test_a_policy_file_is_checked_whole_naming_every_bad_field(tmp_path: Path) -> None:
    doc = {
        "clients": [
            {"uri": "spiffe://x/pgw", "roles": ["network"]},
            {"uri": "spiffe://x/shop", "roles": ["channel"]},
            {"dns": "a.example", "roles": ["superuser"], "chanels": ["BANK"]},
            {"uri": "spiffe://x/pgw", "roles": ["monitor"]},
            {"uri": "spiffe://x/both", "dns": "b.example", "roles": ["crm"]},
            {"dns": "c.example", "roles": ["crm"], "channels": ["WEB"]},
        ],
        "version": 1,
    }
    with pytest.raises(PolicyInvalid) as refused:
        parse_policy(doc)
    fields = [f for f, _ in refused.value.problems]
    assert fields == [
        "clients[2].chanels",  # unknown field
        "clients[2].roles[0]",  # no such role
        "clients[5].channels[0]",  # no such channel
        "version",  # unknown field
        "clients[1].channels",  # the channel role without channels
        "clients[3].uri",  # listed twice
        "clients[4]",  # both uri and dns
        "clients[5].channels",  # channels without the channel role
    ]
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(StartupError, match=f"CHARGING_POLICY_FILE {path}: clients\\[2\\].chanels: unknown field"):
        load_policy(str(path))
    with pytest.raises(StartupError, match="No such file"):
        load_policy(str(tmp_path / "absent.json"))


def test_a_server_on_an_exposed_address_without_tls_exits_saying_what_is_missing(
    tmp_path: Path, app_database_url: str
) -> None:
    proc, _ = serve(tmp_path / "r", app_database_url, CHARGING_GRPC_ADDRESS=f"0.0.0.0:{free_port()}")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    (line,) = err.splitlines()
    assert line.startswith("error: gRPC address 0.0.0.0:") and "CHARGING_TLS_CERT" in line
    assert "CHARGING_POLICY_FILE" in line and "CHARGING_INSECURE=true" in line
    assert not (tmp_path / "r").exists()  # before Redis


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "charging.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.timeout(120)
def test_the_tools_against_a_secured_server(tmp_path: Path, app_database_url: str) -> None:
    """The README's secured tour: certificates, a server on 0.0.0.0 with mutual TLS and
    a policy, the CLI with a role's certificate, a token for a web shop on the token port."""
    pki = tmp_path / "certs"
    assert cli("certs", "--dir", str(pki)).returncode == 0
    token_port, port = free_port(), free_port()
    redis_dir = tmp_path / "redis"
    proc, port = serve(
        redis_dir,
        app_database_url,
        port,
        CHARGING_GRPC_ADDRESS=f"0.0.0.0:{port}",
        CHARGING_GRPC_TOKEN_ADDRESS=f"127.0.0.1:{token_port}",
        CHARGING_TLS_CERT=str(pki / "server.pem"),
        CHARGING_TLS_KEY=str(pki / "server.key"),
        CHARGING_TLS_CLIENT_CA=str(pki / "ca.pem"),
        CHARGING_POLICY_FILE=str(pki / "policy.json"),
    )
    try:
        target = f"localhost:{port}"
        monitor = {
            "CHARGING_CLIENT_TLS_CA": str(pki / "ca.pem"),
            "CHARGING_CLIENT_TLS_CERT": str(pki / "monitor.pem"),
            "CHARGING_CLIENT_TLS_KEY": str(pki / "monitor.key"),
        }
        deadline = time.monotonic() + 60
        while cli("--target", target, "health", **monitor).returncode != 0:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        operator = ["--tls-ca", str(pki / "ca.pem"), "--tls-cert", str(pki / "operator.pem")]
        operator += ["--tls-key", str(pki / "operator.key")]
        made = cli("--target", target, *operator, "create-subscriber", "--msisdn", "491700000001", "--balance", "2")
        assert made.returncode == 0, made.stderr
        denied = cli("--target", target, "create-subscriber", "--msisdn", "491700000002", **monitor)
        assert (denied.returncode, denied.stderr.split(":")[:2]) == (2, ["error", " PERMISSION_DENIED"])
        plain = cli("--target", target, "balance", "--msisdn", "491700000001")
        assert plain.returncode == 2 and "UNAVAILABLE" in plain.stderr
        created = cli(
            "tokens", "create", "--name", "webshop", "--role", "channel", "--channel", "retail",
            CHARGING_REDIS_DIR=str(redis_dir),
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        token = created.stdout.strip()
        listed = cli("tokens", "list", CHARGING_REDIS_DIR=str(redis_dir))
        assert listed.stdout.startswith("webshop  roles=channel  channels=RETAIL") and token not in listed.stdout
        shop = ["--target", f"localhost:{token_port}", "--tls-ca", str(pki / "ca.pem"), "--token", token]
        topped = cli(*shop, "topup", "--msisdn", "491700000001", "--amount", "1", "--channel", "retail")
        assert topped.returncode == 0, topped.stderr
        bank = cli(*shop, "topup", "--msisdn", "491700000001", "--amount", "1", "--channel", "bank")
        assert bank.returncode == 2 and "PERMISSION_DENIED" in bank.stderr
        assert cli("tokens", "revoke", "--name", "webshop", CHARGING_REDIS_DIR=str(redis_dir)).returncode == 0
        revoked = cli(*shop, "topup", "--msisdn", "491700000001", "--amount", "1", "--channel", "retail")
        assert revoked.returncode == 2 and "UNAUTHENTICATED" in revoked.stderr
    finally:
        err = stop(proc)
    assert proc.returncode == 0, err
    assert '"security": "secured"' in err
    # The plaintext client's failed handshake is not in the log (gRPC's core would write a
    # line per attempt, which anyone reaching the port could repeat).
    assert "Handshake failed" not in err


def test_insecure_on_an_exposed_address_warns_at_start(tmp_path: Path, app_database_url: str) -> None:
    port = free_port()
    proc, _ = serve(
        tmp_path / "r", app_database_url, port, CHARGING_GRPC_ADDRESS=f"0.0.0.0:{port}", CHARGING_INSECURE="true"
    )
    try:
        wait_serving(proc, port)
    finally:
        err = stop(proc)
    (warning,) = [line for line in err.splitlines() if "CHARGING_INSECURE=true" in line]
    assert '"level": "WARNING"' in warning
    assert '"security": "insecure"' in err
