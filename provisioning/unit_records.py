"""A corporate customer's organisation units in PostgreSQL, the system of record
(migration 0012): an immutable ``org_units`` row per unit and its ``org_unit_versions``,
one per change (``added``, ``moved``; ``moved_from_redis`` for one Redis kept before):
where the unit hangs in the tree (no parent: the company, the root), its name and
whether it pays for its lines itself; the latest version is the unit now. Each change
is written with its audit entry in one transaction, under the customer's lock
(``record_rows.lock``), which its other changes take too. Unit ids are the CRM's
(allocated in Redis, by the order when an order makes the unit), so writing a unit again
changes nothing.
"""

from __future__ import annotations

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from charging.clock import Clock
from charging.database import Pool
from charging.errors import InvalidRequest, NotFound
from charging.security.identity import caller_name
from provisioning.customer_care import instant, seconds
from provisioning.organisation import OrgUnit
from provisioning.record_rows import Version, audit, digits, lock

UNITS = (
    "SELECT u.unit_id, v.version_no, v.parent_id, v.name, v.pays_itself FROM org_units u "
    "CROSS JOIN LATERAL (SELECT * FROM org_unit_versions v WHERE v.unit_id = u.unit_id "
    "ORDER BY v.version_no DESC LIMIT 1) v WHERE u.customer_id = %s ORDER BY v.parent_id IS NOT NULL, u.unit_id"
)
UNIT_VERSION = (
    "INSERT INTO org_unit_versions (unit_id, version_no, parent_id, name, pays_itself, change, occurred_at, "
    "changed_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
)


class UnitRecords:
    def __init__(self, pool: Pool, clock: Clock) -> None:
        self.pool = pool
        self.clock = clock

    def _now(self) -> int:
        return self.clock.now_ms() // 1000

    async def add_unit(self, unit: OrgUnit, *, actor: str = "") -> bool:
        """Record a unit the CRM made (its id taken already); recording it again changes
        nothing. True when written."""
        actor = actor or caller_name()
        at = instant(self._now())
        async with self.pool.connection() as conn:
            await lock(conn, int(unit.customer_id))
            added = await conn.execute(
                "INSERT INTO org_units (unit_id, customer_id, created_at, recorded_by) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                (int(unit.id), int(unit.customer_id), at, actor),
            )
            if not added.rowcount:
                return False
            parent = int(unit.parent) if unit.parent else None
            await conn.execute(UNIT_VERSION, (int(unit.id), 1, parent, unit.name, unit.pays_itself, "added", at, actor))
            details = {"unit": unit.id, "parent": unit.parent, "pays_itself": unit.pays_itself}
            await audit(conn, self._now(), actor, "unit_added", unit.customer_id, **details)
        return True

    async def move_unit(self, customer_id: str, unit_id: str, parent: str, *, actor: str = "") -> OrgUnit:
        """Hang a unit (not the company) under another unit of the same customer, not one
        of its own descendants; as a new version of the unit, with its audit entry."""
        actor = actor or caller_name()
        async with self.pool.connection() as conn:
            await lock(conn, digits(customer_id, "customer"))
            units, numbers = await self._units(conn, customer_id)
            if unit_id not in units:
                raise NotFound("no such unit")
            unit = units[unit_id]
            if not unit.parent:
                raise InvalidRequest("unit_id", "the company's root unit has no parent to move from")
            if parent not in units:
                raise InvalidRequest("parent_id", "must be a unit of the same customer")
            at = parent
            while at:
                if at == unit_id:
                    raise InvalidRequest("parent_id", "must not be the unit itself or one of its units")
                at = units[at].parent
            if parent == unit.parent:
                return unit
            moved = OrgUnit(unit.id, customer_id, parent, unit.name, unit.pays_itself)
            row = (int(unit.id), numbers[unit_id] + 1, int(parent), unit.name, unit.pays_itself, "moved")
            await conn.execute(UNIT_VERSION, (*row, instant(self._now()), actor))
            details = {"unit": unit.id, "parent": parent, "from": unit.parent}
            await audit(conn, self._now(), actor, "unit_moved", customer_id, **details)
        return moved

    async def _units(
        self, conn: AsyncConnection[TupleRow], customer_id: str
    ) -> tuple[dict[str, OrgUnit], dict[str, int]]:
        rows = await (await conn.execute(UNITS, (digits(customer_id, "customer"),))).fetchall()
        units = {
            str(u): OrgUnit(str(u), customer_id, "" if p is None else str(p), name, pays)
            for u, _, p, name, pays in rows
        }
        return units, {str(u): int(n) for u, n, *_ in rows}

    async def units(self, customer_id: str) -> dict[str, OrgUnit]:
        """The customer's units now, the company (the root) first."""
        if not customer_id.isdigit() or len(customer_id) > 18:
            return {}
        async with self.pool.connection() as conn:
            return (await self._units(conn, customer_id))[0]

    async def history(self, unit_id: str) -> list[Version]:
        async with self.pool.connection() as conn:
            rows = await (
                await conn.execute(
                    "SELECT version_no, change, coalesce(parent_id::text, ''), occurred_at, changed_by "
                    "FROM org_unit_versions WHERE unit_id = %s ORDER BY version_no",
                    (digits(unit_id, "unit"),),
                )
            ).fetchall()
        return [Version(n, change, parent, seconds(at), by) for n, change, parent, at, by in rows]
