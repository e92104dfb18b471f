"""TLS for the doors that accept connections with Python's ``ssl`` (Nchf over HTTP/2,
Diameter over TLS): the server's context from the gRPC API's certificate settings
(``CHARGING_TLS_CERT``/``_KEY``, ``CHARGING_TLS_CLIENT_CA``), renewed without a restart,
and the subject alternative names of a peer's certificate.

The gRPC API has its own (``tls.py``: gRPC asks for credentials before each handshake);
these doors hand the context to ``asyncio.start_server``, so the renewal goes through the
SNI callback instead, which ``ssl`` calls on every handshake, with or without SNI.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Mapping, Sequence
from typing import Any

from charging.errors import StartupError
from charging.settings import Settings

log = logging.getLogger("charging.security")


def server_tls(settings: Settings, alpn: Sequence[str] = (), what: str = "Nchf") -> ssl.SSLContext:
    """The server's TLS context (TLS 1.2 or later); with a client CA, a client
    certificate it signed is required."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
        if settings.tls_client_ca:
            context.load_verify_locations(settings.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"{what} TLS: {exc}") from None
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


class ServerTls:
    """The server's TLS context, renewed when a certificate file changes (as the gRPC
    API's ``tls.py``): the listening socket keeps the first context, whose SNI callback
    hands each handshake the newest one. Files are looked at no more than once a second;
    a new pair that does not load (a renewal half written) is ignored with a warning
    until it does."""

    def __init__(self, settings: Settings, alpn: Sequence[str] = (), what: str = "Nchf", check_s: float = 1.0) -> None:
        self.settings = settings
        self.alpn = tuple(alpn)
        self.what = what
        self.check_s = check_s
        self._paths = [p for p in (settings.tls_cert, settings.tls_key, settings.tls_client_ca) if p]
        self._stamps = self._read_stamps()
        self.context = server_tls(settings, self.alpn, what)
        self.context.sni_callback = self._handshake
        self._current = self.context
        self._checked = time.monotonic()

    def _read_stamps(self) -> tuple[tuple[int, int], ...]:
        try:
            return tuple((st.st_mtime_ns, st.st_size) for st in (os.stat(p) for p in self._paths))
        except OSError:
            return ()

    def _handshake(self, conn: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        now = time.monotonic()
        if now - self._checked >= self.check_s:
            self._checked = now
            stamps = self._read_stamps()
            if stamps and stamps != self._stamps:
                try:
                    self._current = server_tls(self.settings, self.alpn, self.what)
                except StartupError as exc:
                    log.warning("certificate files not reloaded", extra={"door": self.what, "error": str(exc)})
                else:
                    self._stamps = stamps
                    log.info("certificate files reloaded", extra={"door": self.what, "cert": self.settings.tls_cert})
        if self._current is not self.context:
            conn.context = self._current


def names(cert: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """The URI and DNS subject alternative names of a peer certificate (``getpeercert``)."""
    uris = [v for k, v in cert.get("subjectAltName", ()) if k == "URI"]
    dns = [v for k, v in cert.get("subjectAltName", ()) if k == "DNS"]
    return uris, dns
