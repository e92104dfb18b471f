"""The customer's itemised usage on request (``Billing.ListUsageRecords``): the usage
records of an account or a line in a time range, read from PostgreSQL in pages.

Pages are ordered by (time, record id), the primary key's order, and a page token is the
position of the last record of the page (as the audit trail's, ``audit_trail.Position``),
so a page never repeats or skips a record, whatever is relayed meanwhile into other
times. The range is required and bounded: ``occurred_at`` is the partition key, so a query
reads only the months it names.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import sql

from charging.audit_trail import Position
from charging.cdr_store import USAGE_SELECT
from charging.cdrs import UsageRow
from charging.database import Pool
from charging.errors import InvalidRequest

DEFAULT_PAGE, MAX_PAGE = 100, 1000


@dataclass(frozen=True)
class UsageQuery:
    """Records of ``account`` and/or ``msisdn`` in [start, end), after ``after``."""

    account: str
    msisdn: str
    start: datetime
    end: datetime
    page_size: int = DEFAULT_PAGE
    after: Position | None = None

    def __post_init__(self) -> None:
        if not self.account and not self.msisdn:
            raise InvalidRequest("account_id", "name an account (account_id) or a line (msisdn)")
        if self.end <= self.start:
            raise InvalidRequest("to", "must be after from")
        if not 1 <= self.page_size <= MAX_PAGE:
            raise InvalidRequest("page_size", f"must be 0 (the default, {DEFAULT_PAGE}) to {MAX_PAGE}")

    def where(self) -> tuple[sql.Composable, list[Any]]:
        """The WHERE clause and its parameters (pure)."""
        clauses = [sql.SQL("occurred_at >= %s AND occurred_at < %s")]
        params: list[Any] = [self.start, self.end]
        if self.account:
            clauses.append(sql.SQL("account = %s"))
            params.append(self.account)
        if self.msisdn:
            clauses.append(sql.SQL("msisdn = %s"))
            params.append(self.msisdn)
        if self.after is not None:
            clauses.append(sql.SQL("(occurred_at, record_id) > (%s, %s)"))
            params.extend((self.after.occurred_at, self.after.entry_id))
        return sql.SQL(" AND ").join(clauses), params


def instant(name: str, text: str) -> datetime:
    """A required RFC 3339 instant with an offset, ``name`` being the request's field."""
    if not text:
        raise InvalidRequest(name, "is required (an RFC 3339 instant such as 2026-11-01T00:00:00+00:00)")
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(name, "must be an RFC 3339 instant such as 2026-11-01T00:00:00+00:00") from None
    if at.tzinfo is None:
        raise InvalidRequest(name, "needs an offset (+00:00 or Z)")
    return at


@dataclass(frozen=True)
class UsagePage:
    records: tuple[UsageRow, ...]
    next_token: str  # empty on the last page


async def usage_page(pool: Pool, query: UsageQuery) -> UsagePage:
    where, params = query.where()
    statement = sql.SQL("{} WHERE {} ORDER BY occurred_at, record_id LIMIT {}").format(
        USAGE_SELECT, where, sql.Literal(query.page_size + 1)
    )
    async with pool.connection() as conn, conn.cursor() as cur:
        await cur.execute(statement, params)
        found = [UsageRow(*row) for row in await cur.fetchall()]
    records = tuple(found[: query.page_size])
    more = len(found) > query.page_size
    token = Position(records[-1].occurred_at, records[-1].record_id).token() if more else ""
    return UsagePage(records, token)
