"""Customers: their records, the state they are in, finding them; and their organisation.

A customer is ``crm:customer:<id>`` (kind, created, address country and postal code,
credit terms, the identity document with its number masked, state) with its lines in
``crm:lines:<id>`` (numbers; each line's record is ``crm:line:<msisdn>``). Its state
follows its lines (``customer_state``): PENDING until a line is in service, ACTIVE while
one is, TERMINATED once all are terminated. Customers are indexed for listing by id in
the sorted sets ``crm:customers``, ``crm:customers:kind:<kind>`` and
``crm:customers:state:<state>`` (score = the numeric id, so a page resumes after the last
id seen); by line through the line's record, by identity document through the
screener's salted fingerprint (``screening.py``): raw document numbers are never stored.

Individuals have no organisation; a corporate customer is a tree of units of any depth
(company, branches, departments). Each unit either pays for its lines itself (a billing
account) or through its parent; the company at the root always pays for itself. The
tree is stored as ``crm:unit:<id>`` hashes (customer, parent, name, pays) and the list
``crm:units:<customer>``; ``paying_unit`` is the pure rule billing follows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from charging.errors import InvalidRequest, NotFound
from provisioning import keys
from provisioning.screening import Screener

KINDS = ("INDIVIDUAL", "CORPORATE")
STATES = ("PENDING", "ACTIVE", "TERMINATED")
IN_SERVICE = ("active", "barred_outgoing", "suspended")
DEFAULT_PAGE, MAX_PAGE = 50, 500
# A filtered listing reads at most this many pages' worth of customers per call.
SCAN_PAGES = 10


def customer_state(line_states: Iterable[str]) -> str:
    """PENDING until a line is in service (active, barred outgoing or suspended), ACTIVE
    while one is, TERMINATED once every line the customer had is terminated."""
    states = list(line_states)
    if any(s in IN_SERVICE for s in states):
        return "ACTIVE"
    if states and all(s == "terminated" for s in states):
        return "TERMINATED"
    return "PENDING"


def mask(number: str) -> str:
    """What is kept and shown of an identity document number: its last two characters."""
    return "***" + number[-2:]


def page_size(requested: int) -> int:
    """0 asks for the default page size; more than the maximum gets the maximum."""
    return DEFAULT_PAGE if requested <= 0 else min(requested, MAX_PAGE)


def page_start(token: str) -> int:
    """Where a page starts: after a customer id, or at a position in a customer's list."""
    if not token:
        return 0
    if not token.isdigit() or len(token) > 18:
        raise InvalidRequest("page_token", "is not a token from a previous page")
    return int(token)


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


def unit_path(units: Mapping[str, Unit], unit_id: str) -> tuple[str, ...]:
    """The names of the units from the root down to ``unit_id``."""
    chain, at = [], units[unit_id]
    while True:
        chain.append(at.name)
        if not at.parent or at.parent not in units:
            break
        at = units[at.parent]
    return tuple(reversed(chain))


class Organisation:
    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    async def add_unit(self, customer_id: str, parent: str, name: str, pays_itself: bool, unit_id: str = "") -> Unit:
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
        unit = Unit(unit_id, customer_id, parent if existing else "", name, pays_itself or not existing)
        await self.client.hset(
            keys.unit(unit_id),
            mapping={"customer": customer_id, "parent": unit.parent, "name": name, "pays": int(unit.pays_itself)},
        )
        await push_once(self.client, keys.units(customer_id), unit_id)
        return unit

    @staticmethod
    def forget_in(pipe: Pipeline, customer_id: str, unit_id: str) -> None:
        """Take back the root unit of a customer that will not be, in ``pipe``."""
        pipe.delete(keys.unit(unit_id), keys.units(customer_id))

    async def units(self, customer_id: str) -> dict[str, Unit]:
        out = {}
        for raw in await self.client.lrange(keys.units(customer_id), 0, -1):
            unit_id = str(raw)
            h: dict[Any, Any] = await self.client.hgetall(keys.unit(unit_id))
            out[unit_id] = Unit(unit_id, customer_id, str(h["parent"]), str(h["name"]), h["pays"] == "1")
        return out

    async def root(self, customer_id: str) -> str:
        first = await self.client.lindex(keys.units(customer_id), 0)
        return "" if first is None else str(first)


class Customers:
    def __init__(self, client: aioredis.Redis, screener: Screener) -> None:
        self.client = client
        self.screener = screener

    async def create(self, customer_id: str, fields: Mapping[str, Any]) -> None:
        """Store and index a new customer (PENDING); storing it again changes nothing."""
        score = {customer_id: int(customer_id)}
        record: dict[Any, Any] = {**fields, "state": "PENDING"}
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(keys.customer(customer_id), mapping=record)
        pipe.zadd(keys.CUSTOMERS, score)
        pipe.zadd(keys.kind_index(str(fields["kind"])), score)
        pipe.zadd(keys.state_index("PENDING"), score)
        await pipe.execute()

    @staticmethod
    def forget_in(pipe: Pipeline, customer_id: str) -> None:
        """Take back a customer that will not be (its order was refused), in ``pipe``."""
        pipe.delete(keys.customer(customer_id), keys.customer_lines(customer_id))
        for index in (keys.CUSTOMERS, *map(keys.kind_index, KINDS), *map(keys.state_index, STATES)):
            pipe.zrem(index, customer_id)

    async def refresh_state(self, customer_id: str) -> str:
        """Set the customer's state from its lines' states now; returns it."""
        msisdns = [str(m) for m in await self.client.lrange(keys.customer_lines(customer_id), 0, -1)]

        async def txn(pipe: Pipeline) -> str:
            old = await pipe.hget(keys.customer(customer_id), "state")
            if old is None:
                return ""
            states = []
            for msisdn in msisdns:
                holder, state = await pipe.hmget(keys.line(msisdn), ["customer_id", "state"])
                # a number given to someone else was terminated here first
                states.append(str(state) if holder == customer_id else "terminated")
            new = customer_state(states)
            if new != old:
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.hset(keys.customer(customer_id), "state", new)
                pipe.zrem(keys.state_index(str(old)), customer_id)
                pipe.zadd(keys.state_index(new), {customer_id: int(customer_id)})
            return new

        watched = [keys.customer(customer_id), *map(keys.line, msisdns)]
        state: str = await self.client.transaction(txn, *watched, value_from_callable=True)
        return state

    async def get(self, customer_id: str) -> dict[str, str] | None:
        h = await self.client.hgetall(keys.customer(customer_id))
        return {"id": customer_id, **{str(k): str(v) for k, v in h.items()}} if h else None

    async def search(
        self,
        *,
        kind: str = "",
        state: str = "",
        msisdn: str = "",
        document: tuple[str, str, str] | None = None,
        after: int = 0,
        size: int = DEFAULT_PAGE,
    ) -> tuple[list[dict[str, str]], str]:
        """Customers by kind, state, the number of one of their lines and their identity
        document (type, issuing country, number), in id order after ``after``; returns a
        page and the token of the next one ("" at the end)."""
        if msisdn or document is not None:
            found: set[str] | None = None
            if msisdn:
                holder = await self.client.hget(keys.line(msisdn), "customer_id")
                found = {str(holder)} if holder is not None else set()
            if document is not None:
                registered = await self.screener.customer_of(self.screener.document_print(*document))
                by_document = {registered} if registered is not None else set()
                found = by_document if found is None else found & by_document
            assert found is not None
            page = [c for c in [await self.get(i) for i in sorted(found, key=int) if int(i) > after] if c]
            return [c for c in page if _matches(c, kind, state)], ""
        index = keys.state_index(state) if state else keys.kind_index(kind) if kind else keys.CUSTOMERS
        customers: list[dict[str, str]] = []
        cursor, scanned = after, 0
        while len(customers) < size and scanned < SCAN_PAGES * size:
            ids = [str(i) for i in await self.client.zrangebyscore(index, f"({cursor}", "+inf", start=0, num=size)]
            if not ids:
                return customers, ""
            pipe = self.client.pipeline(transaction=False)
            for customer_id in ids:
                pipe.hgetall(keys.customer(customer_id))
            for customer_id, h in zip(ids, await pipe.execute(), strict=True):
                cursor, scanned = int(customer_id), scanned + 1
                customer = {"id": customer_id, **{str(k): str(v) for k, v in h.items()}}
                if h and _matches(customer, kind, state):
                    customers.append(customer)
                    if len(customers) == size:
                        break
        more = await self.client.zcount(index, f"({cursor}", "+inf")
        return customers, str(cursor) if more else ""

    async def lines(self, customer_id: str, start: int, size: int) -> tuple[list[tuple[str, dict[str, str]]], str]:
        """A page of the customer's lines (number, record), from position ``start``."""
        msisdns = [str(m) for m in await self.client.lrange(keys.customer_lines(customer_id), start, start + size - 1)]
        lines = []
        for msisdn in msisdns:
            h = {str(k): str(v) for k, v in (await self.client.hgetall(keys.line(msisdn))).items()}
            if h.get("customer_id") == customer_id:  # not a number since given to someone else
                lines.append((msisdn, h))
        end = start + len(msisdns)
        return lines, str(end) if await self.client.llen(keys.customer_lines(customer_id)) > end else ""


def _matches(customer: Mapping[str, str], kind: str, state: str) -> bool:
    return (not kind or customer.get("kind") == kind) and (not state or customer.get("state") == state)
