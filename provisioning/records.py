"""CRM side records: customer interactions, trouble tickets and dispute requests.

Interactions are notes about a contact with the customer, with references (URIs) to
recordings or attachments kept elsewhere. Trouble tickets concern the network or an
invoice, link to a line or an invoice, and move through a small state machine, each
change timestamped. Disputes are requests about an invoice or a line's charges; their
financial handling belongs to postpaid billing, here they are recorded and tracked.

Everything is stored per customer in Redis as JSON documents; ids come from counters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from charging.errors import InvalidRequest, NotFound
from provisioning import keys

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


def _need(value: str, field: str, limit: int = 2000) -> str:
    if not value.strip():
        raise InvalidRequest(field, "is required")
    if len(value) > limit:
        raise InvalidRequest(field, f"at most {limit} characters")
    return value


@dataclass
class Records:
    client: aioredis.Redis

    async def _customer_exists(self, customer_id: str) -> None:
        if not await self.client.exists(keys.customer(customer_id)):
            raise NotFound("no such customer")

    async def add_interaction(
        self, customer_id: str, channel: str, note: str, references: list[str], at_s: int
    ) -> dict[str, Any]:
        await self._customer_exists(customer_id)
        if channel not in CHANNELS:
            raise InvalidRequest("channel", "must be one of " + ", ".join(CHANNELS))
        _need(note, "note")
        for i, ref in enumerate(references):
            if "://" not in ref:
                raise InvalidRequest(f"references[{i}]", "must be a URI of a recording or attachment")
        interaction_id = str(await self.client.incr(keys.INTERACTION_SEQ))
        doc = {"id": interaction_id, "channel": channel, "note": note, "references": references, "at": at_s}
        await self.client.rpush(keys.interactions(customer_id), json.dumps(doc))
        return doc

    async def interactions(self, customer_id: str) -> list[dict[str, Any]]:
        return [json.loads(x) for x in await self.client.lrange(keys.interactions(customer_id), 0, -1)]

    async def open_ticket(
        self, customer_id: str, topic: str, summary: str, at_s: int, *, line: str = "", invoice: str = ""
    ) -> dict[str, Any]:
        await self._customer_exists(customer_id)
        if topic not in TICKET_TOPICS:
            raise InvalidRequest("topic", "must be one of " + ", ".join(TICKET_TOPICS))
        _need(summary, "summary")
        if topic == "INVOICE" and not invoice:
            raise InvalidRequest("invoice", "is required for an invoice ticket")
        if topic == "NETWORK" and not line:
            raise InvalidRequest("line", "is required for a network ticket")
        ticket_id = str(await self.client.incr(keys.TICKET_SEQ))
        doc = {
            "id": ticket_id,
            "customer_id": customer_id,
            "topic": topic,
            "summary": summary,
            "line": line,
            "invoice": invoice,
            "state": "OPEN",
            "history": [{"state": "OPEN", "at": at_s, "note": ""}],
        }
        await self.client.set(keys.ticket(ticket_id), json.dumps(doc))
        await self.client.rpush(keys.tickets(customer_id), ticket_id)
        return doc

    async def move_ticket(self, ticket_id: str, state: str, note: str, at_s: int) -> dict[str, Any]:
        text = await self.client.get(keys.ticket(ticket_id))
        if text is None:
            raise NotFound("no such ticket")
        doc: dict[str, Any] = json.loads(text)
        if state not in TICKET_MOVES.get(doc["state"], ()):
            raise InvalidRequest("state", f"a {doc['state']} ticket cannot become {state}")
        doc["state"] = state
        doc["history"].append({"state": state, "at": at_s, "note": note})
        await self.client.set(keys.ticket(ticket_id), json.dumps(doc))
        return doc

    async def tickets(self, customer_id: str) -> list[dict[str, Any]]:
        ids = await self.client.lrange(keys.tickets(customer_id), 0, -1)
        texts = [await self.client.get(keys.ticket(str(i))) for i in ids]
        return [json.loads(t) for t in texts if t is not None]

    async def open_dispute(
        self, customer_id: str, reason: str, amount_micros: int, at_s: int, *, invoice: str = "", line: str = ""
    ) -> dict[str, Any]:
        """Record a dispute; billing holds the disputed amount out of dunning (postpaid)."""
        await self._customer_exists(customer_id)
        _need(reason, "reason")
        if not invoice and not line:
            raise InvalidRequest("invoice", "a dispute concerns an invoice or a line")
        if amount_micros <= 0:
            raise InvalidRequest("amount_micros", "must be positive")
        dispute_id = str(await self.client.incr(keys.DISPUTE_SEQ))
        doc = {
            "id": dispute_id,
            "customer_id": customer_id,
            "invoice": invoice,
            "line": line,
            "reason": reason,
            "amount_micros": amount_micros,
            "state": "OPEN",
            "at": at_s,
        }
        await self.client.set(keys.dispute(dispute_id), json.dumps(doc))
        await self.client.rpush(keys.disputes(customer_id), dispute_id)
        return doc

    async def disputes(self, customer_id: str) -> list[dict[str, Any]]:
        ids = await self.client.lrange(keys.disputes(customer_id), 0, -1)
        texts = [await self.client.get(keys.dispute(str(i))) for i in ids]
        return [json.loads(t) for t in texts if t is not None]
