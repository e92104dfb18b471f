"""Customers and their organisation units in PostgreSQL, the system of record (migration
0012).

A customer is an immutable row and its versions, one per change (``created``, ``state``,
``renamed``, ``withdrawn``; ``moved`` for one Redis kept before), the latest being the
customer now; a unit likewise (``unit_records.py``). Each change is written in one
transaction with its audit entry. The personal fields (``customers.PERSONAL``) are one
value per version, sealed (``sealing.py``) before it reaches a row. Changes of one
customer (and of its units) take their turns under a transaction-scoped advisory lock
on the customer, so two never get the same version number.

Ids are the CRM's (allocated in Redis by the order that makes the customer or unit), so
an order run again after a crash writes nothing twice: a customer or unit already there
is kept as it is (``ON CONFLICT DO NOTHING``), a state already recorded is not recorded
again. A customer whose order was refused after it was made is ``WITHDRAWN`` (its rows
stay, with their history) and read as absent; its order run again and accepted makes it
PENDING again. Redis keeps the real-time copy the provisioning worker and the indexes
use (``customers.py``, ``organisation.py``); the CRM API reads from here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from charging.clock import Clock
from charging.database import Pool
from charging.security.identity import caller_name
from provisioning.credit import CreditDecision
from provisioning.customer_care import instant, seconds
from provisioning.customers import PERSONAL, Customer, Customers
from provisioning.names import matches
from provisioning.record_rows import Version, audit, digits, lock
from provisioning.sealing import Sealer
from provisioning.unit_records import UnitRecords

SEALED_AS = "customer.record"
WITHDRAWN = "WITHDRAWN"

LATEST = (
    "SELECT c.customer_id, c.kind, c.created_at, c.country, c.document_type, c.document_country, "
    "v.version_no, v.state, v.credit_class, v.credit_limit_micros, v.deposit_micros, v.postpaid_allowed, "
    "v.max_lines, v.sealed_personal "
    "FROM customers c CROSS JOIN LATERAL (SELECT * FROM customer_versions v WHERE v.customer_id = c.customer_id "
    "ORDER BY v.version_no DESC LIMIT 1) v "
)
VERSION = (
    "INSERT INTO customer_versions (customer_id, version_no, state, credit_class, credit_limit_micros, "
    "deposit_micros, postpaid_allowed, max_lines, sealed_personal, change, occurred_at, changed_by) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
)


def seal_personal(sealer: Sealer, customer: Customer) -> str:
    """A customer's personal fields as the one sealed value a version keeps."""
    return sealer.seal(json.dumps({name: getattr(customer, name) for name in PERSONAL}), SEALED_AS)


class CustomerRecords:
    def __init__(self, pool: Pool, sealer: Sealer, clock: Clock) -> None:
        self.pool = pool
        self.sealer = sealer
        self.clock = clock
        self.organisation = UnitRecords(pool, clock)  # its units

    def _now(self) -> int:
        return self.clock.now_ms() // 1000

    def seal(self, customer: Customer) -> str:
        return seal_personal(self.sealer, customer)

    def _customer(self, row: Sequence[Any]) -> Customer:
        (customer_id, kind, created, country, doc_type, doc_country, _, state, credit_class, limit, deposit) = row[:11]
        postpaid, max_lines, sealed = row[11:]
        credit = None
        if credit_class:
            credit = CreditDecision(0, credit_class, limit, deposit, postpaid, max_lines, ())
        personal = json.loads(self.sealer.open(sealed, SEALED_AS))
        return Customer(
            str(customer_id),
            kind,
            seconds(created),
            state,
            country=country,
            document_type=doc_type,
            document_country=doc_country,
            credit=credit,
            **personal,
        )

    async def _version(self, conn: AsyncConnection[TupleRow], c: Customer, number: int, change: str, by: str) -> None:
        credit = c.credit or CreditDecision(0, "", 0, 0, False, 0, ())
        await conn.execute(
            VERSION,
            (
                int(c.id),
                number,
                c.state,
                credit.credit_class,
                credit.credit_limit_micros,
                credit.deposit_micros,
                credit.postpaid_allowed,
                credit.max_lines,
                self.seal(c),
                change,
                instant(self._now()),
                by,
            ),
        )

    async def _latest(self, conn: AsyncConnection[TupleRow], customer_id: int) -> tuple[int, Customer] | None:
        row = await (await conn.execute(LATEST + "WHERE c.customer_id = %s", (customer_id,))).fetchone()
        return None if row is None else (int(row[6]), self._customer(row))

    async def create(self, customer: Customer, *, actor: str = "") -> bool:
        """Record a new customer (PENDING) with its audit entry; recording it again changes
        nothing, but one withdrawn (its order refused, then run again) is PENDING again.
        True when something was written."""
        actor = actor or caller_name()
        c = replace(customer, state="PENDING")
        async with self.pool.connection() as conn:
            await lock(conn, int(c.id))
            found = await self._latest(conn, int(c.id))
            if found is not None and found[1].state != WITHDRAWN:
                return False
            if found is None:
                await conn.execute(
                    "INSERT INTO customers (customer_id, kind, created_at, country, document_type, "
                    "document_country, recorded_by) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (int(c.id), c.kind, instant(c.created), c.country, c.document_type, c.document_country, actor),
                )
            await self._version(conn, c, 1 if found is None else found[0] + 1, "created", actor)
            credit_class = "" if c.credit is None else c.credit.credit_class
            await audit(conn, self._now(), actor, "customer_created", c.id, kind=c.kind, credit_class=credit_class)
        return True

    async def _change(
        self, customer_id: str, change: str, actor: str, details: dict[str, Any] | None = None, **fields: Any
    ) -> bool:
        """A new version of the customer with ``fields`` changed, unless it has them already
        (or is withdrawn, or not recorded here); True when written. The audit entry has
        the fields that are not personal, or ``details`` when given."""
        actor = actor or caller_name()
        async with self.pool.connection() as conn:
            await lock(conn, int(customer_id))
            found = await self._latest(conn, int(customer_id))
            if found is None or (found[1].state == WITHDRAWN and change != "withdrawn"):
                return False
            number, now = found
            if all(getattr(now, k) == v for k, v in fields.items()):
                return False
            await self._version(conn, replace(now, **fields), number + 1, change, actor)
            audited = details if details is not None else {k: v for k, v in fields.items() if k not in PERSONAL}
            await audit(conn, self._now(), actor, "customer_" + change, customer_id, version=number + 1, **audited)
        return True

    async def record_state(self, customer_id: str, state: str, *, actor: str = "") -> bool:
        """The state its lines make now, as a new version if it is a change."""
        return await self._change(customer_id, "state", actor, state=state)

    async def rename(self, customer_id: str, name: str, *, actor: str = "") -> bool:
        return await self._change(customer_id, "renamed", actor, name=name)

    async def change_credit(self, customer_id: str, credit: CreditDecision, reason: str, *, actor: str = "") -> bool:
        """A new credit class (and its terms) as a ``credit`` version, audited with who
        changed it and why; False when it has these terms already."""
        details = {
            "credit_class": credit.credit_class,
            "credit_limit_micros": credit.credit_limit_micros,
            "deposit_micros": credit.deposit_micros,
            "postpaid_allowed": credit.postpaid_allowed,
            "max_lines": credit.max_lines,
            "reason": reason,
        }
        return await self._change(customer_id, "credit", actor, details, credit=credit)

    async def withdraw(self, customer_id: str, *, actor: str = "") -> bool:
        """The customer will not be (its order was refused after it was made)."""
        return await self._change(customer_id, "withdrawn", actor, state=WITHDRAWN)

    async def get(self, customer_id: str) -> Customer | None:
        """The customer now; None if there is none (or it was withdrawn)."""
        if not customer_id.isdigit() or len(customer_id) > 18:
            return None
        async with self.pool.connection() as conn:
            found = await self._latest(conn, int(customer_id))
        return None if found is None or found[1].state == WITHDRAWN else found[1]

    async def of_ids(self, ids: Sequence[str]) -> list[Customer]:
        """The customers of ``ids`` that exist, in id order."""
        wanted = sorted({int(i) for i in ids if i.isdigit() and len(i) <= 18})
        async with self.pool.connection() as conn:
            rows = await (
                await conn.execute(LATEST + "WHERE c.customer_id = ANY(%s) ORDER BY c.customer_id", (wanted,))
            ).fetchall()
        return [c for c in map(self._customer, rows) if c.state != WITHDRAWN]

    async def page(
        self, *, kind: str = "", state: str = "", after: int = 0, size: int = 50
    ) -> tuple[list[Customer], str]:
        """Customers of a kind and state if given, in id order after ``after``; a page and
        the token of the next one ("" at the end)."""
        where = ["c.customer_id > %s", "v.state <> %s"]
        params: list[Any] = [after, WITHDRAWN]
        if kind:
            where.append("c.kind = %s")
            params.append(kind)
        if state:
            where.append("v.state = %s")
            params.append(state)
        query = LATEST + "WHERE " + " AND ".join(where) + " ORDER BY c.customer_id LIMIT %s"
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(query, (*params, size + 1))).fetchall()
        customers = [self._customer(r) for r in rows[:size]]
        return customers, customers[-1].id if len(rows) > size else ""

    async def search(
        self,
        customers: Customers,
        *,
        kind: str = "",
        state: str = "",
        msisdn: str = "",
        document: tuple[str, str, str] | None = None,
        name: str = "",
        after: int = 0,
        size: int = 50,
    ) -> tuple[list[Customer], str]:
        """Customers by kind, state, the number of one of their lines, their identity
        document and the words of their name, in id order after ``after``: the indexes
        in Redis (``customers.indexed``) find the candidates, the records here say what
        they are. A page and the token of the next one ("" at the end)."""
        if not (msisdn or document is not None or name):
            return await self.page(kind=kind, state=state, after=after, size=size)
        ids = [i for i in await customers.indexed(msisdn=msisdn, document=document, name=name) if int(i) > after]
        found: list[Customer] = []
        for start in range(0, len(ids), size):
            for c in await self.of_ids(ids[start : start + size]):
                wanted = (not kind or c.kind == kind) and (not state or c.state == state)
                if wanted and (not name or matches(name, c.name)):
                    found.append(c)
            if len(found) > size:
                break
        return found[:size], found[size - 1].id if len(found) > size else ""

    async def history(self, customer_id: str) -> list[Version]:
        async with self.pool.connection() as conn:
            rows = await (
                await conn.execute(
                    "SELECT version_no, change, state, occurred_at, changed_by FROM customer_versions "
                    "WHERE customer_id = %s ORDER BY version_no",
                    (digits(customer_id, "customer"),),
                )
            ).fetchall()
        return [Version(n, change, state, seconds(at), by) for n, change, state, at, by in rows]


async def reseal(pool: Pool, sealer: Sealer) -> int:
    """Seal again under the newest key every customer version sealed under an older one
    (``charging rotate-data-key``); answers how many. Running it again changes only what
    is still under an old key."""
    async with pool.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT customer_id, version_no, sealed_personal FROM customer_versions "
                "WHERE NOT starts_with(sealed_personal, %s)",
                (sealer.current_prefix(),),
            )
        ).fetchall()
        for customer_id, number, sealed in rows:
            again = sealer.seal(sealer.open(sealed, SEALED_AS), SEALED_AS)
            await conn.execute(
                "UPDATE customer_versions SET sealed_personal = %s WHERE customer_id = %s AND version_no = %s",
                (again, customer_id, number),
            )
    return len(rows)
