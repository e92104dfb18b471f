"""A corporate customer's organisation: a tree of units of any depth.

Individuals have no organisation; a corporate customer is a tree of units (company,
branches, departments). Each unit either pays for its lines itself (a billing account)
or through its parent; the company at the root always pays for itself. The tree is
stored as ``crm:unit:<id>`` hashes (customer, parent, name, pays) and the list
``crm:units:<customer>``, the root first; ``paying_unit`` is the pure rule billing
follows.

With ``records`` (the server always has them) each unit is written to PostgreSQL first,
with its audit entry, and a move is a new version of the unit there
(``customer_records.py``); the hashes here are the real-time copy billing and the
provisioning worker read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from charging.errors import InvalidRequest, NotFound
from provisioning import keys
from provisioning.customers import push_once

if TYPE_CHECKING:
    from provisioning.customer_records import CustomerRecords


@dataclass(frozen=True)
class OrgUnit:
    """A unit of a corporate customer: the company (the root), a branch, a department."""

    id: str
    customer_id: str
    parent: str
    name: str
    pays_itself: bool

    @classmethod
    def from_redis(cls, unit_id: str, customer_id: str, h: Mapping[str, str]) -> OrgUnit:
        return cls(unit_id, customer_id, h["parent"], h["name"], h["pays"] == "1")

    def to_redis(self) -> dict[str, str | int]:
        return {"customer": self.customer_id, "parent": self.parent, "name": self.name, "pays": int(self.pays_itself)}


def paying_unit(units: Mapping[str, OrgUnit], unit_id: str) -> str:
    """The unit that pays for ``unit_id``'s lines: itself, or the nearest ancestor that
    pays for itself (the root always does)."""
    seen = set()
    unit = units[unit_id]
    while not unit.pays_itself and unit.parent and unit.id not in seen:
        seen.add(unit.id)
        unit = units[unit.parent]
    return unit.id


def unit_path(units: Mapping[str, OrgUnit], unit_id: str) -> tuple[str, ...]:
    """The names of the units from the root down to ``unit_id``."""
    chain, at = [], units[unit_id]
    while True:
        chain.append(at.name)
        if not at.parent or at.parent not in units:
            break
        at = units[at.parent]
    return tuple(reversed(chain))


class Organisation:
    def __init__(self, client: aioredis.Redis, records: CustomerRecords | None = None) -> None:
        self.client = client
        self.records = records

    async def add_unit(self, customer_id: str, parent: str, name: str, pays_itself: bool, unit_id: str = "") -> OrgUnit:
        """Add a unit; the first unit of a customer is its root (no parent, pays itself).
        With ``unit_id`` (taken by an order beforehand) adding it again changes nothing."""
        if not name.strip() or len(name) > 128:
            raise InvalidRequest("name", "is required (at most 128 characters)")
        kind = await self.client.hget(keys.customer(customer_id), "kind")
        if kind is None:
            raise NotFound("no such customer")
        if kind != "CORPORATE":
            raise InvalidRequest("customer_id", "only corporate customers have an organisation")
        existing = await self.units(customer_id)
        if unit_id in existing:
            return existing[unit_id]
        if existing and parent not in existing:
            raise InvalidRequest("parent_id", "must be a unit of the same customer")
        unit_id = unit_id or str(await self.client.incr(keys.UNIT_SEQ))
        unit = OrgUnit(unit_id, customer_id, parent if existing else "", name, pays_itself or not existing)
        if self.records is not None:
            await self.records.organisation.add_unit(unit)  # the system of record first
        await self.client.hset(keys.unit(unit_id), mapping=unit.to_redis())  # type: ignore[arg-type]
        await push_once(self.client, keys.units(customer_id), unit_id)
        return unit

    async def move_unit(self, customer_id: str, unit_id: str, parent: str) -> OrgUnit:
        """Hang a unit under another unit of the same customer (not under itself or one of
        its own units; the company stays the root): recorded first, then Redis's copy."""
        if self.records is None:
            raise InvalidRequest("unit_id", "moving a unit needs the system of record")
        unit = await self.records.organisation.move_unit(customer_id, unit_id, parent)
        await self.client.hset(keys.unit(unit_id), "parent", unit.parent)
        return unit

    @staticmethod
    def forget_in(pipe: Pipeline, customer_id: str, unit_id: str) -> None:
        """Take back the root unit of a customer that will not be, in ``pipe``."""
        pipe.delete(keys.unit(unit_id), keys.units(customer_id))

    async def units(self, customer_id: str) -> dict[str, OrgUnit]:
        out = {}
        for raw in await self.client.lrange(keys.units(customer_id), 0, -1):
            unit_id = str(raw)
            h = {str(k): str(v) for k, v in (await self.client.hgetall(keys.unit(unit_id))).items()}
            out[unit_id] = OrgUnit.from_redis(unit_id, customer_id, h)
        return out

    async def root(self, customer_id: str) -> str:
        """The company's root unit ("" for an individual)."""
        first = await self.client.lindex(keys.units(customer_id), 0)
        return "" if first is None else str(first)
