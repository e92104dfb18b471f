"""Which accounts are on which plan, so a catalog never drops a plan or service still in use.

Each plan has a set of the ids of its accounts (``plan:members:<plan>``), changed in the
same place as the plan field of an account: when an account is created
(``Directory.create``), changes plan (``Directory.set_plan``) or is moved by a catalog
load. Counting a plan's subscribers is then one SCARD. The alternative, scanning every
account when a catalog is loaded, costs a pass over the whole key space per load (see
``README``, Catalog, for the figures) and cannot be made atomic with the switch.

Why it cannot race (single Redis; the index keys are global, like the identity index):

* Joining a plan (``join``) checks that the plan is in ``catalog:plans`` (the plans of the
  running catalog) and adds the account in one script. A catalog switch checks the member
  sets of the plans it drops and replaces ``catalog:plans`` in one script as well, so
  every join comes wholly before a switch (and is counted by it, or moved with it) or
  wholly after it (and is refused when the plan is gone).
* A new account's hash is written before it joins and its identities claimed after, so
  an account refused by ``join`` is deleted before anyone could reach it, and one that
  joined before a switch already names its plan when the switch moves it.
* A plan change joins the new plan first, then writes the hash, then looks again: if the
  plan was dropped in between, the switch has recorded its successor and the account is
  moved on (the rewrite that follows a switch may have passed it already).
* A migration is part of the switch: the member set of the old plan is merged into the
  new one, so counts are right at once, and charging rates an account that still names
  the old plan on its successor (``Catalog.plan_of``) until the load has rewritten the
  account's hash (``plan_move.lua``, only if it still names the old plan). A load that
  stops half way leaves ``plan:moving:<old>``; the next load, or a server start,
  finishes it.

Counts can only be too high, never too low: an account whose process died between
joining and writing its hash stays counted (a catalog may then refuse to drop its plan
until it is migrated). The sessions figures in a refusal are read after the check, from
the sweeper's index of accounts with open sessions (a plan's: the sessions of its
accounts; a service's: the sessions holding units of its rating groups); they are for
the operator, the guard is the subscriber count (a session needs an account on a plan).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import redis.asyncio as aioredis

from charging import keys
from charging.catalog import Catalog, Plan
from charging.catalog_doc import CatalogInvalid
from charging.errors import InUse, InvalidRequest
from charging.ledger import LuaScript
from charging.script_args import CatalogSwitch, PlanIndexInit, PlanJoin, PlanLeave, PlanMoveArgs
from charging.store import storage_errors

log = logging.getLogger("charging.plans")

INDEX = LuaScript("plan_index.lua")
MOVE = LuaScript("plan_move.lua")
BATCH = 500
# A session's fields per rating group: u<rg> reserved units, c<rg> used so far, ...
_GROUP_FIELD = re.compile(r"^[a-z]([0-9]+)$")
# An account hash: "{a:5}" (standalone) or "{a:5}:2" (pool member 5.2).
_ACCOUNT_KEY = re.compile(r"^\{a:([^}]+)\}(?::([0-9]+))?$")


class StaleCatalog(Exception):
    """Another catalog became current between reading the running one and the switch."""


@dataclass(frozen=True)
class InUseBy:
    subscribers: int
    sessions: int

    def __str__(self) -> str:
        s = "" if self.subscribers == 1 else "s"
        o = "" if self.sessions == 1 else "s"
        return f"{self.subscribers} subscriber{s} and {self.sessions} open session{o}"


class PlanIndex:
    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client

    async def join(self, account: str, plan_id: str, was: str = "") -> None:
        """Put the account on ``plan_id`` in the index; InvalidRequest when the running
        catalog has no such plan."""
        with storage_errors():
            joined = await INDEX(
                self._client,
                (keys.CATALOG_PLANS, keys.plan_members(plan_id), keys.plan_members(was or plan_id)),
                PlanJoin(account, plan_id),
            )
        if not joined:
            raise InvalidRequest("plan_id", f"no plan {plan_id!r} in the running catalog")

    async def leave(self, account: str, plan_id: str) -> None:
        with storage_errors():
            await INDEX(self._client, (keys.plan_members(plan_id),), PlanLeave(account))

    async def successor(self, plan_id: str) -> str:
        """The plan a dropped plan's accounts are moved to ('' when it was not migrated)."""
        with storage_errors():
            if await self._client.sismember(keys.CATALOG_PLANS, plan_id):  # type: ignore[misc]
                return ""
            return str(await self._client.hget(keys.PLAN_MOVES, plan_id) or "")  # type: ignore[misc]

    async def move(self, account: str, old: str, new: str) -> bool:
        """Rewrite the account's plan from ``old`` to ``new`` if it still names ``old``."""
        with storage_errors():
            return bool(await MOVE(self._client, (keys.account(account),), PlanMoveArgs(old, new)))

    async def switch(
        self, new: Catalog, running: Catalog | None, audit_entry: str = "", version_entry: str = ""
    ) -> None:
        """Make ``new`` the running catalog unless it drops a plan or service in use that
        it does not migrate; move the migrated plans' accounts in the same step.

        Raises ``CatalogInvalid``-style ``InvalidRequest`` for a migration that cannot
        take over, ``InUse`` naming each plan and service in use, ``StaleCatalog`` when
        ``running`` is no longer current. ``audit_entry`` goes to the catalog's record
        outbox and ``version_entry`` to its history outbox in the same step
        (``documents.py``, ``document_history.py``)."""
        problems = _migration_problems(new, running) if running is not None else []
        if problems:
            raise CatalogInvalid(problems)
        index: dict[str, int] = {}
        script_keys = [
            keys.CATALOG_CURRENT,
            keys.CATALOG_PLANS,
            keys.PLAN_MOVES,
            keys.CATALOG_RECORDS,
            keys.CATALOG_HISTORY,
        ]

        def key(name: str) -> int:
            if name not in index:
                script_keys.append(name)
                index[name] = len(script_keys)  # Lua indexes from 1
            return index[name]

        guards = []
        moves = []
        if running is not None:
            for plan_id in sorted(set(running.plans) - set(new.plans) - set(new.moved_plans)):
                guards.append([f"plans.{plan_id}", [key(keys.plan_members(plan_id))]])
            for service in sorted(set(running.services) - set(new.services) - set(new.moved_services)):
                rated_by = sorted(p.id for p in running.plans.values() if _rates(p, service))
                if rated_by:
                    guards.append([f"services.{service}", [key(keys.plan_members(p)) for p in rated_by]])
            for old, successor in sorted(new.moved_plans.items()):
                if old not in running.plans:
                    continue  # migrated by an earlier load (this document loaded again)
                moves.append(
                    [
                        old,
                        successor,
                        key(keys.plan_members(old)),
                        key(keys.plan_members(successor)),
                        key(keys.plan_moving(old)),
                    ]
                )
        args = {"guards": guards, "moves": moves, "plans": sorted(new.plans)}
        with storage_errors():
            reply = await INDEX(
                self._client,
                script_keys,
                CatalogSwitch(
                    running.version if running else "", new.version, json.dumps(args), audit_entry, version_entry
                ),
            )
        kind = reply[0]
        if kind == "STALE":
            raise StaleCatalog(reply[1])
        if kind == "IN_USE":
            labels = [str(label) for label in reply[1::2]]
            sessions = await self._open_sessions(running) if running is not None else Counter()
            raise InUse(
                "; ".join(
                    f"{label}: in use by {InUseBy(int(count), sessions[label])}"
                    for label, count in zip(labels, reply[2::2], strict=True)
                )
                + " (keep it, or name its successor under migrations)",
            )

    async def finish_moves(self) -> int:
        """Rewrite the accounts of every migrated plan still naming it; returns how many
        were rewritten. Safe to run in several processes at once."""
        moved = 0
        with storage_errors():
            pending = await self._client.hgetall(keys.PLAN_MOVES)  # type: ignore[misc]
        for old in map(str, pending):
            while True:
                with storage_errors():
                    # Read the successor at each batch: a later load may have dropped it too.
                    new = await self._client.hget(keys.PLAN_MOVES, old)  # type: ignore[misc]
                    batch = await self._client.srandmember(keys.plan_moving(old), BATCH)  # type: ignore[misc]
                if not new or not batch:
                    break
                moved += await self._move_batch([str(a) for a in batch], PlanMoveArgs(old, str(new)))
                with storage_errors():
                    await self._client.srem(keys.plan_moving(old), *batch)  # type: ignore[misc]
        if moved:
            log.info("accounts moved to successor plans", extra={"accounts": moved})
        return moved

    async def _move_batch(self, accounts: list[str], args: PlanMoveArgs) -> int:
        """``plan_move.lua`` for each account, pipelined: one round trip per batch."""
        with storage_errors():
            await self._client.script_load(MOVE.source)  # the pipeline cannot reload it
            pipe = self._client.pipeline(transaction=False)
            for account in accounts:
                # Not ``pipe.evalsha``: redis-py's cluster pipeline refuses it by name, and
                # routes the command by its key when it is sent as is.
                pipe.execute_command("EVALSHA", MOVE.sha, 1, keys.account(account), *args.to_argv())
            return sum(await pipe.execute())

    async def ensure(self, running: Catalog) -> None:
        """Build the index once, for accounts created before it existed: on the first
        start after an upgrade ``catalog:plans`` is missing. Idempotent; a scan in
        batches of ``BATCH`` keys (see ``recount``)."""
        with storage_errors():
            if await self._client.exists(keys.CATALOG_PLANS):
                return
        await self.recount()
        with storage_errors():
            # Only while ``running`` is current and no switch has set the plans meanwhile.
            await INDEX(
                self._client,
                (keys.CATALOG_CURRENT, keys.CATALOG_PLANS),
                PlanIndexInit(running.version, tuple(sorted(running.plans))),
            )

    async def recount(self) -> Counter[str]:
        """Add every account to its plan's member set by scanning the key space; returns
        the accounts per plan. The repair for counts left too high is to delete the
        member sets and run this while no account is created."""
        per_plan: Counter[str] = Counter()
        with storage_errors():
            async for batch in _account_batches(self._client):
                pipe = self._client.pipeline(transaction=False)
                for _, key in batch:
                    pipe.hget(key, "plan")
                plans = await pipe.execute()
                pipe = self._client.pipeline(transaction=False)
                for (account, _), plan_id in zip(batch, plans, strict=True):
                    if plan_id:
                        pipe.sadd(keys.plan_members(str(plan_id)), account)
                        per_plan[str(plan_id)] += 1
                await pipe.execute()
        return per_plan

    async def _open_sessions(self, running: Catalog) -> Counter[str]:
        """Open sessions per plan (``plans.<id>``) and per service they hold units of
        (``services.<name>``), from the sweeper's index of accounts with sessions."""
        found: Counter[str] = Counter()
        with storage_errors():
            for due_key, _epochs in keys.SWEEP_SHARDS:
                cursor = 0
                while True:
                    cursor, members = await self._client.zscan(due_key, cursor, count=BATCH)
                    accounts = [str(member) for member, _ in members]
                    pipe = self._client.pipeline(transaction=False)
                    for account in accounts:
                        pipe.zrange(keys.sessions(account), 0, -1)
                        pipe.hget(keys.account(account), "plan")
                    replies = await pipe.execute() if accounts else []
                    pipe = self._client.pipeline(transaction=False)
                    for account, ids, plan_id in zip(accounts, replies[::2], replies[1::2], strict=True):
                        found[f"plans.{plan_id}"] += len(ids)
                        for session_id in ids:
                            pipe.hkeys(keys.session(account, str(session_id)))
                    for fields in await pipe.execute() if any(replies[::2]) else []:
                        groups = {int(m.group(1)) for f in fields if (m := _GROUP_FIELD.match(str(f)))}
                        for service in {running.service_of_group.get(g, "") for g in groups} - {""}:
                            found[f"services.{service}"] += 1
                    if cursor == 0:
                        break
        return found


async def _account_batches(client: aioredis.Redis) -> AsyncIterator[list[tuple[str, str]]]:
    batch: list[tuple[str, str]] = []
    async for key in client.scan_iter(match="{a:*", count=BATCH, _type="hash"):
        match = _ACCOUNT_KEY.match(str(key))
        if match:
            root, member = match.groups()
            batch.append((f"{root}.{member}" if member else root, str(key)))
            if len(batch) >= BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


def _rates(plan: Plan, service: str) -> bool:
    return any(rule.service == service for version in plan.versions for rule in version.rules)


def _migration_problems(new: Catalog, running: Catalog) -> list[tuple[str, str]]:
    """A successor must be able to take over: a plan of the same customer type and
    currency (an account's currency and billing follow them), a service of the same unit
    holding every rating group of the old one."""
    problems = []
    # An old plan or service the running catalog does not have was migrated by an earlier
    # load (the same document loaded again, at a start with CHARGING_CATALOG_FILE): nothing
    # to do. A misspelt one changes nothing either: the plan it meant is still dropped
    # unmigrated, and refused while in use.
    for old, successor in sorted(new.moved_plans.items()):
        was, now = running.plans.get(old), new.plans[successor]
        if was is not None and (was.customer_type, was.currency) != (now.customer_type, now.currency):
            problems.append(
                (
                    f"migrations.plans.{old}",
                    f"{successor} is {now.customer_type.value} in {now.currency}, "
                    f"{old} was {was.customer_type.value} in {was.currency}",
                )
            )
    for old, successor in sorted(new.moved_services.items()):
        was_service, now_service = running.services.get(old), new.services[successor]
        if was_service is not None and (
            was_service.unit is not now_service.unit
            or not set(was_service.rating_groups) <= set(now_service.rating_groups)
        ):
            problems.append(
                (
                    f"migrations.services.{old}",
                    f"{successor} must have the unit {was_service.unit.name} and the rating groups "
                    + ", ".join(str(g) for g in was_service.rating_groups),
                )
            )
    return problems
