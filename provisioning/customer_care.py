"""Customer care: interactions with customers, trouble tickets and dispute requests.

Interactions are notes about a contact with the customer, with references (URIs) to
recordings or attachments kept elsewhere. Trouble tickets concern the network or an
invoice, link to a line or an invoice, and move through a small state machine, each
change timestamped. A dispute is about an invoice (optionally one of its lines) and is
billing's dispute (``postpaid/payments.py``, one store): opened here on behalf of the
customer, it holds the amount out of dunning and ends in a credit note or a rejection,
and the CRM lists the customer's disputes from billing, in minor units.

Interactions and tickets are kept in PostgreSQL, the system of record (migration 0006):
immutable rows, a ticket's state being its latest change, each written in one
transaction with its audit entry. Notes, summaries and references are free text about a
person: sealed (``sealing.py``) before they reach a row. Ids come from the database's
sequences, which continue the series Redis counted before; the records Redis kept before
(JSON documents read by ``from_redis``) are moved once by ``care_legacy.py``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import redis.asyncio as aioredis
from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from charging import audit_trail
from charging.audit_trail import AuditEntry
from charging.database import Pool
from charging.errors import InvalidRequest, NotFound
from charging.security.identity import caller_name
from provisioning import keys
from provisioning.sealing import Sealer

TICKET_STATES = ("OPEN", "IN_PROGRESS", "RESOLVED", "CLOSED")
# state -> states it may move to
TICKET_MOVES = {
    "OPEN": ("IN_PROGRESS", "RESOLVED", "CLOSED"),
    "IN_PROGRESS": ("RESOLVED", "OPEN"),
    "RESOLVED": ("CLOSED", "OPEN"),
    "CLOSED": (),
}
TICKET_TOPICS = ("NETWORK", "INVOICE", "SERVICE", "OTHER")
CHANNELS = ("PHONE", "EMAIL", "SHOP", "CHAT", "LETTER")


@dataclass(frozen=True)
class Interaction:
    id: str
    channel: str
    note: str
    references: tuple[str, ...]
    at: int

    def to_redis(self, sealer: Sealer) -> str:
        return sealer.seal(json.dumps(asdict(self)), "care.interaction")

    @classmethod
    def from_redis(cls, text: str, sealer: Sealer) -> Interaction:
        doc = json.loads(sealer.open(text, "care.interaction"))
        return cls(str(doc["id"]), doc["channel"], doc["note"], tuple(doc["references"]), int(doc["at"]))


@dataclass(frozen=True)
class TicketChange:
    state: str
    at: int
    note: str


@dataclass(frozen=True)
class Ticket:
    id: str
    customer_id: str
    topic: str
    summary: str
    line: str
    invoice: str
    state: str
    history: tuple[TicketChange, ...]

    def moved(self, state: str, note: str, at_s: int) -> Ticket:
        return replace(self, state=state, history=(*self.history, TicketChange(state, at_s, note)))

    def to_redis(self, sealer: Sealer) -> str:
        return sealer.seal(json.dumps(asdict(self)), "care.ticket")

    @classmethod
    def from_redis(cls, text: str, sealer: Sealer) -> Ticket:
        doc: dict[str, Any] = json.loads(sealer.open(text, "care.ticket"))
        history = tuple(TicketChange(h["state"], int(h["at"]), h["note"]) for h in doc["history"])
        return cls(**{**doc, "history": history})


@dataclass(frozen=True)
class Dispute:
    """A dispute about an invoice as the CRM shows it. Since disputes are billing's
    (``postpaid/payments.py``: held out of dunning, ended by a credit note or a
    rejection), this is a view of the billing dispute, in minor units; ``amount_micros``
    is only set on records the CRM kept itself before (read, never written any more)."""

    id: str
    customer_id: str
    invoice: str
    line: str
    reason: str
    amount_micros: int
    state: str
    at: int
    amount_minor: int = 0
    billing_account: str = ""
    resolution: str = ""
    credit_note: str = ""

    @classmethod
    def of_billing(cls, customer_id: str, d: Mapping[str, Any]) -> Dispute:
        return cls(
            id=str(d["id"]),
            customer_id=customer_id,
            invoice=str(d["invoice"]),
            line=str(d.get("line", "")),
            reason=str(d["reason"]),
            amount_micros=0,
            state=str(d["status"]),
            at=int(d.get("opened", 0)),
            amount_minor=int(d["amount"]),
            billing_account=str(d.get("ba", "")),
            resolution=str(d.get("resolution", "")),
            credit_note=str(d.get("credit_note", "")),
        )

    def to_redis(self, sealer: Sealer) -> str:
        return sealer.seal(json.dumps(asdict(self)), "care.dispute")

    @classmethod
    def from_redis(cls, text: str, sealer: Sealer) -> Dispute:
        """A record the CRM kept itself before disputes were billing's."""
        return cls(**json.loads(sealer.open(text, "care.dispute")))


class BillingDisputes(Protocol):
    """Postpaid billing's disputes (``postpaid/payments.py`` ``Payments``)."""

    async def open_dispute(
        self, dispute_id: str, number: str, amount: int, reason: str, actor: str, line: str = "", customer: str = ""
    ) -> dict[str, Any]: ...

    async def disputes_of(self, customer_id: str) -> list[dict[str, Any]]: ...


async def _audit(
    conn: AsyncConnection[TupleRow], actor: str, action: str, customer_id: str, at_s: int, **details: Any
) -> None:
    """The audit entry of a care record, in the transaction that writes it."""
    entry = AuditEntry(uuid.uuid4().hex, instant(at_s), actor, action, customer_id, "", details)
    await audit_trail.insert(conn, [entry])


def _need(value: str, field: str, limit: int = 2000) -> str:
    if not value.strip():
        raise InvalidRequest(field, "is required")
    if len(value) > limit:
        raise InvalidRequest(field, f"at most {limit} characters")
    return value


def instant(at_s: int) -> datetime:
    return datetime.fromtimestamp(at_s, UTC)


def seconds(at: datetime) -> int:
    return int(at.timestamp())


class CustomerCare:
    """Interactions and tickets in PostgreSQL (``pool``); the customer is checked in
    Redis, where the CRM keeps it; disputes are billing's."""

    def __init__(
        self, client: aioredis.Redis, pool: Pool, sealer: Sealer, billing: BillingDisputes | None = None
    ) -> None:
        self.client = client
        self.pool = pool
        self.sealer = sealer
        self.billing = billing

    async def _customer_exists(self, customer_id: str) -> None:
        if not await self.client.exists(keys.customer(customer_id)):
            raise NotFound("no such customer")

    async def add_interaction(
        self, customer_id: str, channel: str, note: str, references: list[str], at_s: int, *, actor: str = ""
    ) -> Interaction:
        actor = actor or caller_name()
        await self._customer_exists(customer_id)
        if channel not in CHANNELS:
            raise InvalidRequest("channel", "must be one of " + ", ".join(CHANNELS))
        _need(note, "note")
        for i, ref in enumerate(references):
            if "://" not in ref:
                raise InvalidRequest(f"references[{i}]", "must be a URI of a recording or attachment")
        sealed_note = self.sealer.seal(note, "care.interaction")
        sealed_refs = self.sealer.seal(json.dumps(references), "care.interaction")
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(
                    "INSERT INTO interactions "
                    "(customer_id, channel, sealed_note, sealed_refs, occurred_at, recorded_by) "
                    "VALUES (%s, %s, %s, %s, %s, %s) RETURNING interaction_id",
                    (customer_id, channel, sealed_note, sealed_refs, instant(at_s), actor),
                )
            ).fetchone()
            assert row is not None
            interaction = Interaction(str(row[0]), channel, note, tuple(references), at_s)
            details = {"interaction": interaction.id, "channel": channel}
            await _audit(conn, actor, "interaction_added", customer_id, at_s, **details)
        return interaction

    async def interactions(self, customer_id: str) -> list[Interaction]:
        async with self.pool.connection() as conn:
            rows = await (
                await conn.execute(
                    "SELECT interaction_id, channel, sealed_note, sealed_refs, occurred_at FROM interactions "
                    "WHERE customer_id = %s ORDER BY interaction_id",
                    (customer_id,),
                )
            ).fetchall()
        return [
            Interaction(
                str(i),
                channel,
                self.sealer.open(note, "care.interaction"),
                tuple(json.loads(self.sealer.open(refs, "care.interaction"))),
                seconds(at),
            )
            for i, channel, note, refs, at in rows
        ]

    async def open_ticket(
        self,
        customer_id: str,
        topic: str,
        summary: str,
        at_s: int,
        *,
        line: str = "",
        invoice: str = "",
        actor: str = "",
    ) -> Ticket:
        actor = actor or caller_name()
        await self._customer_exists(customer_id)
        if topic not in TICKET_TOPICS:
            raise InvalidRequest("topic", "must be one of " + ", ".join(TICKET_TOPICS))
        _need(summary, "summary")
        if topic == "INVOICE" and not invoice:
            raise InvalidRequest("invoice", "is required for an invoice ticket")
        if topic == "NETWORK" and not line:
            raise InvalidRequest("line", "is required for a network ticket")
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(
                    "INSERT INTO tickets (customer_id, topic, line, invoice, sealed_summary, opened_at, opened_by) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING ticket_id",
                    (customer_id, topic, line, invoice, self.sealer.seal(summary, "care.ticket"), instant(at_s), actor),
                )
            ).fetchone()
            assert row is not None
            ticket_id = str(row[0])
            await self._change(conn, ticket_id, 1, TicketChange("OPEN", at_s, ""), actor)
            await _audit(conn, actor, "ticket_opened", customer_id, at_s, ticket=ticket_id, topic=topic)
        return Ticket(ticket_id, customer_id, topic, summary, line, invoice, "OPEN", (TicketChange("OPEN", at_s, ""),))

    async def move_ticket(self, ticket_id: str, state: str, note: str, at_s: int, *, actor: str = "") -> Ticket:
        actor = actor or caller_name()
        if not ticket_id.isdigit() or len(ticket_id) > 18:
            raise NotFound("no such ticket")
        async with self.pool.connection() as conn:
            # The ticket's row is locked: two moves of one ticket take their turns.
            locked = await (
                await conn.execute("SELECT 1 FROM tickets WHERE ticket_id = %s FOR UPDATE", (int(ticket_id),))
            ).fetchone()
            if locked is None:
                raise NotFound("no such ticket")
            ticket = (await self._read(conn, "t.ticket_id = %s", (int(ticket_id),)))[0]
            if state not in TICKET_MOVES.get(ticket.state, ()):
                raise InvalidRequest("state", f"a {ticket.state} ticket cannot become {state}")
            ticket = ticket.moved(state, note, at_s)
            await self._change(conn, ticket_id, len(ticket.history), ticket.history[-1], actor)
            await _audit(conn, actor, "ticket_moved", ticket.customer_id, at_s, ticket=ticket_id, state=state)
        return ticket

    async def tickets(self, customer_id: str) -> list[Ticket]:
        async with self.pool.connection() as conn:
            return await self._read(conn, "t.customer_id = %s", (customer_id,))

    async def _change(
        self, conn: AsyncConnection[TupleRow], ticket_id: str, number: int, change: TicketChange, actor: str
    ) -> None:
        await conn.execute(
            "INSERT INTO ticket_changes (ticket_id, change_no, state, sealed_note, occurred_at, changed_by) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (
                int(ticket_id),
                number,
                change.state,
                self.sealer.seal(change.note, "care.ticket"),
                instant(change.at),
                actor,
            ),
        )

    async def _read(self, conn: AsyncConnection[TupleRow], where: str, params: tuple[Any, ...]) -> list[Ticket]:
        rows = await (
            await conn.execute(
                "SELECT t.ticket_id, t.customer_id, t.topic, t.sealed_summary, t.line, t.invoice, "
                "c.state, c.occurred_at, c.sealed_note "
                f"FROM tickets t JOIN ticket_changes c USING (ticket_id) WHERE {where} "
                "ORDER BY t.ticket_id, c.change_no",
                params,
            )
        ).fetchall()
        out: list[Ticket] = []
        for ticket_id, customer_id, topic, summary, line, invoice, state, at, note in rows:
            change = TicketChange(state, seconds(at), self.sealer.open(note, "care.ticket"))
            if out and out[-1].id == str(ticket_id):
                out[-1] = replace(out[-1], state=state, history=(*out[-1].history, change))
            else:
                opened = self.sealer.open(summary, "care.ticket")
                out.append(Ticket(str(ticket_id), customer_id, topic, opened, line, invoice, state, (change,)))
        return out

    async def open_dispute(
        self,
        customer_id: str,
        invoice: str,
        amount_minor: int,
        reason: str,
        *,
        line: str = "",
        dispute_id: str = "",
        actor: str = "",
    ) -> Dispute:
        """Open the billing dispute on one of the customer's invoices (of one of its lines,
        if given): billing holds the amount out of dunning. Without an id one is allocated."""
        await self._customer_exists(customer_id)
        _need(reason, "reason")
        if not invoice:
            raise InvalidRequest(
                "invoice", "is required: a dispute is about an invoice (charges not invoiced yet: open a ticket)"
            )
        if amount_minor <= 0:
            raise InvalidRequest("amount_minor", "must be positive")
        if self.billing is None:
            raise NotFound("no such invoice")  # no billing here, so no invoices to dispute
        if not dispute_id:
            dispute_id = "crm-" + str(await self.client.incr(keys.DISPUTE_SEQ))
        d = await self.billing.open_dispute(
            dispute_id, invoice, amount_minor, reason, actor or "crm", line, customer=customer_id
        )
        return Dispute.of_billing(customer_id, d)

    async def disputes(self, customer_id: str) -> list[Dispute]:
        """The billing disputes about the customer's invoices, after any the CRM kept itself
        before disputes were billing's."""
        ids = await self.client.lrange(keys.disputes(customer_id), 0, -1)
        texts = [await self.client.get(keys.dispute(str(i))) for i in ids]
        earlier = [Dispute.from_redis(str(t), self.sealer) for t in texts if t is not None]
        if self.billing is None:
            return earlier
        return earlier + [Dispute.of_billing(customer_id, d) for d in await self.billing.disputes_of(customer_id)]


# The sealed columns of the care tables, by table and key: what a key rotation re-seals.
SEALED_COLUMNS: tuple[tuple[str, tuple[str, ...], tuple[str, ...], str], ...] = (
    ("interactions", ("interaction_id",), ("sealed_note", "sealed_refs"), "care.interaction"),
    ("tickets", ("ticket_id",), ("sealed_summary",), "care.ticket"),
    ("ticket_changes", ("ticket_id", "change_no"), ("sealed_note",), "care.ticket"),
)


async def reseal(pool: Pool, sealer: Sealer) -> dict[str, int]:
    """Seal again under the newest key every care value sealed under an older one (``charging
    rotate-data-key``); the text is the same, only its sealing changes. Answers the rows
    re-sealed per table. Running it again changes only what is still under an old key."""
    done: dict[str, int] = {}
    for table, key_columns, columns, kind in SEALED_COLUMNS:
        done[table] = 0
        current = sealer.current_prefix()
        stale = " OR ".join(f"NOT starts_with({c}, %s)" for c in columns)
        async with pool.connection() as conn:
            rows = await (
                await conn.execute(
                    f"SELECT {', '.join(key_columns + columns)} FROM {table} WHERE {stale}",
                    (current,) * len(columns),
                )
            ).fetchall()
            for row in rows:
                ids, values = row[: len(key_columns)], row[len(key_columns) :]
                sets = ", ".join(f"{c} = %s" for c in columns)
                match = " AND ".join(f"{c} = %s" for c in key_columns)
                resealed = tuple(sealer.seal(sealer.open(v, kind), kind) for v in values)
                await conn.execute(f"UPDATE {table} SET {sets} WHERE {match}", (*resealed, *ids))
            done[table] = len(rows)
    return done
