"""Lines: a customer's numbers and the record of each.

A line is ``crm:line:<msisdn>`` (customer, charging account, plan, state, the order that
last changed it, customer type, unit; the termination reason once one is ordered) and
its number is in the customer's list ``crm:lines:<customer>``. A terminated number given
to another customer later keeps its place in the first customer's list, but its record
then names the new customer: a customer's lines are the numbers whose record names it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from provisioning import keys
from provisioning.customers import push_once


class Lines:
    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    async def get(self, msisdn: str) -> dict[str, str] | None:
        h = await self.client.hgetall(keys.line(msisdn))
        return {str(k): str(v) for k, v in h.items()} or None

    async def create(self, msisdn: str, fields: Mapping[str, Any]) -> None:
        """Store a new line and add it to its customer's lines; storing it again (an
        order run once more) changes nothing."""
        mapping: dict[Any, Any] = dict(fields)
        await self.client.hset(keys.line(msisdn), mapping=mapping)
        await push_once(self.client, keys.customer_lines(str(fields["customer_id"])), msisdn)

    async def count(self, customer_id: str) -> int:
        """How many numbers the customer has had."""
        return int(await self.client.llen(keys.customer_lines(customer_id)))

    @staticmethod
    def ordered_in(pipe: Pipeline, msisdn: str, order_id: str, reason: str) -> None:
        """Record on the line the order that changes it (and a termination's reason), in
        the transaction that decides the order."""
        pipe.hset(keys.line(msisdn), mapping={"order_id": order_id, "termination_reason": reason})

    async def update(self, msisdn: str, fields: Mapping[str, Any]) -> None:
        """What the network acknowledged: the line's state, and its plan when it changed."""
        mapping: dict[Any, Any] = dict(fields)
        await self.client.hset(keys.line(msisdn), mapping=mapping)
