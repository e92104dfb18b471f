"""Orders and lines Redis kept before PostgreSQL did: made rows once, on upgrade.

Before revision 0013 a decided order was only its JSON document ``crm:order:ID`` (its
steps, status and ids) and a line only its hash ``crm:line:MSISDN`` (its state now, no
history). ``move`` writes every decided order's rows (the order, its steps, its status:
the kind inferred from its steps, as the document did not name it) and one history row
per line, the state it is found in (cause ``found``, by the order that last changed it).
Then Redis drops what the rows answer now: the documents of completed and rejected
orders (after their rows are committed), the customers' lists of orders and the list of
screening decisions (each is a step of its order's rows); an order in
progress keeps its document until the network acknowledges it, a line its hash (what
the worker and charging act on). It can stop at any point and run again, or run in
several processes at once: every row is written idempotently (``order_store.insert``),
and rows the running system wrote meanwhile are kept as they are. A marker key says it
completed, so a start does not scan the keyspace again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import redis.asyncio as aioredis

from charging.database import Pool
from charging.store import as_text
from provisioning import keys
from provisioning.lifecycle import NETWORK_COMMAND
from provisioning.lines import Line
from provisioning.order_records import OrderRecord, Record, line_change
from provisioning.order_store import OrderStore
from provisioning.orders import Order

BATCH = 200
COMMANDS = {command: kind.value for kind, command in NETWORK_COMMAND.items()}


@dataclass
class Moved:
    orders: int = 0
    lines: int = 0


def kind_of(order: Order) -> str:
    """An order's kind from its steps: an application is checked first, a further line
    is offered without one, an order on a line is accepted with its network command."""
    for s in order.steps:
        if s.step == "application":
            return "APPLICATION"
        if s.step == "order" and s.outcome == "accepted" and s.reasons:
            return COMMANDS.get(s.reasons[0], "UNKNOWN")
        if s.step == "offer":
            return "NEW_LINE"
    return "UNKNOWN"


def decided_at_ms(order: Order) -> int:
    """When a document of before was decided, as near as it tells: its last step."""
    times = [s.at for s in order.steps] or [order.submitted_at or 0]
    return max(times) * 1000


async def move(client: aioredis.Redis, pool: Pool, now_ms: int) -> Moved:
    store, moved = OrderStore(pool), Moved()
    batch: list[Record] = []

    done: list[str] = []  # decided orders whose documents go once their rows are written

    async def flush() -> None:
        if batch:
            await store.write(batch)
            batch.clear()
        if done:
            await client.delete(*(keys.order(order_id) for order_id in done))
            done.clear()

    prefix = keys.order("")
    async for key in client.scan_iter(match=prefix + "*", count=1000, _type="string"):
        text = await client.get(as_text(key))
        if text is None:
            continue
        order = Order.from_redis(as_text(text))
        if order.status == "SUBMITTED":
            continue  # still running: its run decides it, with its rows
        batch.append(OrderRecord(replace(order, kind=order.kind or kind_of(order)), decided_at_ms(order)))
        if order.status != "IN_PROGRESS":
            done.append(order.crm_order_id)  # nothing more happens to it: the rows answer
        moved.orders += 1
        if len(batch) >= BATCH:
            await flush()
    prefix = keys.line("")
    async for key in client.scan_iter(match=prefix + "*", count=1000, _type="hash"):
        name = as_text(key)
        fields = {as_text(k): as_text(v) for k, v in (await client.hgetall(name)).items()}
        if not fields:
            continue
        batch.append(line_change(Line.from_redis(name.removeprefix(prefix), fields), "found", now_ms))
        moved.lines += 1
        if len(batch) >= BATCH:
            await flush()
    await flush()
    # a customer's orders are listed from the rows now
    async for key in client.scan_iter(match=keys.customer_orders("*"), count=1000, _type="list"):
        await client.delete(as_text(key))
    return moved


async def move_once(client: aioredis.Redis, pool: Pool, now_ms: int) -> Moved | None:
    """``move`` unless it completed before on this Redis; None when it had. The list of
    screening decisions goes either way (written no more; each is a step row)."""
    await client.delete(keys.DECISIONS)
    if await client.exists(keys.ORDERS_MOVED):
        return None
    moved = await move(client, pool, now_ms)
    await client.set(keys.ORDERS_MOVED, "1")
    return moved
