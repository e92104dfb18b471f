"""The audit trail in PostgreSQL: who changed what, when and why, append-only.

Entries are immutable rows of the ``audit`` table (partitioned by UTC month, kept as
long as ``CHARGING_AUDIT_RETENTION_MONTHS`` says; a trigger refuses UPDATE and DELETE).
An entry names its actor (the authenticated caller, ``charging.security.identity``),
its action (``topup``, ``refund``, ``credit_note``, ...), its subject (the account or
billing account it changed) and a reason; ``details`` holds the amounts and references.

Writers: changes made by a Redis script put their entry into the account's outbox in the
same script, and the relay copies it here under the entry id the script gave it (so a
relay that runs twice inserts once); changes made in the database write their entry in the
same transaction (``insert``). Readers query by subject, actor and time range, oldest
first, in pages: the page token is the position (time, entry id) of the last entry
returned, so a page never repeats or skips an entry when new ones arrive meanwhile.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb

from charging.database import Pool
from charging.errors import InvalidRequest

DEFAULT_PAGE = 100
MAX_PAGE = 1000


@dataclass(frozen=True)
class AuditEntry:
    entry_id: str
    occurred_at: datetime  # timezone-aware
    actor: str
    action: str
    subject: str
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Position:
    """Where a page ended: the last entry's time and id (entries are ordered by both)."""

    occurred_at: datetime
    entry_id: str

    def token(self) -> str:
        text = f"{self.occurred_at.isoformat()}|{self.entry_id}"
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    @staticmethod
    def from_token(token: str) -> Position:
        try:
            text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            at, _bar, entry_id = text.partition("|")
            occurred_at = datetime.fromisoformat(at)
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise InvalidRequest("page_token", "is not a token this server handed out") from None
        if not entry_id or occurred_at.tzinfo is None:
            raise InvalidRequest("page_token", "is not a token this server handed out")
        return Position(occurred_at, entry_id)


@dataclass(frozen=True)
class AuditQuery:
    """Entries of one subject and/or actor in [start, end); empty strings match all."""

    subject: str = ""
    actor: str = ""
    start: datetime | None = None
    end: datetime | None = None
    page_size: int = DEFAULT_PAGE
    after: Position | None = None

    def __post_init__(self) -> None:
        if not self.subject and not self.actor and self.start is None:
            raise InvalidRequest("subject", "name a subject, an actor or a start time (the trail is large)")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise InvalidRequest("to", "must be after from")
        if not 1 <= self.page_size <= MAX_PAGE:
            raise InvalidRequest("page_size", f"must be 1 to {MAX_PAGE}")

    def where(self) -> tuple[str, list[Any]]:
        """The WHERE clause and its parameters (pure; tested without a database)."""
        clauses: list[str] = []
        params: list[Any] = []
        if self.subject:
            clauses.append("subject = %s")
            params.append(self.subject)
        if self.actor:
            clauses.append("actor = %s")
            params.append(self.actor)
        if self.start is not None:
            clauses.append("occurred_at >= %s")
            params.append(self.start)
        if self.end is not None:
            clauses.append("occurred_at < %s")
            params.append(self.end)
        if self.after is not None:
            clauses.append("(occurred_at, entry_id) > (%s, %s)")
            params.extend((self.after.occurred_at, self.after.entry_id))
        return " AND ".join(clauses) or "TRUE", params


@dataclass(frozen=True)
class AuditPage:
    entries: tuple[AuditEntry, ...]
    next_token: str  # empty on the last page


COLUMNS = "entry_id, occurred_at, actor, action, subject, reason, details"


async def insert(conn: AsyncConnection[TupleRow], entries: list[AuditEntry]) -> int:
    """Insert entries in the caller's transaction; an entry already there (same id and
    time) is kept as it was. Returns how many were new."""
    if not entries:
        return 0
    rows = [(e.entry_id, e.occurred_at, e.actor, e.action, e.subject, e.reason, Jsonb(e.details)) for e in entries]
    statement = (
        f"INSERT INTO audit ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (entry_id, occurred_at) DO NOTHING"
    )
    try:
        async with conn.transaction(), conn.cursor() as cur:  # a savepoint in the caller's transaction
            await cur.executemany(statement, rows)
            return cur.rowcount  # psycopg 3 sums the rows of every statement of executemany
    except psycopg.errors.CheckViolation:
        # No partition for the month (the retention job makes them ahead; a clock set
        # elsewhere, a restored server or a late relay meets a month it did not): make
        # it, once, and insert again.
        for month in sorted({e.occurred_at.date() for e in entries}):
            await conn.execute("SELECT create_month_partitions('audit', %s::date, %s::date)", (month, month))
        async with conn.cursor() as cur:
            await cur.executemany(statement, rows)
            return cur.rowcount


class AuditTrail:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def record(self, entry: AuditEntry) -> None:
        async with self.pool.connection() as conn:
            await insert(conn, [entry])

    async def query(self, query: AuditQuery) -> AuditPage:
        where, params = query.where()
        async with self.pool.connection() as conn:
            rows = await (
                await conn.execute(
                    f"SELECT {COLUMNS} FROM audit WHERE {where} ORDER BY occurred_at, entry_id LIMIT %s",
                    [*params, query.page_size + 1],
                )
            ).fetchall()
        entries = tuple(_entry(row) for row in rows[: query.page_size])
        more = len(rows) > query.page_size
        last = entries[-1] if entries else None
        token = Position(last.occurred_at, last.entry_id).token() if more and last else ""
        return AuditPage(entries, token)


def _entry(row: TupleRow) -> AuditEntry:
    entry_id, occurred_at, actor, action, subject, reason, details = row
    if isinstance(details, str):
        details = json.loads(details)
    return AuditEntry(str(entry_id), occurred_at.astimezone(UTC), actor, action, subject, reason, dict(details))
