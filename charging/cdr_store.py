"""Usage records and audit entries in PostgreSQL: written in batches by the relay, read
by ``charging cdrs``.

Writing: each batch is COPied into a temporary table of the connection, then inserted
into ``usage_records`` / ``audit`` with ``ON CONFLICT DO NOTHING``. COPY is the fast way
in (one stream, no statement per row) but has no conflict clause; the INSERT ... SELECT
gives the idempotency: a record relayed again (the relay crashed after the commit and
before trimming the outbox) has the same primary key and is skipped. The batch is one
transaction: all of it is in the tables, or none.

A row whose month has no partition cannot be inserted (``retention.py`` makes them three
months ahead; a record may carry an older time, a test clock anywhere): the months a
batch needs are made first, in their own short transaction, once per process.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from operator import attrgetter

from psycopg import AsyncConnection, sql
from psycopg.rows import TupleRow

from charging.cdrs import AUDIT_COLUMNS, USAGE_COLUMNS, AuditRow, UsageRow
from charging.database import Pool


@dataclass(frozen=True)
class Written:
    usage_offered: int
    usage_inserted: int
    audit_offered: int
    audit_inserted: int


def _temp(table: str, columns: Sequence[str]) -> tuple[sql.Composed, sql.Composed, sql.Composed]:
    """CREATE of the connection's staging table, the COPY into it, and the INSERT from it."""
    staging = sql.Identifier(f"{table}_in")
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    create = sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS").format(
        staging, sql.Identifier(table)
    )
    copy = sql.SQL("COPY {} ({}) FROM STDIN").format(staging, cols)
    insert = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT DO NOTHING").format(
        sql.Identifier(table), cols, cols, staging
    )
    return create, copy, insert


USAGE_SQL = _temp("usage_records", USAGE_COLUMNS)
AUDIT_SQL = _temp("audit", AUDIT_COLUMNS)
USAGE_VALUES = attrgetter(*USAGE_COLUMNS)  # a row's values in column order
AUDIT_VALUES = attrgetter(*AUDIT_COLUMNS)


def month_of(moment: datetime) -> date:
    return date(moment.year, moment.month, 1)


class CdrStore:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self._months: set[tuple[str, date]] = set()  # partitions known to exist

    async def write(self, usage: Sequence[UsageRow], audit: Sequence[AuditRow]) -> Written:
        """Insert both batches in one transaction; what was there already is skipped."""
        await self._partitions([("usage_records", month_of(u.occurred_at)) for u in usage])
        await self._partitions([("audit", month_of(a.occurred_at)) for a in audit])
        async with self.pool.connection() as conn:
            # "already exists, skipping" is a NOTICE at every batch: not worth a log line.
            await conn.execute("SET LOCAL client_min_messages = warning")
            inserted_usage = await _copy_in(conn, USAGE_SQL, [USAGE_VALUES(u) for u in usage]) if usage else 0
            inserted_audit = await _copy_in(conn, AUDIT_SQL, [AUDIT_VALUES(a) for a in audit]) if audit else 0
        return Written(len(usage), inserted_usage, len(audit), inserted_audit)

    async def _partitions(self, needed: list[tuple[str, date]]) -> None:
        missing = set(needed) - self._months
        if not missing:
            return
        async with self.pool.connection() as conn:
            for table, month in sorted(missing):
                await conn.execute("SELECT create_month_partitions(%s, %s, %s)", (table, month, month))
        self._months |= missing


async def _copy_in(
    conn: AsyncConnection[TupleRow],
    statements: tuple[sql.Composed, sql.Composed, sql.Composed],
    rows: Sequence[tuple[object, ...]],
) -> int:
    create, copy, insert = statements
    await conn.execute(create)
    async with conn.cursor() as cur:
        async with cur.copy(copy) as pipe:
            for row in rows:
                await pipe.write_row(row)
        await cur.execute(insert)
        return max(cur.rowcount, 0)


# --------------------------------------------------------------------------- reading

USAGE_SELECT = sql.SQL("SELECT {} FROM usage_records").format(
    sql.SQL(", ").join(sql.Identifier(c) for c in USAGE_COLUMNS)
)


async def usage(
    pool: Pool, start: datetime, end: datetime, *, msisdn: str = "", account: str = "", limit: int = 0
) -> AsyncIterator[UsageRow]:
    """Usage records from ``start`` (included) to ``end`` (excluded), oldest first, of one
    line (``msisdn``) or account, or of everyone; streamed (an export may be large)."""
    where = [sql.SQL("occurred_at >= %s AND occurred_at < %s")]
    params: list[object] = [start, end]
    if msisdn:
        where.append(sql.SQL("msisdn = %s"))
        params.append(msisdn)
    if account:
        where.append(sql.SQL("account = %s"))
        params.append(account)
    query = sql.SQL("{} WHERE {} ORDER BY occurred_at, record_id").format(USAGE_SELECT, sql.SQL(" AND ").join(where))
    if limit > 0:
        query = sql.SQL("{} LIMIT {}").format(query, sql.Literal(limit))
    async with pool.connection() as conn:
        # A server-side cursor: rows arrive in chunks, never the whole period in memory.
        async with conn.cursor(name="cdrs") as cur:
            await cur.execute(query, params)
            async for row in cur:
                values = list(row)
                values[USAGE_COLUMNS.index("bucket_units")] = _json_text(values[USAGE_COLUMNS.index("bucket_units")])
                yield UsageRow(*values)


def _json_text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), sort_keys=True)
