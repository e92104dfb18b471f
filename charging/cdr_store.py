"""Usage records and audit entries in PostgreSQL: written in batches by the relay, read
by ``charging cdrs``.

Writing a batch is one transaction: all of it is in the tables, or none. The fast way in
is one binary COPY straight into the table (no statement per row). COPY has no conflict
clause, so a batch holding a record that is there already (relayed again: the relay
stopped after a commit and before trimming the outbox) fails with a unique violation; the
COPY runs inside a savepoint, so the batch then goes in the slower way that skips repeats:
COPY into a temporary table of the connection, then ``INSERT ... SELECT ... ON CONFLICT DO
NOTHING``. Repeats are rare (a crash), so nearly every batch takes the fast way.

A row whose month has no partition cannot be inserted (``retention.py`` makes them three
months ahead; a record may carry an older time, a test clock anywhere): the months a
batch needs are made first, in their own short transaction, once per process.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from operator import attrgetter
from typing import Any, Protocol

from psycopg import AsyncConnection, AsyncCursor, errors, sql
from psycopg.adapt import Dumper
from psycopg.postgres import types as postgres_types
from psycopg.pq import Format
from psycopg.rows import TupleRow

from charging.cdrs import AUDIT_COLUMNS, USAGE_COLUMNS, AuditRow, UsageRow
from charging.database import Pool


@dataclass(frozen=True)
class Written:
    usage_offered: int
    usage_inserted: int
    audit_offered: int
    audit_inserted: int


class KeptRows(Protocol):
    """Another package's rows that reach PostgreSQL through the relay, from a record
    outbox of its own (provisioning's orders and lines' history: ``order_store.py``):
    it turns the outbox's entries into rows, idempotently, in the relay's transaction."""

    outbox: str

    async def insert_entries(self, conn: AsyncConnection[TupleRow], entries: Sequence[str]) -> int: ...

    async def committed(self, entries: Sequence[str]) -> None:
        """The entries' rows are committed (before they leave the outbox): what Redis
        kept only until then may go."""


@dataclass(frozen=True)
class Table:
    """How a batch of one table's rows goes in."""

    name: str
    columns: tuple[str, ...]
    types: tuple[str, ...]  # PostgreSQL types of the columns, for the binary COPY
    values: Callable[[Any], tuple[Any, ...]]
    # The primary key: (an id, occurred_at). Rows go in in its order (the id's code points,
    # as Python sorts text and as COLLATE "C" does), so that two relays writing the same
    # records at once wait for each other instead of deadlocking on the key's index.
    key: Callable[[Any], tuple[str, datetime]]
    key_columns: tuple[str, str]

    def _cols(self) -> sql.Composable:
        return sql.SQL(", ").join(sql.Identifier(c) for c in self.columns)

    def copy(self, into: str) -> sql.Composed:
        return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(sql.Identifier(into), self._cols())

    def create_staging(self) -> sql.Composed:
        return sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS").format(
            sql.Identifier(self.staging), sql.Identifier(self.name)
        )

    def insert_staged(self) -> sql.Composed:
        first, second = (sql.Identifier(c) for c in self.key_columns)
        query = 'INSERT INTO {} ({}) SELECT {} FROM {} ORDER BY {} COLLATE "C", {} ON CONFLICT DO NOTHING'
        return sql.SQL(query).format(
            sql.Identifier(self.name), self._cols(), self._cols(), sql.Identifier(self.staging), first, second
        )

    @property
    def staging(self) -> str:
        return self.name + "_in"


class JsonbText(str):
    """JSON text bound for a jsonb column as it is (psycopg's ``Jsonb`` would encode the
    object for every row: the relay's COPY spends its time there otherwise)."""


class JsonbTextDumper(Dumper):
    format = Format.BINARY
    oid = postgres_types["jsonb"].oid

    def dump(self, obj: Any) -> bytes:
        return b"\x01" + str(obj).encode()  # jsonb's binary format: version 1, then the text


EMPTY = JsonbText("{}")


def _jsonb(units: dict[str, int]) -> JsonbText:
    """Most usage is paid by money alone: no buckets, the same text every time."""
    return JsonbText(json.dumps(units, separators=(",", ":"))) if units else EMPTY


def _usage_values(row: UsageRow) -> tuple[Any, ...]:
    values = _USAGE(row)
    return (*values[:-2], _jsonb(values[-2]), values[-1])


def _audit_values(row: AuditRow) -> tuple[Any, ...]:
    values = _AUDIT(row)
    return (*values[:-1], JsonbText(json.dumps(values[-1], separators=(",", ":"), sort_keys=True)))


_USAGE = attrgetter(*USAGE_COLUMNS)  # a row's values in column order (bucket_units, then cause, last)
_AUDIT = attrgetter(*AUDIT_COLUMNS)  # (details last)
USAGE = Table(
    "usage_records",
    USAGE_COLUMNS,
    ("text", "timestamptz", "text", "text", "text", "text", "text", "text", "int4", "text", "int4", "text", "text",
     "text", "text", "text", "bool", "text", "int8", "int8", "int8", "jsonb", "text"),
    _usage_values,
    attrgetter("record_id", "occurred_at"),
    ("record_id", "occurred_at"),
)  # fmt: skip
AUDIT = Table(
    "audit",
    AUDIT_COLUMNS,
    ("text", "timestamptz", "text", "text", "text", "text", "jsonb"),
    _audit_values,
    attrgetter("entry_id", "occurred_at"),
    ("entry_id", "occurred_at"),
)


def month_of(moment: datetime) -> date:
    return date(moment.year, moment.month, 1)


class CdrStore:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self._months: set[tuple[str, date]] = set()  # partitions known to exist

    async def write(
        self,
        usage: Sequence[UsageRow],
        audit: Sequence[AuditRow],
        kept: Sequence[tuple[KeptRows, Sequence[str]]] = (),
    ) -> Written:
        """Insert both batches (and the ``kept`` entries of other packages' outboxes) in
        one transaction; what was there already is skipped."""
        await self._partitions({("usage_records", month_of(u.occurred_at)) for u in usage})
        await self._partitions({("audit", month_of(a.occurred_at)) for a in audit})
        async with self.pool.connection() as conn:
            inserted_usage = await _put(conn, USAGE, usage) if usage else 0
            inserted_audit = await _put(conn, AUDIT, audit) if audit else 0
            for rows, entries in kept:
                await rows.insert_entries(conn, entries)
        return Written(len(usage), inserted_usage, len(audit), inserted_audit)

    async def _partitions(self, needed: set[tuple[str, date]]) -> None:
        missing = needed - self._months
        if not missing:
            return
        async with self.pool.connection() as conn:
            for table, month in sorted(missing):
                await conn.execute("SELECT create_month_partitions(%s, %s, %s)", (table, month, month))
        self._months |= missing


async def _copy(conn: AsyncConnection[TupleRow], table: Table, into: str, rows: Sequence[Any]) -> None:
    async with conn.cursor() as cur:
        cur.adapters.register_dumper(JsonbText, JsonbTextDumper)
        await _copy_rows(cur, table, into, rows)


async def _copy_rows(cur: AsyncCursor[TupleRow], table: Table, into: str, rows: Sequence[Any]) -> None:
    async with cur.copy(table.copy(into)) as pipe:
        pipe.set_types(list(table.types))
        for row in rows:
            await pipe.write_row(table.values(row))


async def _put(conn: AsyncConnection[TupleRow], table: Table, rows: Sequence[Any]) -> int:
    """Rows into the table, in the order of its key; answers how many were new."""
    rows = sorted(rows, key=table.key)
    try:
        async with conn.transaction():  # a savepoint: a failed COPY leaves the batch's transaction usable
            await _copy(conn, table, table.name, rows)
        return len(rows)
    except errors.UniqueViolation:
        pass
    # "already exists, skipping" would be a NOTICE at every batch that comes this way.
    await conn.execute("SET LOCAL client_min_messages = warning")
    await conn.execute(table.create_staging())
    await _copy(conn, table, table.staging, rows)
    async with conn.cursor() as cur:
        await cur.execute(table.insert_staged())
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
                yield UsageRow(*row)
