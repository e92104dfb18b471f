"""Customer care: interactions with customers, trouble tickets and dispute requests.

Interactions are notes about a contact with the customer, with references (URIs) to
recordings or attachments kept elsewhere. Trouble tickets concern the network or an
invoice, link to a line or an invoice, and move through a small state machine, each
change timestamped. A dispute is about an invoice (optionally one of its lines) and is
billing's dispute (``postpaid/payments.py``, one store): opened here on behalf of the
customer, it holds the amount out of dunning and ends in a credit note or a rejection,
and the CRM lists the customer's disputes from billing, in minor units.

Everything else is stored per customer in Redis as JSON documents (one record type each,
written and read by its ``to_redis``/``from_redis``), sealed whole (``sealing.py``):
notes, summaries and reasons are free text about a person. Ids come from counters.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

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


def _need(value: str, field: str, limit: int = 2000) -> str:
    if not value.strip():
        raise InvalidRequest(field, "is required")
    if len(value) > limit:
        raise InvalidRequest(field, f"at most {limit} characters")
    return value


class CustomerCare:
    def __init__(self, client: aioredis.Redis, sealer: Sealer, billing: BillingDisputes | None = None) -> None:
        self.client = client
        self.sealer = sealer
        self.billing = billing

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
