"""Delivering a rendered invoice: by email over SMTP, or as files in a directory (an archive,
a print shop's pick-up folder).

Expected failures (the server is unreachable, refuses, answers with an SMTP error; the disk
is full) come back as a ``DeliveryResult`` with a reason and whether a later retry may
succeed, never as an exception, so a bill run records them and carries on. Logs carry the
invoice number, the channel and the reason only: never the recipient's address, the
customer's name or the SMTP password; reasons quoted from a server have addresses masked.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import smtplib
import ssl
import tempfile
from dataclasses import dataclass
from email.errors import MessageError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from pathlib import Path
from typing import Protocol

from charging.clock import Clock, SystemClock
from charging.errors import InvalidRequest
from charging.settings import Settings
from postpaid.invoices import Invoice
from postpaid.render import render_html, render_pdf, render_text

log = logging.getLogger("postpaid.delivery")


@dataclass(frozen=True)
class RenderedInvoice:
    number: str
    subject: str
    text: str
    html: str
    pdf: bytes

    @classmethod
    def of(cls, invoice: Invoice) -> RenderedInvoice:
        """Render all three forms. CPU-bound (a long PDF takes seconds): from async code run it
        in a thread with ``asyncio.to_thread``."""
        kind = "final invoice" if invoice.kind == "FINAL" else "invoice"
        subject = f"Your {kind} {invoice.number} from {invoice.issuer}"
        return cls(invoice.number, subject, render_text(invoice), render_html(invoice), render_pdf(invoice))


@dataclass(frozen=True)
class DeliveryResult:
    delivered: bool
    reason: str = ""  # why it failed, free of personal data
    retry: bool = False  # a temporary failure: the same delivery may succeed later


DELIVERED = DeliveryResult(True)


class Delivery(Protocol):
    async def deliver(self, invoice: RenderedInvoice, recipient: str) -> DeliveryResult: ...


def file_stem(number: str) -> str:
    """The invoice number as a safe file name: anything but ASCII letters, digits, ``.``,
    ``-`` and ``_`` becomes ``_``, and it never starts with a dot ("INV/2026/7" -> "INV_2026_7")."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", number).lstrip(".") or "_"


def mask_addresses(text: str) -> str:
    """Every email address in a server's answer becomes "<address>"."""
    return re.sub(r"<?[^\s<>\"'@]+@[^\s<>\"']+>?", "<address>", text)


@dataclass(frozen=True)
class SmtpSettings:
    """Where invoices are mailed from (``Settings`` ``smtp_*``, from ``CHARGING_SMTP_*``).
    The password comes only from the environment and never appears in the repr."""

    host: str = "127.0.0.1"
    port: int = 25
    sender: str = ""
    starttls: bool = False
    username: str = ""
    password: str = ""
    timeout_s: float = 30.0

    def __repr__(self) -> str:
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.password:
            shown["password"] = "***"
        return f"SmtpSettings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @classmethod
    def of(cls, settings: Settings) -> SmtpSettings:
        """Taken from the one settings object (``CHARGING_SMTP_*``, checked there)."""
        smtp = cls(
            host=settings.smtp_host,
            port=settings.smtp_port,
            sender=settings.smtp_sender,
            starttls=settings.smtp_starttls,
            username=settings.smtp_username,
            password=settings.smtp_password,
            timeout_s=settings.smtp_timeout_s,
        )
        if "@" not in parseaddr(smtp.sender)[1]:
            raise InvalidRequest("CHARGING_SMTP_SENDER", "must be an email address")
        return smtp


class SmtpDelivery:
    """Mails the invoice (text and HTML body, the PDF attached) through one SMTP server,
    with STARTTLS and login when configured. smtplib blocks, so each send runs in a thread."""

    def __init__(
        self, settings: SmtpSettings, clock: Clock | None = None, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.ssl_context = ssl_context or ssl.create_default_context()

    def message(self, invoice: RenderedInvoice, recipient: str) -> EmailMessage:
        """The email; raises ``ValueError`` for a recipient that is not one plain address."""
        name, address = parseaddr(recipient)
        local, _, domain = address.rpartition("@")
        if not (local and domain) or any(c in recipient for c in "\r\n,;") or any(c.isspace() for c in address):
            raise ValueError("not one email address")
        msg = EmailMessage()
        msg["Subject"] = invoice.subject
        msg["From"] = self.settings.sender
        msg["To"] = Address(display_name=name, addr_spec=address)  # as parsed: what is shown is where it goes
        msg["Date"] = formatdate(self.clock.now_ms() // 1000, usegmt=True)
        msg["Message-ID"] = make_msgid(domain=self.settings.sender.rpartition("@")[2].strip("<> ") or None)
        msg.set_content(invoice.text)
        msg.add_alternative(invoice.html, subtype="html")
        msg.add_attachment(
            invoice.pdf, maintype="application", subtype="pdf", filename=f"{file_stem(invoice.number)}.pdf"
        )
        return msg

    async def deliver(self, invoice: RenderedInvoice, recipient: str) -> DeliveryResult:
        try:
            msg = self.message(invoice, recipient)
        except (ValueError, IndexError, MessageError):  # what the header parser raises on a malformed address
            result = DeliveryResult(False, "invalid recipient address")
        else:
            result = await asyncio.to_thread(self._send, msg)
        _log(invoice.number, "smtp", result)
        return result

    def _send(self, msg: EmailMessage) -> DeliveryResult:
        s = self.settings
        try:
            with smtplib.SMTP(s.host, s.port, timeout=s.timeout_s) as smtp:
                smtp.ehlo()
                if s.starttls:
                    smtp.starttls(context=self.ssl_context)
                    smtp.ehlo()
                if s.username:
                    try:
                        smtp.login(s.username, s.password)
                    except smtplib.SMTPAuthenticationError as e:
                        # Server text about a failed login is not quoted: it may echo credentials.
                        return DeliveryResult(False, f"SMTP login refused ({e.smtp_code})")
                refused = smtp.send_message(msg)
        except smtplib.SMTPRecipientsRefused as e:
            code, text = next(iter(e.recipients.values()))
            return _smtp_failure(code, text)
        except smtplib.SMTPResponseException as e:  # sender refused, data refused, greeting refused
            return _smtp_failure(e.smtp_code, e.smtp_error)
        except smtplib.SMTPNotSupportedError as e:
            return DeliveryResult(False, f"SMTP server lacks a needed extension: {e}")
        except smtplib.SMTPServerDisconnected:
            return DeliveryResult(False, "SMTP server closed the connection", retry=True)
        except smtplib.SMTPException as e:
            return DeliveryResult(False, f"SMTP error: {mask_addresses(str(e))}", retry=True)
        except ssl.SSLError as e:
            return DeliveryResult(False, f"TLS failed: {e.reason or type(e).__name__}")
        except TimeoutError:
            return DeliveryResult(False, f"SMTP server did not answer within {s.timeout_s:g} s", retry=True)
        except OSError as e:  # connection refused, unreachable, unknown host
            return DeliveryResult(False, f"cannot reach SMTP server: {e.strerror or type(e).__name__}", retry=True)
        if refused:
            code, text = next(iter(refused.values()))
            return _smtp_failure(code, text)
        return DELIVERED


def _smtp_failure(code: int, text: bytes | str) -> DeliveryResult:
    message = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return DeliveryResult(False, f"SMTP {code}: {mask_addresses(message)}", retry=400 <= code < 500)


class DirectoryDelivery:
    """Writes ``<number>.pdf`` then ``<number>.html`` into a directory, each whole or not at
    all (a temporary file renamed into place), so a reader that sees the HTML file also finds
    the PDF. Files are readable by owner and group only: they hold personal data."""

    MODE = 0o640

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def deliver(self, invoice: RenderedInvoice, recipient: str = "") -> DeliveryResult:
        """``recipient`` is not used: whoever collects the files knows where they go."""
        try:
            await asyncio.to_thread(self._write, invoice)
            result = DELIVERED
        except OSError as e:
            result = DeliveryResult(False, f"cannot write invoice files: {e.strerror or type(e).__name__}", retry=True)
        _log(invoice.number, "directory", result)
        return result

    def _write(self, invoice: RenderedInvoice) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        stem = file_stem(invoice.number)
        self._write_atomic(self.directory / f"{stem}.pdf", invoice.pdf)
        self._write_atomic(self.directory / f"{stem}.html", invoice.html.encode())
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)  # make the renames durable
        finally:
            os.close(fd)

    def _write_atomic(self, path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, self.MODE)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def _log(number: str, channel: str, result: DeliveryResult) -> None:
    if result.delivered:
        log.info("invoice delivered", extra={"invoice": number, "channel": channel})
    else:
        extra = {"invoice": number, "channel": channel, "reason": result.reason, "retry": result.retry}
        log.warning("invoice not delivered", extra=extra)
