"""The move of billing's keys from the one ``{bill}`` tag into the billing shards.

Before the shards every billing key was under the one hash tag ``{bill}`` (one slot of a
Redis Cluster). ``move_once`` moves them, once, into the shards ``postpaid/keys.py``
names: the indexes member by member (each account into its shard's index, each queued
invoice into its account's shard's delivery queue), then every account's keys (its
hash, lines, pending charges, open invoices, payment list, dunning steps), its invoices'
states, payment and credit note records, disputes and adjustments (each found from the
account its record names) and the lines' keys. What only the legacy moves read
(``legacy.py``, ``collections_legacy.py``, ``receivables_legacy.py``: invoice documents,
bill run markers, counters, the old audit stream) stays where it is; those moves run first.

Processes that start together on one Redis (hosts of one installation, ``charging
migrate`` during a start) run it one at a time: ``move_once`` takes a lease
(``leases.one_at_a_time``, as every start-time move does: ``charging/upgrade.py``); the
others wait until the marker says it is done (or take the
lease over when its holder died) and start billing only then, so billing never writes a
new key before its old one is moved. The lease is an optimisation, not the guarantee:
each step is idempotent and safe when two movers run at once (a holder paused past its
lease), and a move stopped half way is finished by the next start:

* a key is copied whole with ``DUMP`` and ``RESTORE`` without ``REPLACE`` (one command
  writes it, so of two movers one restores and the other gets ``BUSYKEY``), then the old
  one deleted; a new name that exists already is kept (restored by a move that was
  interrupted or by a mover running at the same time). A payment list's record names are
  rewritten in place first (``LSET``, the same result however often it runs);
* a zset or set index: each member added to its shard's index (``ZADD LT``/``GT``,
  ``SADD``: the same result however often) before it is removed from the old one;
* a list (the delivery queue, the outbox): item by item, ``LMOVE`` from the old list
  into the mover's own claim list ``{bill}:moving:<token>:<list>`` (same slot: each item
  is taken by exactly one mover), pushed to its new queue, then popped from the claim.
  The lease holder finishes the claims of movers that died (``recover``): an item is
  pushed unless its new queue holds it already (it died after the push), so a crash
  between the push and the pop loses nothing and does not queue it twice.

Run at start and by ``charging migrate`` (``charging/upgrade.py``'s sequence); a marker
saves the scan on later starts. All processes of a billing installation run the same
version: a process of before the shards still writing ``{bill}`` keys during the move
would have its writes left behind.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from charging.leases import one_at_a_time
from charging.store import storage_errors
from postpaid import keys as bill_keys

log = logging.getLogger("postpaid.shards")

BATCH = 500
OLD = bill_keys.TAG + ":"
MOVED = bill_keys.TAG + ":moved:shards"  # string: the one-tag keys have been moved
CLAIMS = OLD + "moving:"  # lists: "<token>:<list>", the item a mover took from an old list
LEASE_JOB = "billing-shards-move"  # one mover at a time (charging/leases.py)
LEASE_S = 30.0

# The indexes of before, by their old name.
OLD_DUE, OLD_DUNNING, OLD_AS_OF = OLD + "due", OLD + "dunning", OLD + "as_of"
OLD_RECHECK, OLD_RESTRICTED = OLD + "recheck", OLD + "restricted"
OLD_DELIVERY, OLD_OUTBOX = OLD + "deliver", OLD + "out"
INDEXES = {OLD_DUE, OLD_DUNNING, OLD_AS_OF, OLD_RECHECK, OLD_RESTRICTED, OLD_DELIVERY, OLD_OUTBOX}


async def move_once(client: aioredis.Redis, holder: str | None = None) -> int:
    """Move the one-tag keys once (see the module docstring), under the move's lease
    (``leases.one_at_a_time``); how many moved now (0 when another process moved them)."""

    async def moved_before() -> bool:
        with storage_errors():
            return bool(await client.exists(MOVED))

    async def move_them() -> int:
        with storage_errors():
            count = await move(client, recover=True)
            await client.set(MOVED, "1")
        return count

    if bill_keys.shard_tag(0) == bill_keys.TAG:
        return 0
    moved = await one_at_a_time(client, LEASE_JOB, LEASE_S, move_them, done=moved_before, holder=holder) or 0
    if moved:
        log.info("billing keys moved into the billing shards", extra={"keys": moved, "shards": bill_keys.SHARDS})
    return moved


async def move(client: aioredis.Redis, recover: bool = False) -> int:
    """Move whatever is left under the one tag; resumable and safe to run from several
    processes at once; ``recover`` (the lease holder) also finishes the claims of movers
    that died. Answers how many moved (by this mover)."""
    token = secrets.token_hex(6)
    moved = await _zset(client, OLD_DUE, bill_keys.due_index, lt=True)
    moved += await _zset(client, OLD_DUNNING, bill_keys.dunning_index, lt=True)
    moved += await _zset(client, OLD_AS_OF, bill_keys.as_of, lt=False)
    moved += await _set(client, OLD_RECHECK, bill_keys.recheck)
    moved += await _set(client, OLD_RESTRICTED, bill_keys.restricted)
    claims = _Claims(client, token, recover)
    moved += await claims.move(OLD_DELIVERY, lambda number: _delivery_queue(client, number), once=True)
    moved += await claims.move(OLD_OUTBOX, _first_outbox, once=False)
    async for raw in client.scan_iter(match=OLD + "*", count=1000):
        key = str(raw)
        if key in INDEXES or key.startswith(CLAIMS):
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
    """``old`` restored whole under ``new`` (``RESTORE`` without ``REPLACE``: a ``new``
    that exists is kept), then ``old`` deleted; 1 when this mover restored it."""
    if old.startswith(OLD + "ba:") and old.endswith(":pay") and str(await client.type(old)) == "list":
        # The account's payment records, by their old names: renamed in place first.
        tag = bill_keys.account_tag(_ba_of(old))
        for n, item in enumerate(await client.lrange(old, 0, -1)):
            if str(item).startswith(OLD):
                try:
                    await client.lset(old, n, tag + str(item)[len(bill_keys.TAG) :])
                except ResponseError:
                    return 0  # moved (and deleted) by another mover meanwhile
    dumped = await client.dump(old)
    if dumped is None:
        return 0  # moved by another mover meanwhile
    ttl_ms = await client.pttl(old)
    restored = 1
    try:
        await client.restore(new, max(int(ttl_ms), 0), dumped)
    except ResponseError as exc:
        if "BUSYKEY" not in str(exc):
            raise
        restored = 0  # restored before (an interrupted move, another mover): kept
    await client.delete(old)
    return restored


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


class _Claims:
    """A mover's claim lists (``CLAIMS``): the item it took from an old list and has not
    popped yet (at most one per list)."""

    def __init__(self, client: aioredis.Redis, token: str, recover: bool) -> None:
        self.client = client
        self.token = token
        self.recover = recover

    async def move(self, old: str, queue_of: Callable[[str], Awaitable[str]], once: bool) -> int:
        """The old list's items into their queues, one at a time (``once``: an item its
        queue holds already is not queued again); first, for the lease holder, the items
        dead movers claimed."""
        name = old[len(OLD) :]
        mine = CLAIMS + self.token + ":" + name
        sources = [old]
        if self.recover:
            found = [str(k) async for k in self.client.scan_iter(match=CLAIMS + "*:" + name, count=1000)]
            sources = [k for k in found if k != mine and k[len(CLAIMS) :].partition(":")[2] == name] + sources
        moved = 0
        for source in sources:
            while (raw := await self.client.lmove(source, mine, "LEFT", "RIGHT")) is not None:
                item = str(raw)
                queue = await queue_of(item)
                # A dead mover's item may be queued already (it died after the push).
                if (source == old and not once) or await self.client.lpos(queue, item) is None:
                    await self.client.rpush(queue, item)
                await self.client.lpop(mine)
                moved += 1
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
