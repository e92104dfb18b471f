"""``charging cdrs``: usage records of a line, an account or a whole period, from PostgreSQL.

Listing prints one JSON object per record; ``--export`` writes CSV with a header row.
Both use the export's field names (``cdrs.EXPORT_FIELDS``: 3GPP TS 32.298 names where
one exists). Records stream from a server-side cursor, so exporting a month of a large
operator does not hold the month in memory.

The database is ``CHARGING_DATABASE_URL``, else the embedded PostgreSQL of a server
running from ``CHARGING_DATABASE_DIR`` (its Unix socket; the command does not start one).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TextIO

from charging.cdr_store import usage
from charging.cdrs import EXPORT_FIELDS, UsageRow
from charging.database import open_pool
from charging.embedded_postgres import command_database_url
from charging.errors import InvalidRequest
from charging.settings import Settings


@dataclass(frozen=True)
class Query:
    start: datetime
    end: datetime
    msisdn: str = ""
    account: str = ""
    export: bool = False
    limit: int = 0


def instant(text: str, field: str) -> datetime:
    """An ISO 8601 date (midnight UTC) or date and time (UTC when no offset is given)."""
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(field, f"{text!r} is not an ISO 8601 date or time") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def query(start: str, end: str, msisdn: str, account: str, export: bool, limit: int) -> Query:
    q = Query(instant(start, "--from"), instant(end, "--to"), msisdn, account, export, limit)
    if q.end <= q.start:
        raise InvalidRequest("--to", "must be after --from")
    if not (msisdn or account or export):
        raise InvalidRequest("--msisdn", "name a line (--msisdn), an account (--account), or --export a period")
    return q


def values(row: UsageRow, *, flat: bool) -> dict[str, object]:
    """The export's fields of a record; ``flat`` (CSV) writes the bucket units as JSON text."""
    out: dict[str, object] = {}
    for name, attribute in EXPORT_FIELDS:
        value = getattr(row, attribute)
        if isinstance(value, datetime):
            value = value.astimezone(UTC).isoformat().replace("+00:00", "Z")
        elif attribute == "bucket_units" and flat:
            value = json.dumps(row.bucket_units, separators=(",", ":"), sort_keys=True)
        out[name] = value
    return out


async def write(settings: Settings, q: Query, out: TextIO) -> int:
    """Write the records to ``out``; answers how many."""
    pool = await open_pool(command_database_url(settings), 1)
    emit: Callable[[UsageRow], object]
    if q.export:
        writer = csv.writer(out)
        writer.writerow([name for name, _attribute in EXPORT_FIELDS])
        emit = lambda row: writer.writerow(values(row, flat=True).values())  # noqa: E731
    else:
        emit = lambda row: out.write(json.dumps(values(row, flat=False), separators=(",", ":")) + "\n")  # noqa: E731
    n = 0
    try:
        async for row in usage(pool, q.start, q.end, msisdn=q.msisdn, account=q.account, limit=q.limit):
            emit(row)
            n += 1
    finally:
        await pool.close()
    return n
