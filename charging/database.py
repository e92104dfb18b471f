"""The connection pool to the system of record (PostgreSQL), through psycopg 3.

What lives where: Redis keeps what must be real-time (balances, reservations, sessions);
PostgreSQL keeps what must be kept for years (usage records, the audit trail, invoices).
The schema is in ``charging/migrations``; the monthly partitions are kept by
``charging/retention.py``.

A module that keeps records in PostgreSQL takes the pool from the wiring in
``server.py``, borrows a connection for one transaction (``async with
pool.connection() as conn``: commit on leaving, rollback on an exception) and gives it
back; it never holds one across an await on anything else.
"""

from __future__ import annotations

import ipaddress
from typing import TypeAlias

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from charging.errors import StartupError
from charging.settings import redact_url

Pool: TypeAlias = AsyncConnectionPool[AsyncConnection[TupleRow]]


def _is_local(host: str) -> bool:
    if not host or host.startswith("/") or host.startswith("@") or host == "localhost":
        return True  # a Unix socket (a directory, or an abstract name) or the loopback name
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plaintext_problem(url: str) -> str | None:
    """Why ``url`` would carry the system of record over a network in clear or to a server
    whose certificate is not verified; None when it does not leave the machine, or uses TLS
    with the certificate and the host name verified (``sslmode=verify-full``)."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        return f"CHARGING_DATABASE_URL is not a PostgreSQL URL: {exc}"
    hosts = str(info.get("host") or "").split(",")
    remote = [h for h in hosts if not _is_local(h)]
    if not remote or info.get("sslmode") == "verify-full":
        return None
    return (
        f"CHARGING_DATABASE_URL reaches {remote[0]} without sslmode=verify-full (TLS with the "
        "server's certificate and host name verified; add sslrootcert=<CA file> unless the "
        "system's CAs sign it)"
    )


async def open_pool(url: str, size: int, *, timeout_s: float = 10.0) -> Pool:
    """A pool of at most ``size`` connections, with one open already (so a wrong URL or
    password, or a certificate that does not verify, fails here, at start, with
    PostgreSQL's reason, not on the first request)."""
    try:
        first = await AsyncConnection.connect(url, connect_timeout=max(int(timeout_s), 1))
    except psycopg.OperationalError as exc:
        reason = " ".join(str(exc).split())
        raise StartupError(f"cannot connect to the database at {redact_url(url)}: {reason}") from None
    await first.close()
    pool: Pool = AsyncConnectionPool(
        url,
        min_size=1,
        max_size=size,
        open=False,
        name="charging",
        timeout=timeout_s,
        # A connection that broke while idle in the pool (PostgreSQL restarted) is
        # replaced instead of being handed out.
        check=AsyncConnectionPool.check_connection,
    )
    try:
        await pool.open(wait=True, timeout=timeout_s)
    except PoolTimeout:
        await pool.close()
        raise StartupError(f"cannot connect to the database at {redact_url(url)} within {timeout_s:g} s") from None
    return pool
