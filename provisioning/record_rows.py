"""What customer and unit records share (``customer_records.py``, ``unit_records.py``):
the lock a customer's changes take turns under, the audit entry written with each, and
a version as a history shows it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from charging import audit_trail
from charging.audit_trail import AuditEntry
from charging.errors import NotFound
from provisioning.customer_care import instant


@dataclass(frozen=True)
class Version:
    """One change of a customer or unit as its history shows it."""

    number: int
    change: str
    state: str  # a customer's state; a unit's parent
    at: int
    by: str


def digits(value: str, field: str) -> int:
    """A customer's or unit's id as its rows key it; one that cannot be is no such one."""
    if not value.isdigit() or len(value) > 18:
        raise NotFound(f"no such {field}")
    return int(value)


async def lock(conn: AsyncConnection[TupleRow], customer_id: int) -> None:
    """The customer's changes (and its units') take turns, until the transaction ends."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('customer:' || %s, 0))", (customer_id,))


async def audit(
    conn: AsyncConnection[TupleRow], at_s: int, actor: str, action: str, subject: str, **details: Any
) -> None:
    """The audit entry of a change, in the transaction that writes it."""
    entry = AuditEntry(uuid.uuid4().hex, instant(at_s), actor, action, subject, "", details)
    await audit_trail.insert(conn, [entry])
