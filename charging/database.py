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

from typing import TypeAlias

from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from charging.errors import StartupError
from charging.settings import redact_url

Pool: TypeAlias = AsyncConnectionPool[AsyncConnection[TupleRow]]


async def open_pool(url: str, size: int, *, timeout_s: float = 10.0) -> Pool:
    """A pool of at most ``size`` connections, with one open already (so a wrong URL or
    password fails here, at start, not on the first request)."""
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
