"""Customer care: interactions with customers, trouble tickets and dispute requests.

Interactions are notes about a contact with the customer, with references (URIs) to
recordings or attachments kept elsewhere. Trouble tickets concern the network or an
invoice, link to a line or an invoice, and move through a small state machine, each
change timestamped. Disputes are requests about an invoice or a line's charges; their
financial handling belongs to postpaid billing, here they are recorded and tracked.

Everything is stored per customer in Redis as JSON documents (one record type each,
written and read by its ``to_redis``/``from_redis``), sealed whole (``sealing.py``):
notes, summaries and reasons are free text about a person. Ids come from counters.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

import redis.asyncio as aioredis

from charging.errors import InvalidRequest, NotFound
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
    id: str
    customer_id: str
    invoice: str
    line: str
    reason: str
    amount_micros: int
    state: str
    at: int

    def to_redis(self, sealer: Sealer) -> str:
        return sealer.seal(json.dumps(asdict(self)), "care.dispute")

    @classmethod
    def from_redis(cls, text: str, sealer: Sealer) -> Dispute:
        return cls(**json.loads(sealer.open(text, "care.dispute")))


def _need(value: str, field: str, limit: int = 2000) -> str:
    if not value.strip():
        raise InvalidRequest(field, "is required")
    if len(value) > limit:
        raise InvalidRequest(field, f"at most {limit} characters")
    return value


class CustomerCare:
    def __init__(self, client: aioredis.Redis, sealer: Sealer) -> None:
        self.client = client
        self.sealer = sealer

    async def _customer_exists(self, customer_id: str) -> None:
        if not await self.client.exists(keys.customer(customer_id)):
            raise NotFound("no such customer")

    async def add_interaction(
        self, customer_id: str, channel: str, note: str, references: list[str], at_s: int
    ) -> Interaction:
        await self._customer_exists(customer_id)
        if channel not in CHANNELS:
            raise InvalidRequest("channel", "must be one of " + ", ".join(CHANNELS))
        _need(note, "note")
        for i, ref in enumerate(references):
            if "://" not in ref:
                raise InvalidRequest(f"references[{i}]", "must be a URI of a recording or attachment")
        interaction_id = str(await self.client.incr(keys.INTERACTION_SEQ))
        interaction = Interaction(interaction_id, channel, note, tuple(references), at_s)
        await self.client.rpush(keys.interactions(customer_id), interaction.to_redis(self.sealer))
        return interaction

    async def interactions(self, customer_id: str) -> list[Interaction]:
        return [
            Interaction.from_redis(str(x), self.sealer)
            for x in await self.client.lrange(keys.interactions(customer_id), 0, -1)
        ]

    async def open_ticket(
        self, customer_id: str, topic: str, summary: str, at_s: int, *, line: str = "", invoice: str = ""
    ) -> Ticket:
        await self._customer_exists(customer_id)
        if topic not in TICKET_TOPICS:
            raise InvalidRequest("topic", "must be one of " + ", ".join(TICKET_TOPICS))
        _need(summary, "summary")
        if topic == "INVOICE" and not invoice:
            raise InvalidRequest("invoice", "is required for an invoice ticket")
        if topic == "NETWORK" and not line:
            raise InvalidRequest("line", "is required for a network ticket")
        ticket_id = str(await self.client.incr(keys.TICKET_SEQ))
        opened = TicketChange("OPEN", at_s, "")
        ticket = Ticket(ticket_id, customer_id, topic, summary, line, invoice, "OPEN", (opened,))
        await self.client.set(keys.ticket(ticket_id), ticket.to_redis(self.sealer))
        await self.client.rpush(keys.tickets(customer_id), ticket_id)
        return ticket

    async def move_ticket(self, ticket_id: str, state: str, note: str, at_s: int) -> Ticket:
        text = await self.client.get(keys.ticket(ticket_id))
        if text is None:
            raise NotFound("no such ticket")
        ticket = Ticket.from_redis(str(text), self.sealer)
        if state not in TICKET_MOVES.get(ticket.state, ()):
            raise InvalidRequest("state", f"a {ticket.state} ticket cannot become {state}")
        ticket = ticket.moved(state, note, at_s)
        await self.client.set(keys.ticket(ticket_id), ticket.to_redis(self.sealer))
        return ticket

    async def tickets(self, customer_id: str) -> list[Ticket]:
        ids = await self.client.lrange(keys.tickets(customer_id), 0, -1)
        texts = [await self.client.get(keys.ticket(str(i))) for i in ids]
        return [Ticket.from_redis(str(t), self.sealer) for t in texts if t is not None]

    async def open_dispute(
        self, customer_id: str, reason: str, amount_micros: int, at_s: int, *, invoice: str = "", line: str = ""
    ) -> Dispute:
        """Record a dispute; billing holds the disputed amount out of dunning (postpaid)."""
        await self._customer_exists(customer_id)
        _need(reason, "reason")
        if not invoice and not line:
            raise InvalidRequest("invoice", "a dispute concerns an invoice or a line")
        if amount_micros <= 0:
            raise InvalidRequest("amount_micros", "must be positive")
        dispute_id = str(await self.client.incr(keys.DISPUTE_SEQ))
        dispute = Dispute(dispute_id, customer_id, invoice, line, reason, amount_micros, "OPEN", at_s)
        await self.client.set(keys.dispute(dispute_id), dispute.to_redis(self.sealer))
        await self.client.rpush(keys.disputes(customer_id), dispute_id)
        return dispute

    async def disputes(self, customer_id: str) -> list[Dispute]:
        ids = await self.client.lrange(keys.disputes(customer_id), 0, -1)
        texts = [await self.client.get(keys.dispute(str(i))) for i in ids]
        return [Dispute.from_redis(str(t), self.sealer) for t in texts if t is not None]
