"""Lines: a customer's numbers and the record of each.

A line is ``crm:line:<msisdn>`` (customer, charging account, plan, state, the order that
last changed it, customer type, unit; the termination reason once one is ordered) and
its number is in the customer's list ``crm:lines:<customer>``. A terminated number given
to another customer later keeps its place in the first customer's list, but its record
then names the new customer: a customer's lines are the numbers whose record names it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from provisioning import keys
from provisioning.customers import push_once
from provisioning.lifecycle import LineState


@dataclass(frozen=True)
class Line:
    msisdn: str
    customer_id: str
    account_id: str
    plan_id: str
    state: LineState
    order_id: str = ""
    customer_type: str = "MOBILE_PREPAID"
    unit_id: str = ""
    # set by a TERMINATE order, read when the network acknowledges it
    termination_reason: str = ""
    # how many changes (of state or plan) the network acknowledged: a history row's number
    changes: int = 0

    @classmethod
    def from_redis(cls, msisdn: str, h: Mapping[str, str]) -> Line:
        return cls(
            msisdn=msisdn,
            customer_id=h["customer_id"],
            account_id=h["account_id"],
            plan_id=h["plan_id"],
            state=LineState(h["state"]),
            order_id=h.get("order_id", ""),
            customer_type=h.get("customer_type", "MOBILE_PREPAID"),
            unit_id=h.get("unit_id", ""),
            termination_reason=h.get("termination_reason", ""),
            changes=int(h.get("changes", "0")),
        )

    def to_redis(self) -> dict[str, str]:
        """The line's fields (the number is the key); a termination reason once ordered."""
        h = {
            "customer_id": self.customer_id,
            "account_id": self.account_id,
            "plan_id": self.plan_id,
            "state": self.state.value,
            "order_id": self.order_id,
            "customer_type": self.customer_type,
            "unit_id": self.unit_id,
        }
        if self.termination_reason:
            h["termination_reason"] = self.termination_reason
        if self.changes:
            h["changes"] = str(self.changes)
        return h


class Lines:
    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    async def get(self, msisdn: str) -> Line | None:
        h = await self.client.hgetall(keys.line(msisdn))
        return Line.from_redis(msisdn, {str(k): str(v) for k, v in h.items()}) if h else None

    async def create(self, line: Line) -> None:
        """Store a new line and add it to its customer's lines; storing it again (an
        order run once more) changes nothing."""
        mapping: dict[Any, Any] = line.to_redis()
        await self.client.hset(keys.line(line.msisdn), mapping=mapping)
        await push_once(self.client, keys.customer_lines(line.customer_id), line.msisdn)

    async def count(self, customer_id: str) -> int:
        """How many numbers the customer has had."""
        return int(await self.client.llen(keys.customer_lines(customer_id)))

    @staticmethod
    def ordered_in(pipe: Pipeline, msisdn: str, order_id: str, reason: str) -> None:
        """Record on the line the order that changes it (and a termination's reason), in
        the transaction that decides the order."""
        pipe.hset(keys.line(msisdn), mapping={"order_id": order_id, "termination_reason": reason})

    async def acknowledged(
        self, msisdn: str, state: LineState, plan_id: str | None = None, *, changed: bool = False
    ) -> None:
        """What the network acknowledged: the line's state, and its plan when it changed;
        ``changed``: a change of its history (counted, in the same transaction)."""
        mapping: dict[Any, Any] = {"state": state.value}
        if plan_id is not None:
            mapping["plan_id"] = plan_id
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(keys.line(msisdn), mapping=mapping)
            if changed:
                pipe.hincrby(keys.line(msisdn), "changes", 1)
            await pipe.execute()

    async def page(self, customer_id: str, start: int, size: int) -> tuple[list[Line], str]:
        """A page of the customer's lines from position ``start`` in its list, and where
        the next page starts ("" at the end)."""
        key = keys.customer_lines(customer_id)
        msisdns = [str(m) for m in await self.client.lrange(key, start, start + size - 1)]
        end = start + len(msisdns)
        return await self._held(customer_id, msisdns), str(end) if await self.client.llen(key) > end else ""

    async def of_customer(self, customer_id: str) -> list[Line]:
        """All the customer's lines."""
        msisdns = [str(m) for m in await self.client.lrange(keys.customer_lines(customer_id), 0, -1)]
        return await self._held(customer_id, msisdns)

    async def _held(self, customer_id: str, msisdns: list[str]) -> list[Line]:
        lines = [await self.get(msisdn) for msisdn in msisdns]
        # not a number since given to someone else
        return [line for line in lines if line is not None and line.customer_id == customer_id]
