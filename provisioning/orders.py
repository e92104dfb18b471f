"""Orders: the document the CRM reads back, the request kept to resume it, and a lease.

    crm:order:<id>            JSON order document (status, steps, problems, ids): what
                              GetOrder answers; never personal data
    crm:order:<id>:work       hash: ``request`` (the application: personal data, sealed
                              by ``sealing.py``), ``lease``
                              (ms) and what the run has made so far (customer, unit and
                              account ids, the decision); deleted when the order leaves
                              SUBMITTED
    crm:orders:submitted      sorted set: SUBMITTED order id -> lease deadline (ms)
    crm:orders:of:<customer>  list: the customer's orders, in the order they were decided
                              (only when no database keeps the orders' rows)

When PostgreSQL keeps the orders' rows (``order_records.py``, ``decided_rows``), Redis
keeps an order only while it runs or waits for the network: a rejected order's document
is dropped once its rows are written, a completed one's once the acknowledgement's rows
are; a claim of an id Redis does not know looks at the rows first.

Claiming an order id stores the SUBMITTED document, its request and a lease in one
transaction. A run that crashes leaves the order SUBMITTED; once its lease has passed,
whoever comes next (the same order id submitted again, or the periodic ``stalled`` pass)
takes the lease over and runs the stored request again. Every step of a run is
idempotent per order id, so a second run makes nothing twice. The order leaves SUBMITTED
(IN_PROGRESS or REJECTED) in one transaction that first checks it is still SUBMITTED,
drops the request and the lease and applies the order's last effects (the line's desired
network state), so that happens once even when two runs overlap.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from charging.cdrs import subject_change_entry
from charging.clock import Clock, SystemClock
from charging.errors import Conflict, StorageUnavailable
from charging.security.identity import caller_name
from provisioning import keys
from provisioning.sealing import Sealer

log = logging.getLogger("provisioning.orders")

ORDER_LEASE_MS = 30_000
REQUEST = "order.request"  # what a sealed request is, bound to it


class Superseded(Exception):
    """The order was decided by another run meanwhile (this one outlived its lease)."""


@dataclass(frozen=True)
class Step:
    """A step of an order's run: what it did or decided, and why."""

    step: str
    outcome: str
    reasons: tuple[str, ...]
    at: int


@dataclass(frozen=True)
class Order:
    """An order as the CRM reads it back (``GetOrder``): its status, the problems with
    its fields, its steps and the ids it made; never personal data. The credit terms
    are there once a postpaid application has been scored."""

    crm_order_id: str
    status: str = "SUBMITTED"
    problems: tuple[tuple[str, str], ...] = ()
    steps: tuple[Step, ...] = ()
    submitted_at: int | None = None
    customer_id: str = ""
    account_id: str = ""
    msisdn: str = ""
    credit_class: str = ""
    credit_limit_micros: int = 0
    deposit_micros: int = 0
    # APPLICATION, NEW_LINE or the kind of an order on a line (CHANGE_PRODUCT, ...)
    kind: str = ""

    def with_step(self, step: Step) -> Order:
        return replace(self, steps=(*self.steps, step))

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "crm_order_id": self.crm_order_id,
            "status": self.status,
            "problems": [list(p) for p in self.problems],
            "steps": [
                {"step": s.step, "outcome": s.outcome, "reasons": list(s.reasons), "at": s.at} for s in self.steps
            ],
        }
        if self.submitted_at is not None:
            doc["submitted_at"] = self.submitted_at
        if self.credit_class:
            doc.update(
                credit_class=self.credit_class,
                credit_limit_micros=self.credit_limit_micros,
                deposit_micros=self.deposit_micros,
            )
        for name in ("customer_id", "account_id", "msisdn", "kind"):
            if getattr(self, name):
                doc[name] = getattr(self, name)
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Order:
        return cls(
            crm_order_id=str(doc["crm_order_id"]),
            status=str(doc["status"]),
            problems=tuple((str(f), str(m)) for f, m in doc.get("problems", [])),
            steps=tuple(
                Step(str(s["step"]), str(s["outcome"]), tuple(map(str, s["reasons"])), int(s["at"]))
                for s in doc.get("steps", [])
            ),
            submitted_at=None if doc.get("submitted_at") is None else int(doc["submitted_at"]),
            customer_id=str(doc.get("customer_id", "")),
            account_id=str(doc.get("account_id", "")),
            msisdn=str(doc.get("msisdn", "")),
            credit_class=str(doc.get("credit_class", "")),
            credit_limit_micros=int(doc.get("credit_limit_micros", 0)),
            deposit_micros=int(doc.get("deposit_micros", 0)),
            kind=str(doc.get("kind", "")),
        )

    def to_redis(self) -> str:
        return json.dumps(self.to_doc())

    @classmethod
    def from_redis(cls, text: str) -> Order:
        return cls.from_doc(json.loads(text))


@dataclass(frozen=True)
class Claim:
    """``new``: this run claimed the id; ``resume``: it took over a stalled run;
    ``existing``: the order is decided or another run holds it (``order`` as stored)."""

    outcome: Literal["new", "resume", "existing"]
    order: Order
    request: dict[str, Any] = field(default_factory=dict)
    work: dict[str, str] = field(default_factory=dict)


def row_entry(what: str, at_ms: int, doc: dict[str, Any]) -> str:
    """A record outbox entry of ``{crm}:orders:rows``: an order's or a line's record
    (``order_records.py``), as the relay writes it into a row."""
    return json.dumps(["p", str(at_ms), what, json.dumps(doc, sort_keys=True)])


def decision_entry(order: Order, at_ms: int, actor: str) -> str:
    """The audit entry of an order's decision, as a record outbox entry (``cdrs.py`` ``c``):
    the order, its status and the ids it made or changed; never personal data."""
    details = {"status": order.status, "customer_id": order.customer_id, "account_id": order.account_id}
    if order.steps:
        details["step"] = order.steps[-1].step
    order_id = order.crm_order_id
    return subject_change_entry(at_ms, actor, "order_decided", "order:" + order_id, order_id, details)


class Orders:
    def __init__(
        self, client: aioredis.Redis, sealer: Sealer, lease_ms: int = ORDER_LEASE_MS, clock: Clock | None = None
    ) -> None:
        self.client = client
        self.sealer = sealer
        self.lease_ms = lease_ms
        self.clock = clock or SystemClock()
        # Called with the record outbox when a decision left its audit entry there (the
        # relay moves it to the audit table: ``charging/cdr_relay.py``).
        self.on_records: Callable[[str], None] | None = None
        # Writes rows' entries into PostgreSQL at once (``order_store.OrderStore``); the
        # outbox is what makes them certain, this makes them readable without delay.
        self.write_rows: Callable[[Sequence[str]], Awaitable[object]] | None = None
        # A decided order's rows, when they are kept (``order_store.OrderStore.get``): a
        # decided order's document is then dropped from Redis once its rows are written
        # (rejected: after the decision; in progress: once the network acknowledged it).
        self.decided_rows: Callable[[str], Awaitable[Order | None]] | None = None

    async def claim(self, order_id: str, request: dict[str, Any], now_ms: int) -> Claim:
        """Claim a new order id, or take over the order's run when its lease has passed."""
        doc = Order(order_id, "SUBMITTED", submitted_at=now_ms // 1000)

        async def txn(pipe: Pipeline) -> Claim:
            stored = await pipe.get(keys.order(order_id))
            if stored is not None:
                return await self._take_over(pipe, order_id, str(stored), now_ms)
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.set(keys.order(order_id), doc.to_redis())
            sealed = self.sealer.seal(json.dumps(request), REQUEST)
            pipe.hset(keys.order_work(order_id), mapping={"request": sealed, "lease": now_ms + self.lease_ms})
            pipe.zadd(keys.SUBMITTED, {order_id: now_ms + self.lease_ms})
            return Claim("new", doc, request)

        result: Claim = await self.client.transaction(
            txn, keys.order(order_id), keys.order_work(order_id), value_from_callable=True
        )
        if result.outcome == "new" and self.decided_rows is not None:
            # Its document is dropped only after its rows were committed: an id Redis does
            # not know is either new or in the rows by now.
            try:
                decided = await self.decided_rows(order_id)
            except Exception as exc:
                # Unanswered, the id may be decided already: no claim may stay behind (a
                # resumed run would decide it again), and the client asks again later.
                await self._unclaim(order_id)
                log.warning("order claim taken back", extra={"error": type(exc).__name__})
                raise StorageUnavailable("the orders' records cannot be read now; submit again") from None
            if decided is not None:
                await self._unclaim(order_id)
                return Claim("existing", decided)
        return result

    async def _unclaim(self, order_id: str) -> None:
        """Take back a claim of an id that turned out decided (its rows are kept)."""

        async def txn(pipe: Pipeline) -> None:
            stored = await pipe.get(keys.order(order_id))
            pipe.multi()  # type: ignore[no-untyped-call]
            if stored is not None and Order.from_redis(str(stored)).status == "SUBMITTED":
                pipe.delete(keys.order(order_id))
            pipe.delete(keys.order_work(order_id))
            pipe.zrem(keys.SUBMITTED, order_id)

        await self.client.transaction(txn, keys.order(order_id))

    async def take_over(self, order_id: str, now_ms: int) -> Claim | None:
        """Take over a stalled order's run; None when it is decided or its lease holds."""

        async def txn(pipe: Pipeline) -> Claim | None:
            stored = await pipe.get(keys.order(order_id))
            if stored is None:
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.zrem(keys.SUBMITTED, order_id)
                return None
            return await self._take_over(pipe, order_id, str(stored), now_ms)

        claim: Claim | None = await self.client.transaction(
            txn, keys.order(order_id), keys.order_work(order_id), value_from_callable=True
        )
        return claim if claim is not None and claim.outcome == "resume" else None

    async def _take_over(self, pipe: Pipeline, order_id: str, stored: str, now_ms: int) -> Claim:
        order = Order.from_redis(stored)
        work = {str(k): str(v) for k, v in (await pipe.hgetall(keys.order_work(order_id))).items()}
        if order.status != "SUBMITTED" or "request" not in work or int(work.get("lease", 0)) > now_ms:
            return Claim("existing", order)
        pipe.multi()  # type: ignore[no-untyped-call]
        pipe.hset(keys.order_work(order_id), "lease", now_ms + self.lease_ms)
        pipe.zadd(keys.SUBMITTED, {order_id: now_ms + self.lease_ms})
        request = dict(json.loads(self.sealer.open(work["request"], REQUEST)))
        return Claim("resume", order, request, work)

    async def stalled(self, now_ms: int, limit: int = 100) -> list[str]:
        """SUBMITTED orders whose lease has passed: their run was interrupted."""
        return [str(o) for o in await self.client.zrangebyscore(keys.SUBMITTED, "-inf", now_ms, start=0, num=limit)]

    async def work(self, order_id: str) -> dict[str, str]:
        return {str(k): str(v) for k, v in (await self.client.hgetall(keys.order_work(order_id))).items()}

    async def note(self, order_id: str, name: str, value: str, *, keep: bool = False) -> str:
        """Record what a run has made or decided (``keep``: unless recorded before);
        returns the recorded value. Raises ``Superseded`` once the order is decided."""

        async def txn(pipe: Pipeline) -> str:
            found = await pipe.hmget(keys.order_work(order_id), ["request", name])
            if found[0] is None:
                raise Superseded(order_id)
            if keep and found[1] is not None:
                return str(found[1])
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.hset(keys.order_work(order_id), name, value)
            return value

        result: str = await self.client.transaction(txn, keys.order_work(order_id), value_from_callable=True)
        return result

    async def allocate(self, order_id: str, name: str, sequence: str) -> str:
        """An id from ``sequence``, taken once per order: a second run gets the same one."""
        made = await self.client.hget(keys.order_work(order_id), name)
        if made is not None:
            return str(made)
        return await self.note(order_id, name, str(await self.client.incr(sequence)), keep=True)

    async def finish(
        self, order: Order, effects: Callable[[Pipeline], None] | None = None, rows: Sequence[str] = ()
    ) -> Order:
        """Store the decided order (IN_PROGRESS or REJECTED) and apply ``effects`` in the
        same transaction, if it is still SUBMITTED; returns the order as stored. The
        decision's audit entry (who asked, what was decided) goes to the CRM's record
        outbox in that transaction: never one without the other; and so do the order's
        rows (the order, its steps, its status) and ``rows`` (the line's first state)
        to the outbox of rows, which are then written at once as well (``write_rows``)."""
        order_id = order.crm_order_id
        now_ms = self.clock.now_ms()
        entry = decision_entry(order, now_ms, caller_name())
        entries = [row_entry("order", now_ms, order.to_doc()), *rows]
        decided_here = False

        async def txn(pipe: Pipeline) -> Order:
            nonlocal decided_here
            decided_here = False
            stored = await pipe.get(keys.order(order_id))
            if stored is None:
                raise Superseded(order_id)  # decided, its document dropped once its rows were written
            if (decided := Order.from_redis(str(stored))).status != "SUBMITTED":
                return decided
            # A transaction does not roll back a command that fails in it: the outbox must
            # take the entry before anything is changed (it is watched, so this holds at EXEC).
            for outbox in (keys.ORDER_RECORDS, keys.ORDER_ROWS):
                if await pipe.type(outbox) not in ("list", "none"):
                    raise Conflict(f"{outbox} is not a list: the order is not decided")
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.set(keys.order(order_id), order.to_redis())
            pipe.delete(keys.order_work(order_id))
            pipe.zrem(keys.SUBMITTED, order_id)
            if order.customer_id and self.decided_rows is None:  # else the rows list them
                pipe.rpush(keys.customer_orders(order.customer_id), order_id)
            if effects is not None:
                effects(pipe)
            pipe.rpush(keys.ORDER_RECORDS, entry)
            pipe.rpush(keys.ORDER_ROWS, *entries)
            decided_here = True
            return order

        watched = (keys.order(order_id), keys.ORDER_RECORDS, keys.ORDER_ROWS)
        result: Order = await self.client.transaction(txn, *watched, value_from_callable=True)
        if decided_here:
            written = await self._written(entries)
            if written and result.status == "REJECTED" and self.decided_rows is not None:
                await self.drop(order_id)  # nothing more happens to it: the rows answer
            if self.on_records is not None:
                self.on_records(keys.ORDER_RECORDS)
                self.on_records(keys.ORDER_ROWS)
        return result

    async def _written(self, entries: Sequence[str]) -> bool:
        """Rows written at once; when the database cannot take them now, the relay will
        (and the order's document stays in Redis)."""
        if self.write_rows is None:
            return False
        try:
            await self.write_rows(entries)
            return True
        except Exception as exc:  # the outbox keeps them: the relay writes them later
            log.warning("order rows left to the relay", extra={"error": type(exc).__name__})
            return False

    async def drop(self, order_id: str) -> None:
        """Drop a decided order's document, once its rows are committed."""
        await self.client.delete(keys.order(order_id))

    async def get(self, order_id: str) -> Order | None:
        text = await self.client.get(keys.order(order_id))
        return None if text is None else Order.from_redis(str(text))

    async def save(self, order: Order) -> None:
        """Store a decided order's later change (the network's acknowledgement); its rows
        are written first (``Acknowledgements``), so a retry after a crash finds them."""
        await self.client.set(keys.order(order.crm_order_id), order.to_redis())

    async def of_customer(self, customer_id: str, start: int, count: int) -> tuple[list[str], str]:
        """A page of the customer's order ids from position ``start``, and where the next
        page starts ("" at the end)."""
        key = keys.customer_orders(customer_id)
        ids = [str(o) for o in await self.client.lrange(key, start, start + count - 1)]
        end = start + len(ids)
        return ids, str(end) if await self.client.llen(key) > end else ""
