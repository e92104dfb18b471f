"""Customers: their records, the state they are in, finding them.

A customer is ``crm:customer:<id>`` (kind, created, name and postal address,
credit terms, the identity document with its number masked, state) with its lines in
``crm:lines:<id>`` (numbers; each line's record is ``crm:line:<msisdn>``). Its state
follows its lines (``customer_state``): PENDING until a line is in service, ACTIVE while
one is, TERMINATED once all are terminated. Customers are indexed for listing by id in
the sorted sets ``crm:customers``, ``crm:customers:kind:<kind>`` and
``crm:customers:state:<state>`` (score = the numeric id, so a page resumes after the last
id seen); by line through the line's record, by identity document through the
screener's salted fingerprint (``screening.py``): raw document numbers are never stored;
by the words of their name through a keyed blind index (``names.py``).
The personal fields (``PERSONAL``: postal code, masked document number, email) are
sealed (``sealing.py``) in the hash.
A corporate customer's units are in ``organisation.py``, the lines in ``lines.py``.

With ``records`` (the server always has them), PostgreSQL is the system of record
(``customer_records.py``): a customer is written there first, with its audit entry, and
each change of its state or name is a new version there; the hash and the indexes here
are the real-time copy the provisioning worker, the screening and the search read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from charging.errors import InvalidRequest, NotFound
from provisioning import keys
from provisioning.credit import CreditDecision
from provisioning.names import MAX_WORDS, NameIndex, matches, words
from provisioning.screening import Screener
from provisioning.sealing import Sealer

if TYPE_CHECKING:
    from provisioning.customer_records import CustomerRecords

KINDS = ("INDIVIDUAL", "CORPORATE")
STATES = ("PENDING", "ACTIVE", "TERMINATED")
IN_SERVICE = ("active", "barred_outgoing", "suspended")
DEFAULT_PAGE, MAX_PAGE = 50, 500
# A filtered listing reads at most this many pages' worth of customers per call.
SCAN_PAGES = 10
# Fields of a customer's hash that are sealed: personal data.
PERSONAL = ("name", "street", "city", "postal_code", "document_number", "email")


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
class Customer:
    """A customer as stored: the address and identity document kept to check offers of
    further lines against (the document number masked), the state, the email address
    invoices go to and, for a postpaid customer, the credit terms decided."""

    id: str
    kind: str
    created: int
    state: str = "PENDING"
    # The name and postal address invoices and letters go to: the person's given and
    # family name, or the company's name.
    name: str = ""
    street: str = ""
    city: str = ""
    country: str = ""
    postal_code: str = ""
    document_type: str = ""
    document_country: str = ""
    document_number: str = ""
    email: str = ""
    credit: CreditDecision | None = None

    @property
    def credit_limit_micros(self) -> int:
        return 0 if self.credit is None else self.credit.credit_limit_micros

    @property
    def deposit_micros(self) -> int:
        return 0 if self.credit is None else self.credit.deposit_micros

    @classmethod
    def from_redis(cls, customer_id: str, h: Mapping[str, str], sealer: Sealer) -> Customer:
        h = {**h, **{name: sealer.open(h[name], "customer." + name) for name in PERSONAL if h.get(name)}}
        credit = None
        if "credit_class" in h:
            credit = CreditDecision(
                points=0,
                credit_class=h["credit_class"],
                credit_limit_micros=int(h["credit_limit"]),
                deposit_micros=int(h["deposit"]),
                postpaid_allowed=h["postpaid_allowed"] == "1",
                max_lines=int(h["max_lines"]),
                reasons=(),
            )
        return cls(
            id=customer_id,
            kind=h.get("kind", ""),
            created=int(h.get("created", 0)),
            state=h.get("state", ""),
            name=h.get("name", ""),
            street=h.get("street", ""),
            city=h.get("city", ""),
            country=h.get("country", ""),
            postal_code=h.get("postal_code", ""),
            document_type=h.get("document_type", ""),
            document_country=h.get("document_country", ""),
            document_number=h.get("document_number", ""),
            email=h.get("email", ""),
            credit=credit,
        )

    def to_redis(self, sealer: Sealer) -> dict[str, str | int]:
        h: dict[str, str | int] = {
            "kind": self.kind,
            "created": self.created,
            "name": self.name,
            "street": self.street,
            "city": self.city,
            "country": self.country,
            "postal_code": self.postal_code,
            "document_type": self.document_type,
            "document_country": self.document_country,
            "document_number": self.document_number,
            "email": self.email,
        }
        if self.credit is not None:
            h.update(
                credit_class=self.credit.credit_class,
                credit_limit=self.credit.credit_limit_micros,
                deposit=self.credit.deposit_micros,
                postpaid_allowed=int(self.credit.postpaid_allowed),
                max_lines=self.credit.max_lines,
            )
        h["state"] = self.state
        for name in PERSONAL:
            if h[name]:
                h[name] = sealer.seal(str(h[name]), "customer." + name)
        return h


class Customers:
    def __init__(
        self, client: aioredis.Redis, screener: Screener, sealer: Sealer, records: CustomerRecords | None = None
    ) -> None:
        self.client = client
        self.screener = screener
        self.sealer = sealer
        self.names = NameIndex(client, screener.salt)
        self.records = records

    async def create(self, customer: Customer) -> None:
        """Store and index a new customer (PENDING); storing it again changes nothing."""
        if self.records is not None:
            await self.records.create(customer)  # the system of record first
        score = {customer.id: int(customer.id)}
        record: dict[Any, Any] = {**customer.to_redis(self.sealer), "state": "PENDING"}
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(keys.customer(customer.id), mapping=record)
        pipe.zadd(keys.CUSTOMERS, score)
        pipe.zadd(keys.kind_index(customer.kind), score)
        pipe.zadd(keys.state_index("PENDING"), score)
        self.names.add_in(pipe, customer.id, customer.name)
        await pipe.execute()

    async def rename(self, customer_id: str, name: str) -> None:
        """Give a customer a new name (sealed), moving it in the name index."""
        key = keys.customer(customer_id)
        if self.records is not None:
            if not await self.client.exists(key):
                raise NotFound("no such customer")
            await self.records.rename(customer_id, name)

        async def txn(pipe: Pipeline) -> None:
            old = await pipe.hget(key, "name")
            if old is None and not await pipe.exists(key):
                raise NotFound("no such customer")
            pipe.multi()  # type: ignore[no-untyped-call]
            if old:
                self.names.remove_in(pipe, customer_id, self.sealer.open(str(old), "customer.name"))
            pipe.hset(key, "name", self.sealer.seal(name, "customer.name") if name else "")
            self.names.add_in(pipe, customer_id, name)

        await self.client.transaction(txn, key)

    async def withdraw(self, customer_id: str) -> None:
        """In the system of record: the customer will not be (its order was refused after
        it was made); Redis's copy is taken back by ``forget_in`` with the order."""
        if self.records is not None:
            await self.records.withdraw(customer_id)

    def forget_in(self, pipe: Pipeline, customer_id: str, name: str) -> None:
        """Take back a customer that will not be (its order was refused), in ``pipe``."""
        self.names.remove_in(pipe, customer_id, name)
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
        if state and self.records is not None:
            # compared with the latest version, so a change a crash kept from the record
            # is recorded by the next refresh
            await self.records.record_state(customer_id, state)
        return state

    async def set_credit(self, customer_id: str, credit: CreditDecision) -> None:
        """The customer's credit terms where further lines are offered from (Redis's copy,
        after the system of record took them); a customer not here is left alone."""
        key = keys.customer(customer_id)

        async def txn(pipe: Pipeline) -> None:
            if not await pipe.exists(key):
                return
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.hset(
                key,
                mapping={
                    "credit_class": credit.credit_class,
                    "credit_limit": credit.credit_limit_micros,
                    "deposit": credit.deposit_micros,
                    "postpaid_allowed": int(credit.postpaid_allowed),
                    "max_lines": credit.max_lines,
                },
            )

        await self.client.transaction(txn, key)

    async def get(self, customer_id: str) -> Customer | None:
        h = await self.client.hgetall(keys.customer(customer_id))
        return Customer.from_redis(customer_id, _text(h), self.sealer) if h else None

    async def named(
        self, query: str, size: int = DEFAULT_PAGE, *, kind: str = "", state: str = "", after: int = 0
    ) -> tuple[list[Customer], str]:
        """Customers with every word of ``query`` in their name (whole words, any order,
        accents and case ignored), of a kind and state if given, in id order after
        ``after``; returns a page and the token of the next one ("" at the end)."""
        if len(words(query)) > MAX_WORDS:
            raise InvalidRequest("name", f"has more than {MAX_WORDS} words")
        found: list[Customer] = []
        candidates = [i for i in await self.names.candidates(query) if int(i) > after]
        for n, customer_id in enumerate(candidates):
            if len(found) == size:
                return found, candidates[n - 1]
            customer = await self.get(customer_id)
            if customer is not None and matches(query, customer.name) and _matches(customer, kind, state):
                found.append(customer)
        return found, ""

    async def indexed(
        self, *, msisdn: str = "", document: tuple[str, str, str] | None = None, name: str = ""
    ) -> list[str]:
        """The ids Redis's indexes give for the number of one of a customer's lines, its
        identity document (type, issuing country, number) and the words of its name (the
        name index may give more: check the name), each one given narrowing the others;
        in id order."""
        if name and len(words(name)) > MAX_WORDS:
            raise InvalidRequest("name", f"has more than {MAX_WORDS} words")
        found: set[str] | None = None
        if msisdn:
            holder = await self.client.hget(keys.line(msisdn), "customer_id")
            found = {str(holder)} if holder is not None else set()
        if document is not None:
            registered = await self.screener.customer_of(self.screener.document_print(*document))
            by_document = {registered} if registered is not None else set()
            found = by_document if found is None else found & by_document
        if name:
            by_name = set(await self.names.candidates(name))
            found = by_name if found is None else found & by_name
        return sorted(found or (), key=int)

    async def search(
        self,
        *,
        kind: str = "",
        state: str = "",
        msisdn: str = "",
        document: tuple[str, str, str] | None = None,
        name: str = "",
        after: int = 0,
        size: int = DEFAULT_PAGE,
    ) -> tuple[list[Customer], str]:
        """Customers by kind, state, the number of one of their lines, their identity
        document (type, issuing country, number) and the words of their name, in id order
        after ``after``; returns a page and the token of the next one ("" at the end)."""
        if name and not msisdn and document is None:
            return await self.named(name, size, kind=kind, state=state, after=after)
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
            return [c for c in page if _matches(c, kind, state) and (not name or matches(name, c.name))], ""
        index = keys.state_index(state) if state else keys.kind_index(kind) if kind else keys.CUSTOMERS
        customers: list[Customer] = []
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
                if not h:
                    continue
                customer = Customer.from_redis(customer_id, _text(h), self.sealer)
                if _matches(customer, kind, state):
                    customers.append(customer)
                    if len(customers) == size:
                        break
        more = await self.client.zcount(index, f"({cursor}", "+inf")
        return customers, str(cursor) if more else ""


def _text(h: Mapping[Any, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in h.items()}


def _matches(customer: Customer, kind: str, state: str) -> bool:
    return (not kind or customer.kind == kind) and (not state or customer.state == state)
