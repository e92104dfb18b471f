"""Customers and their organisation: individuals have none; a corporate customer is a
tree of units of any depth (company, branches, departments). Each unit either pays for
its lines itself (a billing account) or through its parent; the company at the root
always pays for itself.

The tree is stored as ``crm:unit:<id>`` hashes (customer, parent, name, pays) and the
list ``crm:units:<customer>``; ``paying_unit`` is the pure rule billing follows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from charging.errors import InvalidRequest, NotFound

UNIT_SEQ = "crm:seq:unit"


async def push_once(client: aioredis.Redis, key: str, value: str) -> None:
    """Append ``value`` to the list unless it is in it already (a step run again)."""

    async def txn(pipe: Pipeline) -> None:
        if await pipe.lpos(key, value) is None:
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.rpush(key, value)

    await client.transaction(txn, key)


@dataclass(frozen=True)
class Unit:
    id: str
    customer_id: str
    parent: str
    name: str
    pays_itself: bool


def paying_unit(units: Mapping[str, Unit], unit_id: str) -> str:
    """The unit that pays for ``unit_id``'s lines: itself, or the nearest ancestor that
    pays for itself (the root always does)."""
    seen = set()
    unit = units[unit_id]
    while not unit.pays_itself and unit.parent and unit.id not in seen:
        seen.add(unit.id)
        unit = units[unit.parent]
    return unit.id


class Organisation:
    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    async def add_unit(self, customer_id: str, parent: str, name: str, pays_itself: bool, unit_id: str = "") -> Unit:
        """Add a unit; the first unit of a customer is its root (no parent, pays itself).
        With ``unit_id`` (taken by an order beforehand) adding it again changes nothing."""
        if not name.strip() or len(name) > 128:
            raise InvalidRequest("name", "is required (at most 128 characters)")
        kind = await self.client.hget(f"crm:customer:{customer_id}", "kind")
        if kind is None:
            raise NotFound("no such customer")
        if kind != "CORPORATE":
            raise InvalidRequest("customer_id", "only corporate customers have an organisation")
        existing = await self.units(customer_id)
        if unit_id in existing:
            return existing[unit_id]
        if existing and parent not in existing:
            raise InvalidRequest("parent_id", "must be a unit of the same customer")
        unit_id = unit_id or str(await self.client.incr(UNIT_SEQ))
        unit = Unit(unit_id, customer_id, parent if existing else "", name, pays_itself or not existing)
        await self.client.hset(
            f"crm:unit:{unit_id}",
            mapping={"customer": customer_id, "parent": unit.parent, "name": name, "pays": int(unit.pays_itself)},
        )
        await push_once(self.client, f"crm:units:{customer_id}", unit_id)
        return unit

    async def units(self, customer_id: str) -> dict[str, Unit]:
        out = {}
        for raw in await self.client.lrange(f"crm:units:{customer_id}", 0, -1):
            unit_id = str(raw)
            h: dict[Any, Any] = await self.client.hgetall(f"crm:unit:{unit_id}")
            out[unit_id] = Unit(unit_id, customer_id, str(h["parent"]), str(h["name"]), h["pays"] == "1")
        return out

    async def root(self, customer_id: str) -> str:
        first = await self.client.lindex(f"crm:units:{customer_id}", 0)
        return "" if first is None else str(first)
