"""TLS credentials: the server's, re-read when its files change, and the tools'.

The server's certificate, key and client CA are files (``CHARGING_TLS_CERT``,
``CHARGING_TLS_KEY``, ``CHARGING_TLS_CLIENT_CA``). gRPC asks ``CertificateFiles.fetch``
before every TLS handshake; it answers None (keep the current configuration) unless a
file's modification time or size changed, and then the new files. So a renewed
certificate is used from the next connection on, without a restart, and connections
already open keep theirs.

Hazard: a renewal writes the certificate and the key one after the other, and a
handshake between the two would see a key that does not match the certificate. A pair
that does not load together is ignored (the old configuration stays, a warning is
logged) and tried again at the next handshake; writing the new files elsewhere and
renaming them into place avoids the window altogether.

With a client CA every caller must present a certificate it signed (mutual TLS): gRPC's
Python API can require a client certificate or not ask for one, nothing in between. So
callers that cannot present a certificate (a web shop, a CRM with bearer tokens) use a
second port with the same server certificate and no client CA
(``CHARGING_GRPC_TOKEN_ADDRESS``).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from charging import metrics

log = logging.getLogger("charging.security")


class TlsFilesInvalid(Exception):
    """The certificate files cannot be read or do not belong together."""


def _stamp(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size


def _read_pair(cert: str, key: str) -> tuple[bytes, bytes]:
    """The PEM certificate chain and key, checked to belong together."""
    try:
        cert_pem, key_pem = Path(cert).read_bytes(), Path(key).read_bytes()
    except OSError as exc:
        raise TlsFilesInvalid(f"{exc.filename}: {exc.strerror}") from None
    try:
        leaf = x509.load_pem_x509_certificate(cert_pem)
        private = serialization.load_pem_private_key(key_pem, None)
    except (ValueError, TypeError) as exc:
        raise TlsFilesInvalid(f"{cert} / {key}: {exc}") from None
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(*der) != private.public_key().public_bytes(*der):
        raise TlsFilesInvalid(f"{key} is not the key of {cert}")
    return cert_pem, key_pem


@dataclass
class CertificateFiles:
    """The server's certificate files and what was loaded from them."""

    cert: str
    key: str
    client_ca: str = ""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()  # gRPC calls fetch from its own threads
        self._stamps = self._read_stamps()
        self._config = self._load()

    def _paths(self) -> tuple[str, ...]:
        return (self.cert, self.key, self.client_ca) if self.client_ca else (self.cert, self.key)

    def _read_stamps(self) -> tuple[tuple[int, int], ...]:
        try:
            return tuple(_stamp(p) for p in self._paths())
        except OSError as exc:
            raise TlsFilesInvalid(f"{exc.filename}: {exc.strerror}") from None

    def _load(self) -> grpc.ServerCertificateConfiguration:
        cert_pem, key_pem = _read_pair(self.cert, self.key)
        ca_pem = None
        if self.client_ca:
            try:
                ca_pem = Path(self.client_ca).read_bytes()
                x509.load_pem_x509_certificates(ca_pem)
            except OSError as exc:
                raise TlsFilesInvalid(f"{exc.filename}: {exc.strerror}") from None
            except ValueError as exc:
                raise TlsFilesInvalid(f"{self.client_ca}: {exc}") from None
        _record_not_after("server", x509.load_pem_x509_certificates(cert_pem)[:1])
        if ca_pem is not None:
            _record_not_after("client_ca", x509.load_pem_x509_certificates(ca_pem))
        return grpc.ssl_server_certificate_configuration([(key_pem, cert_pem)], ca_pem)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's certificate configuration fetcher: the new configuration when a file
        changed, else None."""
        with self._lock:
            try:
                stamps = self._read_stamps()
                if stamps == self._stamps:
                    return None
                config = self._load()
            except TlsFilesInvalid as exc:
                log.warning("certificate files not reloaded", extra={"error": str(exc)})
                return None
            self._stamps, self._config = stamps, config
            log.info("certificate files reloaded", extra={"cert": self.cert})
            return config

    def credentials(self, require_client_cert: bool) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._config, self.fetch, require_client_authentication=require_client_cert
        )


def _record_not_after(certificate: str, certs: list[x509.Certificate]) -> None:
    """``charging_tls_certificate_not_after_seconds``: the earliest not-after of ``certs``."""
    if certs:
        metrics.TLS_NOT_AFTER.labels(certificate).set(min(c.not_valid_after_utc.timestamp() for c in certs))


def channel_credentials(ca: str = "", cert: str = "", key: str = "") -> grpc.ChannelCredentials:
    """Client credentials of the bundled tools: trust ``ca`` (or the system's roots) and
    present ``cert``/``key`` when given."""
    root = Path(ca).read_bytes() if ca else None
    if bool(cert) != bool(key):
        raise ValueError("a client certificate needs both --tls-cert and --tls-key")
    if cert:
        return grpc.ssl_channel_credentials(root, Path(key).read_bytes(), Path(cert).read_bytes())
    return grpc.ssl_channel_credentials(root)


def token_credentials(token: str) -> grpc.CallCredentials:
    """A bearer token sent in every call's metadata (``authorization: Bearer ...``)."""
    return grpc.access_token_call_credentials(token)
