"""The move of billing's keys from the one ``{bill}`` tag into the billing shards.

Before the shards every billing key was under the one hash tag ``{bill}`` (one slot of a
Redis Cluster). ``move_once`` moves them, once, into the shards ``postpaid/keys.py``
names: the indexes member by member (each account into its shard's index, each queued
invoice into its account's shard's delivery queue), then every account's keys (its
hash, lines, pending charges, open invoices, payment list, dunning steps), its invoices'
states, payment and credit note records, disputes and adjustments (each found from the
account its record names) and the lines' keys. A key is copied under its new name, then
the old one deleted; a new name that exists already is kept (written by a move that was
interrupted, or by billing since), so a move stopped half way is finished by the next
start and nothing is applied twice. The index moves add before they remove: a member
moved twice keeps the earlier time (due, dunning) or the later one (as of), and a queued
invoice is queued once (``LPOS``). What only the legacy moves read (``legacy.py``,
``collections_legacy.py``, ``receivables_legacy.py``: invoice documents, bill run
markers, counters, the old audit stream) stays where it is; those moves run first.

Run at start (``Billing.move_redis_invoices``) and by ``charging migrate``; a marker
saves the scan on later starts. All processes of a billing installation run the same
version: a process of before the shards still writing ``{bill}`` keys during the move
would have its writes left behind.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from charging.store import storage_errors
from postpaid import keys as bill_keys

log = logging.getLogger("postpaid.shards")

BATCH = 500
OLD = bill_keys.TAG + ":"
MOVED = bill_keys.TAG + ":moved:shards"  # string: the one-tag keys have been moved

# The indexes of before, by their old name.
OLD_DUE, OLD_DUNNING, OLD_AS_OF = OLD + "due", OLD + "dunning", OLD + "as_of"
OLD_RECHECK, OLD_RESTRICTED = OLD + "recheck", OLD + "restricted"
OLD_DELIVERY, OLD_OUTBOX = OLD + "deliver", OLD + "out"
INDEXES = {OLD_DUE, OLD_DUNNING, OLD_AS_OF, OLD_RECHECK, OLD_RESTRICTED, OLD_DELIVERY, OLD_OUTBOX}


async def move_once(client: aioredis.Redis) -> int:
    """Move the one-tag keys once (see the module docstring); how many moved now."""
    with storage_errors():
        if bill_keys.shard_tag(0) == bill_keys.TAG or await client.exists(MOVED):
            return 0
        moved = await move(client)
        await client.set(MOVED, "1")
    if moved:
        log.info("billing keys moved into the billing shards", extra={"keys": moved, "shards": bill_keys.SHARDS})
    return moved


async def move(client: aioredis.Redis) -> int:
    """Move whatever is left under the one tag; resumable, answers how many moved."""
    moved = await _zset(client, OLD_DUE, bill_keys.due_index, lt=True)
    moved += await _zset(client, OLD_DUNNING, bill_keys.dunning_index, lt=True)
    moved += await _zset(client, OLD_AS_OF, bill_keys.as_of, lt=False)
    moved += await _set(client, OLD_RECHECK, bill_keys.recheck)
    moved += await _set(client, OLD_RESTRICTED, bill_keys.restricted)
    moved += await _list(client, OLD_DELIVERY, lambda number: _delivery_queue(client, number), once=True)
    moved += await _list(client, OLD_OUTBOX, _first_outbox, once=False)
    async for raw in client.scan_iter(match=OLD + "*", count=1000):
        key = str(raw)
        if key in INDEXES:
            continue
        if key.startswith(OLD + "delivering:"):
            await client.delete(key)  # a delivery's lease: the queue is moved, the lease expires
            continue
        new = await _new_name(client, key)
        if new is not None and new != key:
            moved += await _copy(client, key, new)
    return moved


async def _new_name(client: aioredis.Redis, key: str) -> str | None:
    """The key's name in the shards, or None for what stays (what the legacy moves read)."""
    kind, _, rest = key[len(OLD) :].partition(":")
    if kind == "ba":
        ba, sep, suffix = rest.partition(":")
        if suffix == "inv":
            return None  # the invoice list of before issue 11 (legacy.py)
        return bill_keys.billing_account(ba) + sep + suffix
    if kind == "line":
        return bill_keys.line_billing(rest)
    if kind == "hist":
        return bill_keys.line_history(rest)
    if kind == "is":
        owner = await client.hget(key, "ba")
        return bill_keys.invoice_state(str(owner), rest) if owner is not None else None
    if kind in ("pay", "cn", "adj"):
        text = await client.get(key)
        if text is None:
            return None
        doc = json.loads(str(text).split("|", 1)[1] if kind == "pay" else str(text))
        return bill_keys.account_tag(str(doc["ba"])) + ":" + kind + ":" + rest if "ba" in doc else None
    if kind == "disp":
        doc_text = await client.hget(key, "doc")
        doc = json.loads(str(doc_text)) if doc_text else {}
        return bill_keys.dispute(str(doc["ba"]), rest) if "ba" in doc else None
    return None


async def _copy(client: aioredis.Redis, old: str, new: str) -> int:
    """``old``'s value under ``new`` (one command writes it), then ``old`` deleted; a
    ``new`` that exists is kept."""
    if not await client.exists(new):
        kind = str(await client.type(old))
        if kind == "string":
            await client.set(new, str(await client.get(old)), nx=True)
        elif kind == "hash":
            fields: dict[Any, Any] = {str(k): str(v) for k, v in (await client.hgetall(old)).items()}
            await client.hset(new, mapping=fields)
        elif kind == "list":
            items = [str(x) for x in await client.lrange(old, 0, -1)]
            if old.endswith(":pay"):  # the account's payment records, by their old names
                tag = bill_keys.account_tag(_ba_of(old))
                items = [tag + x[len(bill_keys.TAG) :] if x.startswith(OLD) else x for x in items]
            if items:
                await client.rpush(new, *items)
        elif kind == "set":
            if members := await client.smembers(old):
                await client.sadd(new, *members)
        elif kind == "zset":
            if scored := _scored(await client.zrange(old, 0, -1, withscores=True)):
                await client.zadd(new, scored)
        else:
            return 0  # nothing of billing's is of another type: left alone
    await client.delete(old)
    return 1


def _scored(raw: list[Any]) -> dict[str, float]:
    return {str(member): float(score) for member, score in raw}


def _ba_of(key: str) -> str:
    return key[len(OLD + "ba:") :].partition(":")[0]


async def _zset(client: aioredis.Redis, old: str, index_of: Callable[[str], str], lt: bool) -> int:
    moved = 0
    while scored := _scored(await client.zrange(old, 0, BATCH - 1, withscores=True)):
        for member, score in scored.items():
            if lt:
                await client.zadd(index_of(member), {member: score}, lt=True)
            else:
                await client.zadd(index_of(member), {member: score}, gt=True)
        await client.zrem(old, *scored)
        moved += len(scored)
    return moved


async def _set(client: aioredis.Redis, old: str, index_of: Callable[[str], str]) -> int:
    moved = 0
    while members := [str(m) for m in await client.srandmember(old, BATCH) or []]:
        for member in members:
            await client.sadd(index_of(member), member)
        await client.srem(old, *members)
        moved += len(members)
    return moved


async def _list(client: aioredis.Redis, old: str, queue_of: Callable[[str], Awaitable[str]], once: bool) -> int:
    moved = 0
    while items := [str(x) for x in await client.lrange(old, 0, BATCH - 1)]:
        for item in items:
            queue = await queue_of(item)
            if not once or await client.lpos(queue, item) is None:
                await client.rpush(queue, item)
        await client.ltrim(old, len(items), -1)
        moved += len(items)
    return moved


async def _delivery_queue(client: aioredis.Redis, number: str) -> str:
    """The delivery queue of an invoice's account (its state moved already, or not yet)."""
    from postpaid.accounts import invoice_account

    ba = await client.hget(OLD + "is:" + number, "ba")
    found = str(ba) if ba is not None else await invoice_account(client, number)
    return bill_keys.delivery_queue(found) if found is not None else bill_keys.DELIVERY_QUEUES[0]


async def _first_outbox(_entry: str) -> str:
    """Billing's notifications name no account (the relay names them all "billing")."""
    return bill_keys.OUTBOXES[0]
