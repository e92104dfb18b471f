"""Real redis-servers set up for access tests: with ACL users, with TLS; and
certificates made for them with the ``cryptography`` package."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from charging.embedded_redis import redis_command
from tests.conftest import free_port


@dataclass(frozen=True)
class Pem:
    cert: Path
    key: Path


def _key_file(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)
    return path


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    """A certificate for ``key``, valid for a day."""
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def make_ca(directory: Path, name: str) -> tuple[Pem, ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        _builder(subject, subject, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Pem(path, _key_file(key, directory / f"{name}.key")), key, cert


def issue(
    directory: Path, name: str, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, *, server: bool
) -> Pem:
    """A leaf certificate signed by the CA: for 127.0.0.1 and localhost (a server) or a client."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        _builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), ca_cert.subject, key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    path = directory / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Pem(path, _key_file(key, directory / f"{name}.key"))


@dataclass(frozen=True)
class Pki:
    ca: Pem
    server: Pem
    client: Pem
    other_ca: Pem  # a CA that signed none of these: the server must be refused under it


def make_pki(directory: Path) -> Pki:
    ca, ca_key, ca_cert = make_ca(directory, "ca")
    other, _, _ = make_ca(directory, "other-ca")
    return Pki(
        ca,
        issue(directory, "redis", ca_key, ca_cert, server=True),
        issue(directory, "charging", ca_key, ca_cert, server=False),
        other,
    )


@contextmanager
def running(command: list[str], ping: redis.Redis) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                ping.ping()
                break
            except redis.ConnectionError:
                assert proc.poll() is None, "redis-server exited"
                time.sleep(0.05)
        ping.close()
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def tls_redis(directory: Path, pki: Pki, *, auth_clients: bool = False) -> Iterator[int]:
    """A redis-server listening only with TLS (``--port 0 --tls-port``); yields the port."""
    binary = shutil.which("redis-server") or "redis-server"
    port = free_port()
    command = [
        *redis_command(binary, directory, "always"),
        "--tls-port", str(port),
        "--tls-cert-file", str(pki.server.cert),
        "--tls-key-file", str(pki.server.key),
        "--tls-ca-cert-file", str(pki.ca.cert),
        "--tls-auth-clients", "yes" if auth_clients else "no",
    ]  # fmt: skip
    ping = redis.Redis(
        host="localhost",
        port=port,
        ssl=True,
        ssl_ca_certs=str(pki.ca.cert),
        ssl_certfile=str(pki.client.cert),
        ssl_keyfile=str(pki.client.key),
    )
    with running(command, ping):
        yield port


@contextmanager
def acl_redis(directory: Path, users: str) -> Iterator[int]:
    """A redis-server on a port whose users are ``users`` (ACL file lines); yields the port."""
    binary = shutil.which("redis-server") or "redis-server"
    port = free_port()
    aclfile = directory / "users.acl"
    aclfile.write_text(users)
    admin = redis.Redis(port=port, username="admin", password="admin-pw")
    with running(redis_command(binary, directory, "always", port=port, aclfile=aclfile), admin):
        yield port
