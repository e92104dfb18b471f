"""Every console action in the audit trail (PostgreSQL ``audit``), with the staff member
as actor (``staff:<name>``), the subject (a customer, line, order or invoice id) and
details that are never personal data (amounts, states, ids)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from charging.audit_trail import AuditEntry, insert
from charging.clock import Clock
from charging.database import Pool


def actor(staff: str) -> str:
    return f"staff:{staff}"


class AuditTrail:
    def __init__(self, pool: Pool, clock: Clock) -> None:
        self.pool = pool
        self.clock = clock

    async def record(self, staff: str, action: str, subject: str, reason: str = "", **details: Any) -> None:
        at = datetime.fromtimestamp(self.clock.now_ms() / 1000, UTC)
        entry = AuditEntry(uuid.uuid4().hex, at, actor(staff), action, subject, reason, details)
        async with self.pool.connection() as conn:
            await insert(conn, [entry])

    async def of_subject(self, subject: str, limit: int = 50) -> list[tuple[datetime, str, str, str]]:
        """The latest entries about ``subject``: when, who, what, why."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT occurred_at, actor, action, reason FROM audit WHERE subject = %s "
                "ORDER BY occurred_at DESC LIMIT %s",
                (subject, limit),
            )
            return [(r[0], str(r[1]), str(r[2]), str(r[3])) for r in await cur.fetchall()]
