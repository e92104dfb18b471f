"""Orders, their steps and lines' history in PostgreSQL (revision 0013): written
idempotently from records (``order_records.py``), read by the CRM.

Every insert skips a row that is there already (``ON CONFLICT DO NOTHING``), so the
relay, an order run, an acknowledgement retried and the legacy move may all write the
same record. An order's status is the latest it reached (COMPLETED after IN_PROGRESS);
it has one decision (IN_PROGRESS or REJECTED, a unique index): a second one, which a run
decided again could bring, is kept out with its steps, the first recorded stays.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
from psycopg import AsyncConnection, AsyncCursor, DataError, IntegrityError
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb

from charging import metrics
from charging.cdrs import BadRecord, at
from charging.database import Pool
from provisioning import keys
from provisioning.lines import Line
from provisioning.order_records import LineChange, OrderRecord, Record, parse
from provisioning.orders import Order, Step

log = logging.getLogger("provisioning.order_store")

ORDER_COLUMNS = (
    "crm_order_id, kind, customer_id, account_id, msisdn, submitted_at, credit_class, "
    "credit_limit_micros, deposit_micros, problems, decided_at"
)
# a line change's columns as read back (``LineChange``'s fields in order)
CHANGE_COLUMNS = (
    "msisdn, customer_id, account_id, state, plan_id, crm_order_id, cause, reason, at, customer_type, unit_id"
)
LINE_COLUMNS = "change_id, " + CHANGE_COLUMNS
# later statuses win: an order completed after it went in progress is COMPLETED
# what a record's own values cause (a check, a value out of range), not the database's state
REFUSED = (DataError, IntegrityError, ValueError, OverflowError)
RANK = {"IN_PROGRESS": 0, "REJECTED": 0, "COMPLETED": 1}


def _seconds(moment: datetime) -> int:
    return int(moment.timestamp())


async def insert(conn: AsyncConnection[TupleRow], records: Sequence[Record]) -> int:
    """The records' rows, in the caller's transaction; answers how many rows were new."""
    new = 0
    async with conn.cursor() as cur:
        for r in records:
            if isinstance(r, OrderRecord):
                o = r.order
                submitted = None if o.submitted_at is None else at(str(o.submitted_at * 1000))
                await cur.execute(
                    f"INSERT INTO orders ({ORDER_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT DO NOTHING",
                    (
                        o.crm_order_id, o.kind or "UNKNOWN", o.customer_id, o.account_id, o.msisdn, submitted,
                        o.credit_class, o.credit_limit_micros, o.deposit_micros,
                        Jsonb([list(p) for p in o.problems]), at(str(r.at_ms)),
                    ),
                )  # fmt: skip
                new += max(cur.rowcount, 0)
                await cur.execute(
                    "INSERT INTO order_states (crm_order_id, status, at) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                    (o.crm_order_id, o.status, at(str(r.at_ms))),
                )
                new += max(cur.rowcount, 0)
                if cur.rowcount == 0 and not await _same_decision(cur, o):
                    continue  # a second decision: the first one recorded stays the order's
                steps = [
                    (o.crm_order_id, i, s.step, s.outcome, list(s.reasons), at(str(s.at * 1000)))
                    for i, s in enumerate(o.steps)
                ]
                if steps:
                    await cur.executemany(
                        "INSERT INTO order_steps (crm_order_id, position, step, outcome, reasons, at) "
                        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                        steps,
                    )
            else:
                await cur.execute(
                    f"INSERT INTO line_changes ({LINE_COLUMNS}) VALUES ({', '.join(['%s'] * 12)}) "
                    "ON CONFLICT DO NOTHING",
                    (
                        r.change_id, r.msisdn, r.customer_id, r.account_id, r.state, r.plan_id, r.order_id, r.cause,
                        r.reason, at(str(r.at_ms)), r.customer_type, r.unit_id,
                    ),
                )  # fmt: skip
                new += max(cur.rowcount, 0)
    return new


async def _same_decision(cur: AsyncCursor[TupleRow], order: Order) -> bool:
    """Whether the order's decision recorded (one per order: IN_PROGRESS or REJECTED) is
    this record's; a COMPLETED record always is."""
    if order.status == "COMPLETED":
        return True
    await cur.execute(
        "SELECT status FROM order_states WHERE crm_order_id = %s AND status <> 'COMPLETED'", (order.crm_order_id,)
    )
    found = await cur.fetchone()
    if found is not None and found[0] != order.status:
        log.warning("a second decision of an order kept out", extra={"crm_order_id": order.crm_order_id})
        return False
    return True


class OrderStore:
    """The CRM's orders and lines' history in PostgreSQL."""

    outbox = keys.ORDER_ROWS  # the record outbox whose entries are these rows

    def __init__(self, pool: Pool, client: aioredis.Redis | None = None) -> None:
        self.pool = pool
        self.client = client  # Redis, where the relay's store drops what the rows answer

    async def committed(self, entries: Sequence[str]) -> None:
        """The relay committed these entries' rows: a rejected order's document (left in
        Redis when its run could not write the rows at once) goes, as nothing more happens
        to it; an order in progress keeps its document until the network acknowledges it."""
        if self.client is None:
            return
        rejected = []
        for text in entries:
            try:
                record = parse(text)
            except BadRecord:
                continue  # logged when its rows were written
            if isinstance(record, OrderRecord) and record.order.status == "REJECTED":
                rejected.append(keys.order(record.order.crm_order_id))
        if rejected:
            await self.client.delete(*rejected)

    async def write(self, records: Sequence[Record]) -> int:
        """The records' rows in one transaction of their own."""
        async with self.pool.connection() as conn:
            return await insert(conn, records)

    async def write_entries(self, entries: Sequence[str]) -> int:
        """Outbox entries' rows in one transaction of their own (an order run, at once)."""
        async with self.pool.connection() as conn:
            return await self.insert_entries(conn, entries)

    async def insert_entries(self, conn: AsyncConnection[TupleRow], entries: Sequence[str]) -> int:
        """The relay's batch of the outbox's entries, in its transaction; an entry that is
        not a record is logged and left out, and one whose row PostgreSQL refuses is set
        aside (``order_rows_refused``): neither must hold back the usage records relayed
        with it, nor every later entry."""
        records: list[tuple[str, Record]] = []
        for text in entries:
            try:
                records.append((text, parse(text)))
            except BadRecord as exc:
                metrics.CDRS_UNREADABLE.inc()
                log.error("unreadable order record skipped", extra={"error": str(exc)})
        if not records:
            return 0
        try:
            async with conn.transaction():  # a savepoint: a refused row leaves the round usable
                return await insert(conn, [r for _, r in records])
        except REFUSED:
            pass
        new = 0
        for text, record in records:  # one at a time, to find the refused ones
            try:
                async with conn.transaction():
                    new += await insert(conn, [record])
            except REFUSED as exc:
                await self._set_aside(conn, text, exc)
        return new

    async def _set_aside(self, conn: AsyncConnection[TupleRow], text: str, exc: Exception) -> None:
        metrics.ORDER_ROWS_REFUSED.inc()
        log.error("order record refused, set aside", extra={"error": type(exc).__name__})
        await conn.execute(
            "INSERT INTO order_rows_refused (entry_id, entry, error) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            (hashlib.sha256(text.encode()).hexdigest(), text, f"{type(exc).__name__}: {exc}"[:500]),
        )

    async def get(self, order_id: str) -> Order | None:
        found = await self._orders("o.crm_order_id = %s", (order_id,), 1)
        return found[0][1] if found else None

    async def of_customer(self, customer_id: str, after: int, size: int) -> tuple[list[Order], str]:
        """A page of the customer's orders in the order they were decided, after the
        position ``after`` (a page token: the last row's position), and the next token."""
        return await self._page("o.customer_id = %s AND o.seq > %s", (customer_id, after), size)

    async def search(self, kind: str, status: str, msisdn: str, after: int, size: int) -> tuple[list[Order], str]:
        """A page of every order (of a kind, in a status, on a line), in decision order."""
        where: list[str] = ["o.seq > %s"]
        params: list[object] = [after]
        for column, value in (("o.kind", kind), ("o.msisdn", msisdn)):
            if value:
                where.append(f"{column} = %s")
                params.append(value)
        if status:
            where.append(
                "(SELECT s.status FROM order_states s WHERE s.crm_order_id = o.crm_order_id "
                "ORDER BY s.status = 'COMPLETED' DESC, s.at DESC LIMIT 1) = %s"
            )
            params.append(status)
        return await self._page(" AND ".join(where), tuple(params), size)

    async def _page(self, where: str, params: tuple[object, ...], size: int) -> tuple[list[Order], str]:
        found = await self._orders(where, params, size + 1)
        page = found[:size]
        return [o for _, o in page], str(page[-1][0]) if len(found) > size else ""

    async def _orders(self, where: str, params: tuple[object, ...], limit: int) -> list[tuple[int, Order]]:
        async with self.pool.connection() as conn:
            rows = await (
                await conn.execute(
                    f"SELECT o.seq, {', '.join('o.' + c.strip() for c in ORDER_COLUMNS.split(','))} "
                    f"FROM orders o WHERE {where} ORDER BY o.seq LIMIT {int(limit)}",
                    params,
                )
            ).fetchall()
            ids = [str(r[1]) for r in rows]
            steps = await (
                await conn.execute(
                    "SELECT crm_order_id, step, outcome, reasons, at FROM order_steps "
                    "WHERE crm_order_id = ANY(%s) ORDER BY crm_order_id, position",
                    (ids,),
                )
            ).fetchall()
            states = await (
                await conn.execute("SELECT crm_order_id, status FROM order_states WHERE crm_order_id = ANY(%s)", (ids,))
            ).fetchall()
        steps_of: dict[str, list[Step]] = {}
        for order_id, step, outcome, reasons, moment in steps:
            steps_of.setdefault(str(order_id), []).append(Step(step, outcome, tuple(reasons), _seconds(moment)))
        status_of: dict[str, str] = {}
        for order_id, status in states:
            current = status_of.get(str(order_id))
            if current is None or RANK[str(status)] > RANK[current]:
                status_of[str(order_id)] = str(status)
        out = []
        for seq, oid, kind, customer, account, msisdn, submitted, cclass, limit_, deposit, problems, _d in rows:
            order = Order(
                crm_order_id=oid,
                status=status_of.get(oid, "IN_PROGRESS"),
                problems=tuple((str(f), str(m)) for f, m in problems),
                steps=tuple(steps_of.get(oid, ())),
                submitted_at=None if submitted is None else _seconds(submitted),
                customer_id=customer,
                account_id=account,
                msisdn=msisdn,
                credit_class=cclass,
                credit_limit_micros=limit_,
                deposit_micros=deposit,
                kind="" if kind == "UNKNOWN" else kind,
            )
            out.append((int(seq), order))
        return out

    async def history(self, msisdn: str, after: int, size: int) -> tuple[list[LineChange], str]:
        """A page of a line's history, oldest first, from the position ``after`` (a token:
        how many came before; a line's history is short)."""
        async with self.pool.connection() as conn:
            rows = await (
                await conn.execute(
                    f"SELECT {CHANGE_COLUMNS} FROM line_changes WHERE msisdn = %s ORDER BY at, seq OFFSET %s LIMIT %s",
                    (msisdn, after, size + 1),
                )
            ).fetchall()
        return [_change(row) for row in rows[:size]], str(after + size) if len(rows) > size else ""

    async def lines_of(self, customer_id: str, after: int, size: int) -> tuple[list[Line], str]:
        """A page of the customer's lines as their latest rows have them, in the order the
        customer got them, from the token ``after`` (the last one's first row), and the
        next token ("" at the end). A line is the customer's while its latest row names
        it: a terminated number given to another customer later is that one's."""
        latest = (
            f"SELECT DISTINCT ON (c.msisdn) {', '.join('c.' + n.strip() for n in CHANGE_COLUMNS.split(','))}, m.first "
            "FROM line_changes c JOIN (SELECT msisdn, min(seq) AS first FROM line_changes "
            "WHERE customer_id = %s GROUP BY msisdn) m USING (msisdn) ORDER BY c.msisdn, c.at DESC, c.seq DESC"
        )
        async with self.pool.connection() as conn:
            rows = await (
                await conn.execute(
                    f"SELECT * FROM ({latest}) l WHERE l.customer_id = %s AND l.first > %s ORDER BY l.first LIMIT %s",
                    (customer_id, customer_id, after, size + 1),
                )
            ).fetchall()
        lines = [_change(row[:-1]).to_line() for row in rows[:size]]
        return lines, str(rows[size - 1][-1]) if len(rows) > size else ""

    async def all_lines_of(self, customer_id: str) -> list[Line]:
        """All the customer's lines (``lines_of`` page by page)."""
        out: list[Line] = []
        after, token = 0, "0"
        while token:
            page, token = await self.lines_of(customer_id, after, 500)
            out += page
            after = int(token or 0)
        return out


def _change(row: Sequence[Any]) -> LineChange:
    m, c, a, state, plan, order, cause, reason, moment, customer_type, unit_id = row
    return LineChange(
        m, c, a, state, plan, order, cause, reason, int(moment.timestamp() * 1000), customer_type, unit_id
    )
