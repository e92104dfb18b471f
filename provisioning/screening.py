"""Identity verification and fraud screening of applications, with recorded decisions.

Checks, each giving a reason when it refuses:
  * the identity document is on the blacklist (fraud or bad debt);
  * the address is on the blacklist;
  * the same identity already has an active customer (a second one is refused, the
    CRM adds lines to the existing customer instead);
  * velocity: too many applications with the same document or at the same address
    within a day (each application counted once, however often it is screened).
(Expired documents are refused by the application checks, ``applications.py``.)

Identity numbers and addresses are personal data: Redis keeps only salted SHA-256
fingerprints of them, so the screening works without storing them in clear. Every
decision is a step of its order (passed or refused, with its reasons and time): a row of
``order_steps`` in PostgreSQL (``order_records.py``); Redis keeps no list of decisions.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from provisioning import keys

DAY_S = 86_400


def fingerprint(salt: str, *parts: str) -> str:
    """A stable, non-reversible key for personal data (document numbers, addresses)."""
    text = "\x1f".join(p.strip().upper() for p in parts)
    return hashlib.sha256((salt + "\x1e" + text).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Screening:
    approved: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Limits:
    per_document_per_day: int = 3
    per_address_per_day: int = 5


class Screener:
    def __init__(self, client: aioredis.Redis, salt: str, limits: Limits = Limits()) -> None:
        self.client = client
        self.salt = salt
        self.limits = limits

    def document_print(self, doc_type: str, country: str, number: str) -> str:
        return fingerprint(self.salt, "doc", doc_type, country, number)

    def address_print(self, country: str, postal_code: str, street: str) -> str:
        return fingerprint(self.salt, "addr", country, postal_code.replace(" ", ""), street)

    async def blacklist(self, print_: str, reason: str) -> None:
        await self.client.hset(keys.BLACKLIST, print_, reason)

    async def screen(self, application_id: str, document: str, address: str, now_s: int) -> Screening:
        """Screen one application (its order records the decision as a step)."""
        day = now_s // DAY_S
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(keys.BLACKLIST, document)
        pipe.hget(keys.BLACKLIST, address)
        pipe.get(keys.identity(document))
        for print_ in (document, address):
            pipe.sadd(keys.velocity(print_, day), application_id)
            pipe.expire(keys.velocity(print_, day), 2 * DAY_S)
            pipe.scard(keys.velocity(print_, day))
        doc_listed, addr_listed, existing, _, _, doc_count, _, _, addr_count = await pipe.execute()
        reasons = []
        if doc_listed:
            reasons.append(f"identity document blacklisted ({doc_listed})")
        if addr_listed:
            reasons.append(f"address blacklisted ({addr_listed})")
        if existing:
            reasons.append("this identity already has an active customer")
        if int(doc_count) > self.limits.per_document_per_day:
            reasons.append(f"more than {self.limits.per_document_per_day} applications with this document today")
        if int(addr_count) > self.limits.per_address_per_day:
            reasons.append(f"more than {self.limits.per_address_per_day} applications at this address today")
        # the decision is recorded by the order as its screening step (a row)
        return Screening(not reasons, tuple(reasons) or ("identity and fraud checks passed",))

    async def register(self, document: str, customer_id: str) -> bool:
        """Claim the identity for a new customer; False when another customer has it.
        The same customer may claim it again (an interrupted order run once more)."""
        if await self.client.set(keys.identity(document), customer_id, nx=True):
            return True
        return bool(await self.client.get(keys.identity(document)) == customer_id)

    @staticmethod
    def unregister_in(pipe: Pipeline, document: str) -> None:
        """Take back a registration (its order was refused), in ``pipe``."""
        pipe.delete(keys.identity(document))

    async def customer_of(self, document: str) -> str | None:
        """The customer registered with this identity document, if any."""
        found = await self.client.get(keys.identity(document))
        return None if found is None else str(found)
