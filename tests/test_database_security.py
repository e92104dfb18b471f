"""The system of record on a network: TLS with the certificate and host name verified
(a real PostgreSQL with ssl=on and certificates made here), a server that refuses to reach
a remote database in clear, and analysts' read-only role."""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

from charging.clock import ManualClock
from charging.database import open_pool, plaintext_problem
from charging.embedded_postgres import Layout, RunAs
from charging.errors import StartupError
from charging.security import certs
from charging.server import App
from charging.settings import Settings
from tests.conftest import PostgresServer, free_port, postgres_cluster


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("postgresql://u:p@/charging?host=/var/run/postgresql", False),
        ("postgresql:///charging", False),
        ("postgresql://u:p@localhost:5432/charging", False),
        ("postgresql://u:p@127.0.0.1/charging", False),
        ("postgresql://u:p@[::1]/charging", False),
        ("postgresql://u:p@db.example.net/charging", True),
        ("postgresql://u:p@10.0.0.5/charging?sslmode=require", True),
        ("postgresql://u:p@10.0.0.5/charging?sslmode=verify-ca", True),
        ("postgresql://u:p@10.0.0.5/charging?sslmode=verify-full&sslrootcert=/etc/ca.pem", False),
        ("postgresql://u:p@127.0.0.1,db2.example.net/charging", True),
        ("host=db.example.net dbname=charging sslmode=verify-full", False),
    ],
)
def test_a_remote_database_needs_verified_tls(url: str, refused: bool) -> None:
    problem = plaintext_problem(url)
    assert (problem is not None) is refused, problem
    if problem:
        assert "CHARGING_DATABASE_URL" in problem and "verify-full" in problem and "p@" not in problem


async def test_the_server_refuses_a_remote_database_in_clear(settings: Settings, clock: ManualClock) -> None:
    remote = "postgresql://charging:secret@db.example.net:5432/charging?sslmode=require"
    app = App(dataclasses.replace(settings, database_url=remote), clock=clock, run_background=False)
    with pytest.raises(StartupError, match="sslmode=verify-full") as err:
        await app.start()
    assert "secret" not in str(err.value)
    await app.stop()


@dataclasses.dataclass(frozen=True)
class TlsPostgres:
    port: int
    password: str
    ca: Path

    def url(self, ca: Path | None = None, host: str = "localhost") -> str:
        root = quote(str(ca or self.ca), safe="")
        return (
            f"postgresql://charging:{quote(self.password, safe='')}@{host}:{self.port}/postgres"
            f"?sslmode=verify-full&sslrootcert={root}"
        )


@pytest.fixture(scope="module")
def tls_postgres() -> Iterator[TlsPostgres]:
    """A PostgreSQL of its own on a loopback TCP port with ssl=on, its certificate for
    localhost signed by a CA made here."""
    port = free_port()

    def configure(layout: Layout, user: RunAs | None) -> dict[str, str]:
        ca = certs.make_ca("test database CA")
        certs.write_pair(
            layout.directory, "server", certs.issue(ca, "localhost", dns=["localhost"], ips=["127.0.0.1"], server=True)
        )
        (layout.directory / "ca.pem").write_bytes(ca.cert_pem)
        if user is not None:
            for name in ("server.pem", "server.key"):
                os.chown(layout.directory / name, user.uid, user.gid)
        return {
            "listen_addresses": "127.0.0.1",
            "port": str(port),
            "ssl": "on",
            "ssl_cert_file": str(layout.directory / "server.pem"),
            "ssl_key_file": str(layout.directory / "server.key"),
        }

    def found(layout: Layout) -> TlsPostgres:
        return TlsPostgres(port, layout.password_file.read_text().strip(), layout.directory / "ca.pem")

    with postgres_cluster("charging-tls-pg-", configure, lambda layout: found(layout).url()) as layout:
        yield found(layout)


async def test_tls_with_the_certificate_verified(tls_postgres: TlsPostgres) -> None:
    assert plaintext_problem(tls_postgres.url(host="db.example.net")) is None
    pool = await open_pool(tls_postgres.url(), 1)
    try:
        async with pool.connection() as conn:
            row = await (await conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")).fetchone()
        assert row == (True,)
    finally:
        await pool.close()


async def test_a_certificate_that_does_not_verify_stops_start_up_with_the_reason(
    tls_postgres: TlsPostgres, tmp_path: Path
) -> None:
    other = tmp_path / "other-ca.pem"
    other.write_bytes(certs.make_ca("not the database's CA").cert_pem)
    with pytest.raises(StartupError, match="certificate verify failed") as err:
        await open_pool(tls_postgres.url(ca=other), 1, timeout_s=5)
    assert tls_postgres.password not in str(err.value)
    # The certificate is for localhost and 127.0.0.1: reached under another name (hostaddr
    # says where, host what the certificate must name), the host name check fails.
    with pytest.raises(StartupError, match="does not match host name") as err:
        await open_pool(tls_postgres.url(host="db.example.net") + "&hostaddr=127.0.0.1", 1, timeout_s=5)


def test_analysts_read_every_table_and_change_none(database_url: str, postgres_server: PostgresServer) -> None:
    name = f"analyst_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    owner_url = postgres_server.owner_of(database_url)  # the administrator makes roles
    with psycopg.connect(owner_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}' IN ROLE charging_reader")
    try:
        info = psycopg.conninfo.conninfo_to_dict(database_url)
        analyst_url = psycopg.conninfo.make_conninfo(database_url, user=name, password=password)
        assert info["user"] != name
        with psycopg.connect(analyst_url) as conn:
            tables = [
                str(t)
                for (t,) in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
                ).fetchall()
            ]
            assert {"audit", "usage_records", "invoices"} <= set(tables)
            for table in tables:
                conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("INSERT INTO invoice_numbers (issuer, series, last_number) VALUES ('x', 'y', 1)")
    finally:
        with psycopg.connect(owner_url, autocommit=True) as admin:
            admin.execute(f"DROP ROLE {name}")
