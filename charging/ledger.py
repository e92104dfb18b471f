"""The balance ledger in Redis: every change is one Lua script, run in one round trip.

The scripts sit next to this module (``*.lua``, each headed by its KEYS, ARGV and reply);
their arguments are the records of ``script_args.py``.
They are loaded once and called with EVALSHA over the pipelined ``RedisLink``, reloading
on NOSCRIPT; that is safe to retry because a NOSCRIPT reply means the script did not run. Each wrapper turns the
script's reply into a ``Reply`` right here, and Redis failures into
``StorageUnavailable``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal, Protocol

from redis import exceptions as redis_errors

from charging import keys
from charging.admission import check_deadline
from charging.cluster_link import ClusterLink
from charging.redis_link import RedisLink
from charging.refunds import RefundRef
from charging.script_args import (
    Arg,
    BuyArgs,
    DueHint,
    DueSettle,
    DueTake,
    EventArgs,
    ScriptArgs,
    SessionArgs,
    SweepArgs,
    TopupArgs,
)
from charging.store import storage_errors

ReplyKind = Literal["DONE", "REPLAY", "CONFLICT", "UNKNOWN", "PLAN", "CATALOG", "TARIFF", "LIMIT", "POSTPAID"]


@dataclass(frozen=True)
class Reply:
    """What a ledger script answered. ``body`` is the stored answer of DONE/REPLAY,
    or the plan id for PLAN, or the catalog version for CATALOG, or the announced tariff
    changes for TARIFF (``session.lua``)."""

    kind: ReplyKind
    body: str = ""
    reserved_delta: int = 0
    session_delta: int = 0
    # Notifications waiting in the account's outbox.
    outbox: int = 0
    # Session usage not billed (beyond the overrun floor), units by unit kind.
    unbilled: tuple[tuple[int, int], ...] = ()
    # Records waiting in the account's record outbox after this script's pushes (0: none).
    records: int = 0


def _reply(raw: Sequence[Any]) -> Reply:
    kind = raw[0]
    body = raw[1] if len(raw) > 1 else ""
    if kind == "DONE" and len(raw) == 7:
        pairs = (item.split(":") for item in raw[5].split("|") if item)
        unbilled = tuple((int(unit), int(units)) for unit, units in pairs)
        return Reply(kind, body, int(raw[2]), int(raw[3]), int(raw[4]), unbilled, int(raw[6]))
    if kind == "DONE" and len(raw) == 4:
        return Reply(kind, body, outbox=int(raw[2]), records=int(raw[3]))
    return Reply(kind, body)


@dataclass(frozen=True)
class SweepResult:
    sessions: int
    money: int
    outbox: int
    next_deadline_ms: int
    records: int = 0  # the record outbox's length after the script's pushes (0: none)


class ScriptRunner(Protocol):
    """What runs scripts: the pipelined link, or a redis-py client off the hot path."""

    def evalsha(self, sha: str, numkeys: int, /, *args: Any) -> Any: ...

    def script_load(self, source: str, /) -> Any: ...


class LuaScript:
    """A script loaded once and called by SHA; its files are joined in order (a shared
    library first)."""

    def __init__(self, *filenames: str, package: str = "charging") -> None:
        # A file of another package is named "package:file" (a shared library).
        parts = [f.split(":", 1) if ":" in f else (package, f) for f in filenames]
        self.source = "\n".join(resources.files(pkg).joinpath(name).read_text() for pkg, name in parts)
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    async def __call__(self, client: ScriptRunner, keys: Sequence[str], args: ScriptArgs) -> Any:
        argv = args.to_argv()
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *argv)
        except redis_errors.NoScriptError:
            await client.script_load(self.source)
            return await client.evalsha(self.sha, len(keys), *keys, *argv)


SESSION = LuaScript("ledger_lib.lua", "session.lua")
EVENT = LuaScript("ledger_lib.lua", "event.lua")
TOPUP = LuaScript("ledger_lib.lua", "topup.lua")
SWEEP = LuaScript("ledger_lib.lua", "sweep.lua")
BUY = LuaScript("ledger_lib.lua", "buy.lua")
OUTBOX_TRIM = LuaScript("outbox_trim.lua")
DUE_INDEX = LuaScript("due_index.lua")


# Accounts whose keys a Ledger keeps built (a few hundred bytes each).
ACCOUNT_KEYS_CACHED = 100_000


class Ledger:
    """``on_records(account)`` is called when a script left records in the account's record
    outbox (the relay to PostgreSQL learns which accounts have some: ``cdr_relay.py``)."""

    def __init__(self, client: RedisLink | ClusterLink, on_records: Callable[[str], None] | None = None) -> None:
        self.client = client
        self.on_records = on_records
        # The keys every request of an account names, built once per account (bounded).
        self._account_keys: dict[str, keys.AccountKeys] = {}

    def _keys(self, account: str) -> keys.AccountKeys:
        found = self._account_keys.get(account)
        if found is None:
            if len(self._account_keys) >= ACCOUNT_KEYS_CACHED:
                self._account_keys.clear()
            found = self._account_keys[account] = keys.AccountKeys.of(account)
        return found

    def _recorded(self, account: str, reply: Reply) -> Reply:
        if reply.records and self.on_records is not None:
            self.on_records(account)
        return reply

    async def session(self, account: str, args: SessionArgs, *, hint_deadline_ms: int = 0) -> Reply:
        """Run one session request. With ``hint_deadline_ms`` (INITIAL requests) the
        sweeper's index learns about the account in the same round trip."""
        check_deadline()
        k = self._keys(account)
        session_id = args.session_id
        script_keys = (
            k.account,
            k.sessions,
            k.session(session_id),
            k.answer(session_id, args.request_number),
            k.buckets,
            k.outbox,
            k.usage,
            k.usage_records,
            k.session_refunds(session_id),
            k.cdr_outbox,
            *k.pool,
        )
        with storage_errors():
            if not hint_deadline_ms:
                return self._recorded(account, _reply(await SESSION(self.client, script_keys, args)))
            raw = await self._hinted_session(account, script_keys, args.to_argv(), hint_deadline_ms)
            return self._recorded(account, _reply(raw))

    async def _hinted_session(
        self, account: str, script_keys: Sequence[str], args: Sequence[Arg], deadline_ms: int
    ) -> Any:
        commands = (
            ("EVALSHA", DUE_INDEX.sha, 2, *keys.sweep_index(account), *DueHint(account, deadline_ms).to_argv()),
            ("EVALSHA", SESSION.sha, len(script_keys), *script_keys, *args),
        )
        results = await self.client.execute_many(commands)
        missing = [i for i, r in enumerate(results) if isinstance(r, redis_errors.NoScriptError)]
        if missing:
            # Only what failed with NOSCRIPT did not run: load it and send that again.
            for i in missing:
                await self.client.script_load((DUE_INDEX, SESSION)[i].source)
            again = await self.client.execute_many([commands[i] for i in missing])
            for i, r in zip(missing, again, strict=True):
                results[i] = r
        for r in results:
            if isinstance(r, Exception):
                raise r
        return results[1]

    async def event(self, account: str, args: EventArgs, refund_of: RefundRef | None = None) -> Reply:
        """Run one event. A debit keeps its refund record with its answer; a refund draws
        on the record of the debit ``refund_of`` names."""
        check_deadline()
        if refund_of is None:
            record = keys.event(account, args.event_id)
        elif refund_of.kind == "s":
            record = keys.session_refunds(account, refund_of.debit_id)
        else:
            record = keys.event(account, refund_of.debit_id)
        k = self._keys(account)
        script_keys = (
            k.account,
            k.event(args.event_id),
            k.buckets,
            k.outbox,
            k.usage,
            k.usage_records,
            record,
            k.cdr_outbox,
            *k.pool,
        )
        return self._recorded(account, await self._run(EVENT, script_keys, args))

    async def topup(self, account: str, idempotency_key: str, args: TopupArgs) -> Reply:
        script_keys = (keys.account(account), keys.topup(account, idempotency_key), keys.cdr_outbox(account))
        return self._recorded(account, await self._run(TOPUP, script_keys, args))

    async def buy(self, account: str, idempotency_key: str, args: BuyArgs) -> Reply:
        script_keys = (
            keys.account(account),
            keys.topup(account, idempotency_key),
            keys.buckets(account),
            keys.outbox(account),
            keys.usage(account),
            keys.usage_records(account),
            keys.cdr_outbox(account),
        )
        return self._recorded(account, await self._run(BUY, script_keys, args))

    async def buckets(self, account: str) -> dict[str, str]:
        """The account's buckets in stored form, by id."""
        with storage_errors():
            flat = await self.client.execute("HGETALL", keys.buckets(account))
        return dict(zip(flat[::2], flat[1::2], strict=True))

    async def sweep_account(self, account: str, now_ms: int, limit: int, *, records: bool = True) -> SweepResult:
        """Release up to ``limit`` sessions past their deadline and record expired buckets.

        Two round trips: the script must be given the keys of the sessions it releases, so
        the due ones are read first; the script releases only those still due then."""
        with storage_errors():
            due = await self.client.execute("ZRANGEBYSCORE", keys.sessions(account), "-inf", now_ms, "LIMIT", 0, limit)
            sessions = tuple(str(sid) for sid in due)
            script_keys = (
                keys.account(account),
                keys.sessions(account),
                keys.buckets(account),
                keys.outbox(account),
                *(keys.session(account, sid) for sid in sessions),
                keys.cdr_outbox(account),
                *_pool_keys(account),
            )
            raw = await SWEEP(self.client, script_keys, SweepArgs(now_ms, records, sessions))
        result = SweepResult(int(raw[0]), int(raw[1]), int(raw[2]), int(raw[3]), int(raw[4]))
        if result.records and self.on_records is not None:
            self.on_records(account)
        return result

    async def hint(self, index: tuple[str, str], account: str, at_ms: int) -> None:
        """Have the account looked at no later than ``at_ms``."""
        with storage_errors():
            await DUE_INDEX(self.client, index, DueHint(account, at_ms))

    async def take_due(
        self, index: tuple[str, str], now_ms: int, lease_ms: int, limit: int
    ) -> list[tuple[str, str, int]]:
        """Accounts due by ``now_ms``, each with the index epoch and the time it was due."""
        with storage_errors():
            raw = await DUE_INDEX(self.client, index, DueTake(now_ms, lease_ms, limit))
        return [(raw[i], raw[i + 1], int(float(raw[i + 2]))) for i in range(0, len(raw), 3)]

    async def settle(self, index: tuple[str, str], account: str, epoch: str, next_ms: int) -> None:
        with storage_errors():
            await DUE_INDEX(self.client, index, DueSettle(account, epoch, next_ms))

    async def _run(self, script: LuaScript, script_keys: Sequence[str], args: ScriptArgs) -> Reply:
        with storage_errors():
            return _reply(await script(self.client, script_keys, args))


def _pool_keys(account: str) -> tuple[str, ...]:
    """The pool's buckets, account hash and outbox, for a pool member (same hash slot)."""
    root = keys.pool_of(account)
    if root is None:
        return ()
    return (keys.buckets(root), keys.account(root), keys.outbox(root))
