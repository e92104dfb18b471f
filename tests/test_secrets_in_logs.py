"""Secrets never reach the logs: URL credentials are redacted wherever a record holds
them, httpx's per-request lines are off, and the settings printout hides every secret."""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from charging import logs
from charging.settings import Settings
from provisioning.bureau import HttpCreditBureau
from provisioning.credit import CreditHistory
from provisioning.network import HttpNetworkAdapter

USER, PASSWORD = "charging", "s3cr3t-Pa55"


@pytest.fixture
def gateway() -> Iterator[str]:
    """A real HTTP server that requires basic authentication: a network gateway
    (POST /commands) and a credit bureau (GET /reports/<print>) in one."""
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self, body: dict[str, Any]) -> None:
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="gw"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            doc = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self._answer({"line": doc["line"], "state": "active"})

        def do_GET(self) -> None:
            self._answer({"defaults_5y": 2})

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://{USER}:{PASSWORD}@127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The server's own log configuration, writing to a buffer."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("httpx").level)
    out = io.StringIO()
    logs.configure("DEBUG", out)
    yield out
    root.handlers[:], root.level = saved[0], saved[1]
    logging.getLogger("httpx").setLevel(saved[2])


async def test_gateway_and_bureau_calls_log_no_password(gateway: str, captured: io.StringIO) -> None:
    network = HttpNetworkAdapter(gateway)
    bureau = HttpCreditBureau(gateway)
    try:
        assert (await network.send("491700000001", "activate", "c-1")).state == "active"
        assert (await bureau.history("ab12", CreditHistory())).defaults_5y == 2
        # Even with httpx's request lines turned back on, the filter hides the password.
        logging.getLogger("httpx").setLevel(logging.INFO)
        await network.send("491700000001", "activate", "c-2")
    finally:
        await network.aclose()
        await bureau.aclose()
    text = captured.getvalue()
    assert "HTTP Request" in text and "/commands" in text
    assert PASSWORD not in text
    assert f"{USER}:***@127.0.0.1" in text


def test_credentials_are_redacted_in_every_part_of_a_record(captured: io.StringIO) -> None:
    log = logging.getLogger("charging.test")
    url = f"redis://app:{PASSWORD}@db:6379/0"
    log.info("connecting to %s", url, extra={"target": url, "token_url": f"https://{PASSWORD}@api.example"})
    try:
        raise ConnectionError(f"cannot reach {url}")
    except ConnectionError:
        log.exception("failed")
    text = captured.getvalue()
    assert PASSWORD not in text
    first, second = (json.loads(line) for line in text.splitlines())
    assert first["msg"] == "connecting to redis://app:***@db:6379/0"
    assert first["target"] == "redis://app:***@db:6379/0"
    assert first["token_url"] == "https://***@api.example"
    assert "redis://app:***@db" in second["exc"]


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("redis://:pw@db:6379/0", "redis://:***@db:6379/0"),
        ("rediss://user:p%40ss@db/0 and http://gw:x@h/p?q=a@b", "rediss://user:***@db/0 and http://gw:***@h/p?q=a@b"),
        ("http://host/path?mail=a@b.example", "http://host/path?mail=a@b.example"),
        ("unix:///var/redis/redis.sock", "unix:///var/redis/redis.sock"),
        ("an email a@b.example", "an email a@b.example"),
    ],
)
def test_redact(text: str, shown: str) -> None:
    assert logs.redact(text) == shown


def test_settings_printout_hides_every_secret() -> None:
    s = Settings.from_env(
        {
            "CHARGING_REDIS_URL": f"rediss://app:{PASSWORD}@db:6380/0",
            "CHARGING_NETWORK_URL": f"https://gw:{PASSWORD}@hss.example/",
            "CHARGING_BUREAU_URL": f"https://{PASSWORD}@bureau.example/",
            "CHARGING_CRM_SALT": PASSWORD,
            "CHARGING_SMTP_USERNAME": "billing",
            "CHARGING_SMTP_PASSWORD": PASSWORD,
        }
    )
    assert PASSWORD not in repr(s) and PASSWORD not in str(s)
    assert "https://gw:***@hss.example/" in repr(s)
