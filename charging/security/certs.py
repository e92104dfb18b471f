"""A development CA and certificates for the server and for each role (``charging certs``).

For trying a secured server and for tests, not for production: an operator's own PKI
issues production certificates. Keys are EC P-256, written with mode 0600; certificates
last ``days`` days. Client certificates carry a SAN URI ``spiffe://<domain>/<name>``,
which the generated policy file maps to roles.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from charging.security.roles import ROLES

DOMAIN = "charging.local"
# The channels of the development ``channel`` certificate.
DEV_CHANNELS = ("RETAIL", "APP")


@dataclass(frozen=True)
class Issued:
    cert_pem: bytes
    key_pem: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _window(days: int) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    return now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)


def make_ca(name: str = "charging development CA", days: int = 365) -> Issued:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start, end = _window(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue(
    ca: Issued,
    common_name: str,
    *,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    uris: Sequence[str] = (),
    server: bool = False,
    days: int = 365,
) -> Issued:
    """A leaf certificate signed by ``ca``: a server certificate (``server=True``) or a
    client certificate, with the given subject alternative names."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = _key()
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    names += [x509.UniformResourceIdentifier(u) for u in uris]
    start, end = _window(days)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def role_uri(name: str, domain: str = DOMAIN) -> str:
    return f"spiffe://{domain}/{name}"


def dev_policy(domain: str = DOMAIN) -> dict[str, object]:
    """A policy mapping each role's development certificate to that role."""
    clients: list[dict[str, object]] = []
    for role in ROLES:
        client: dict[str, object] = {"uri": role_uri(role, domain), "roles": [role]}
        if role == "channel":
            client["channels"] = list(DEV_CHANNELS)
        clients.append(client)
    return {"clients": clients}


def write_pair(directory: Path, name: str, pair: Issued) -> None:
    """``<name>.pem`` and ``<name>.key`` (mode 0600, never readable by others)."""
    (directory / f"{name}.pem").write_bytes(pair.cert_pem)
    key_path = directory / f"{name}.key"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pair.key_pem)
    os.chmod(key_path, 0o600)


def write_dev_set(directory: Path, hosts: Sequence[str] = ("localhost",), days: int = 365) -> list[str]:
    """A development CA (``ca.pem``, ``ca.key``), a server certificate for ``hosts`` and
    127.0.0.1 (``server.pem``), one client certificate per role (``<role>.pem``) and the
    policy mapping them (``policy.json``). Returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca(days=days)
    write_pair(directory, "ca", ca)
    dns = [h for h in hosts if not _is_ip(h)]
    ips = ["127.0.0.1", *(h for h in hosts if _is_ip(h) and h != "127.0.0.1")]
    write_pair(directory, "server", issue(ca, dns[0] if dns else ips[0], dns=dns, ips=ips, server=True, days=days))
    for role in ROLES:
        write_pair(directory, role, issue(ca, role, uris=[role_uri(role)], days=days))
    (directory / "policy.json").write_text(json.dumps(dev_policy(), indent=2) + "\n")
    return ["ca.pem", "ca.key", "server.pem", "server.key", *(f"{r}.pem" for r in ROLES), "policy.json"]


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
