"""Invoice delivery against a real SMTP server (aiosmtpd on 127.0.0.1) and a real directory."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import shutil
import ssl
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from charging.clock import ManualClock
from charging.errors import InvalidRequest
from charging.money import format_minor
from charging.settings import Settings
from postpaid.delivery import (
    DirectoryDelivery,
    RenderedInvoice,
    SmtpDelivery,
    SmtpSettings,
    file_stem,
)
from tests.conftest import free_port
from tests.samples import sample_invoice

SENDER = "billing@nordwind.example"
RECIPIENT = "j.mueller@mueller-logistik.example"
PASSWORD = "s3cret-Pa55"


@pytest.fixture(scope="module")
def rendered() -> RenderedInvoice:
    return RenderedInvoice.of(sample_invoice())


@dataclass
class Mailbox:
    """What the test server received, and how it answers RCPT."""

    messages: list[tuple[Envelope, EmailMessage]] = field(default_factory=list)
    rcpt_answer: str = "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.rcpt_answer.startswith("250"):
            envelope.rcpt_tos.append(address)
        return self.rcpt_answer

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append((envelope, msg))
        return "250 Message accepted"


def authenticate(server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"billing", PASSWORD.encode())
    return AuthResult(success=ok, handled=False)  # not handled: the server answers 535 itself


def start(mailbox: Mailbox, **smtp: Any) -> tuple[Controller, int]:
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, **smtp)
    controller.start()
    return controller, port


@pytest.fixture
def mailbox() -> Mailbox:
    return Mailbox()


@pytest.fixture
def smtp_port(mailbox: Mailbox) -> Iterator[int]:
    controller, port = start(mailbox)
    yield port
    controller.stop()


@pytest.fixture
def auth_port(mailbox: Mailbox) -> Iterator[int]:
    controller, port = start(mailbox, authenticator=authenticate, auth_require_tls=False)
    yield port
    controller.stop()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    args = "req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1"
    subprocess.run([openssl, *args.split(), "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key


@pytest.fixture
def tls_port(mailbox: Mailbox, certificate: tuple[Path, Path]) -> Iterator[int]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    controller, port = start(
        mailbox, tls_context=context, require_starttls=True, authenticator=authenticate, auth_require_tls=True
    )
    yield port
    controller.stop()


def smtp(port: int, **kwargs: Any) -> SmtpDelivery:
    return SmtpDelivery(SmtpSettings(port=port, sender=SENDER, timeout_s=5, **kwargs), clock=ManualClock())


def part(msg: EmailMessage, content_type: str) -> EmailMessage:
    found = [p for p in msg.walk() if p.get_content_type() == content_type and isinstance(p, EmailMessage)]
    assert len(found) == 1, content_type
    return found[0]


async def test_smtp_sends_text_html_and_the_pdf(mailbox: Mailbox, smtp_port: int, rendered: RenderedInvoice) -> None:
    result = await smtp(smtp_port).deliver(rendered, f"Jürgen Müller <{RECIPIENT}>")
    assert (result.delivered, result.reason) == (True, "")
    [(envelope, msg)] = mailbox.messages
    assert (envelope.mail_from, envelope.rcpt_tos) == (SENDER, [RECIPIENT])
    assert msg["Subject"] == "Your invoice 2026-000123 from Nordwind Telecom GmbH"
    assert msg["To"] == f"Jürgen Müller <{RECIPIENT}>"
    assert parsedate_to_datetime(msg["Date"]) == datetime(2026, 1, 1, tzinfo=UTC)  # the clock's time
    assert msg.get_content_type() == "multipart/mixed"
    total_due = format_minor(sample_invoice().total_due, "EUR")
    assert f"Total due by 2026-02-15: {total_due}" in part(msg, "text/plain").get_content()
    html = part(msg, "text/html").get_content()
    assert "Invoice 2026-000123" in html and total_due in html
    pdf = part(msg, "application/pdf")
    assert pdf.get_filename() == "2026-000123.pdf"
    assert pdf.get_content() == rendered.pdf
    assert pdf.get_content().startswith(b"%PDF-")


async def test_smtp_login(mailbox: Mailbox, auth_port: int, rendered: RenderedInvoice) -> None:
    good = await smtp(auth_port, username="billing", password=PASSWORD).deliver(rendered, RECIPIENT)
    assert good.delivered
    bad = await smtp(auth_port, username="billing", password="wrong").deliver(rendered, RECIPIENT)
    assert (bad.delivered, bad.reason, bad.retry) == (False, "SMTP login refused (535)", False)
    assert len(mailbox.messages) == 1


async def test_smtp_starttls_with_a_trusted_certificate(
    mailbox: Mailbox, tls_port: int, certificate: tuple[Path, Path], rendered: RenderedInvoice
) -> None:
    settings = SmtpSettings(
        port=tls_port, sender=SENDER, starttls=True, username="billing", password=PASSWORD, timeout_s=5
    )
    trusting = ssl.create_default_context(cafile=str(certificate[0]))
    result = await SmtpDelivery(settings, ssl_context=trusting).deliver(rendered, RECIPIENT)
    assert result.delivered
    assert len(mailbox.messages) == 1

    untrusting = await SmtpDelivery(settings).deliver(rendered, RECIPIENT)
    assert not untrusting.delivered and untrusting.reason.startswith("TLS failed")
    assert len(mailbox.messages) == 1


async def test_starttls_required_but_not_offered(smtp_port: int, rendered: RenderedInvoice) -> None:
    result = await smtp(smtp_port, starttls=True).deliver(rendered, RECIPIENT)
    assert not result.delivered
    assert "STARTTLS" in result.reason


async def test_nothing_listening_is_a_failure_to_retry(rendered: RenderedInvoice) -> None:
    result = await smtp(free_port()).deliver(rendered, RECIPIENT)
    assert (result.delivered, result.retry) == (False, True)
    assert result.reason == "cannot reach SMTP server: Connection refused"


@pytest.mark.parametrize(("code", "retry"), [(550, False), (450, True)])
async def test_refused_recipient(
    mailbox: Mailbox, smtp_port: int, rendered: RenderedInvoice, code: int, retry: bool
) -> None:
    mailbox.rcpt_answer = f"{code} 5.1.1 <{RECIPIENT}>: mailbox unavailable"
    result = await smtp(smtp_port).deliver(rendered, RECIPIENT)
    assert (result.delivered, result.retry) == (False, retry)
    assert result.reason == f"SMTP {code}: 5.1.1 <address>: mailbox unavailable"
    assert mailbox.messages == []


@pytest.mark.parametrize(
    "recipient",
    ["", "not an address", f"{RECIPIENT}\r\nBcc: x@evil.example", "a@b.example, c@d", "a@b@c.example", '"x <a@b.c'],
)
async def test_a_bad_recipient_sends_nothing(
    mailbox: Mailbox, smtp_port: int, rendered: RenderedInvoice, recipient: str
) -> None:
    result = await smtp(smtp_port).deliver(rendered, recipient)
    assert (result.delivered, result.reason) == (False, "invalid recipient address")
    assert mailbox.messages == []


async def test_logs_hold_no_personal_data(
    mailbox: Mailbox, auth_port: int, rendered: RenderedInvoice, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await smtp(auth_port, username="billing", password=PASSWORD).deliver(rendered, RECIPIENT)
    await smtp(auth_port, username="billing", password=PASSWORD + "x").deliver(rendered, RECIPIENT)
    await smtp(free_port(), username="billing", password=PASSWORD).deliver(rendered, RECIPIENT)
    records = [r for r in caplog.records if r.name.startswith("postpaid")]
    assert [r.getMessage() for r in records] == ["invoice delivered", "invoice not delivered", "invoice not delivered"]
    assert all(r.__dict__["invoice"] == "2026-000123" for r in records)
    logged = json.dumps([vars(r) for r in caplog.records if r.name != "mail.log"], default=str)  # not the server's
    for secret in (PASSWORD, RECIPIENT, "mueller", "Müller"):
        assert secret not in logged


def test_smtp_settings_come_from_the_one_settings_object() -> None:
    settings = Settings.from_env(
        {
            "CHARGING_SMTP_HOST": "mail.example",
            "CHARGING_SMTP_PORT": "587",
            "CHARGING_SMTP_SENDER": SENDER,
            "CHARGING_SMTP_STARTTLS": "true",
            "CHARGING_SMTP_USERNAME": "billing",
            "CHARGING_SMTP_PASSWORD": PASSWORD,
            "CHARGING_SMTP_TIMEOUT_S": "7.5",
        }
    )
    s = SmtpSettings.of(settings)
    assert (s.host, s.port, s.starttls, s.username, s.password, s.timeout_s) == (
        "mail.example",
        587,
        True,
        "billing",
        PASSWORD,
        7.5,
    )
    assert PASSWORD not in repr(s) and "password='***'" in repr(s)
    assert PASSWORD not in repr(settings)
    for env, name in (
        ({"CHARGING_SMTP_PORT": "smtp"}, "CHARGING_SMTP_PORT"),
        ({"CHARGING_SMTP_PORT": "0"}, "CHARGING_SMTP_PORT"),
        ({"CHARGING_SMTP_PASSWORD": "x"}, "CHARGING_SMTP_USERNAME"),
    ):
        with pytest.raises(InvalidRequest) as e:
            Settings.from_env(env)
        assert e.value.field == name
    with pytest.raises(InvalidRequest) as e:
        SmtpSettings.of(Settings(smtp_sender="nobody"))
    assert e.value.field == "CHARGING_SMTP_SENDER"


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def test_directory_delivery_writes_both_files(tmp_path: Path, rendered: RenderedInvoice) -> None:
    out = tmp_path / "invoices" / "2026-01"
    delivery = DirectoryDelivery(out)
    assert (await delivery.deliver(rendered)).delivered
    assert (await delivery.deliver(rendered)).delivered  # again: the same files, replaced whole
    assert listing(out) == ["2026-000123.html", "2026-000123.pdf"]  # no temporary file left
    assert (out / "2026-000123.pdf").read_bytes() == rendered.pdf
    assert (out / "2026-000123.html").read_text() == rendered.html
    assert stat.S_IMODE((out / "2026-000123.pdf").stat().st_mode) == 0o640


async def test_directory_delivery_keeps_odd_numbers_inside(tmp_path: Path, rendered: RenderedInvoice) -> None:
    odd = RenderedInvoice("../INV/2026/7", rendered.subject, rendered.text, rendered.html, rendered.pdf)
    assert (await DirectoryDelivery(tmp_path).deliver(odd)).delivered
    assert listing(tmp_path) == ["_INV_2026_7.html", "_INV_2026_7.pdf"]
    assert file_stem("2026-000123") == "2026-000123"


async def test_directory_delivery_failure_is_reported(tmp_path: Path, rendered: RenderedInvoice) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    result = await DirectoryDelivery(blocker).deliver(rendered)
    assert (result.delivered, result.retry) == (False, True)
    assert result.reason.startswith("cannot write invoice files: ")
