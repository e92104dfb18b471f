"""Subscribers: who an identity (MSISDN or IMSI) charges, and the minimal admin of them.

Charging needs the account behind an identity before it can name the account's keys, and
that index (``id:msisdn:N``) lives outside the account's hash slot. The ``Directory``
keeps identity -> account and account -> plan in a bounded in-process cache so a
charging request costs one Redis round trip. The cache is only a hint: every script
checks that the identity is still on the account and that the account still has the
plan the request was rated with, and the caller re-resolves when it is not.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import redis.asyncio as aioredis

from charging import keys
from charging.catalog import Plan
from charging.cdrs import change_entry
from charging.clock import Clock, SystemClock
from charging.errors import Conflict, InvalidRequest, NotFound
from charging.money import MAX_BALANCE
from charging.plan_index import PlanIndex
from charging.security.identity import caller_name
from charging.store import storage_errors

IdentityKind = Literal["msisdn", "imsi"]
# active: everything; barred_outgoing: incoming usage and emergency only; suspended and
# barred: emergency only (charging/session.lua).
STATUSES = ("active", "barred_outgoing", "suspended", "barred")
MSISDN = re.compile(r"^[1-9][0-9]{5,14}$")
IMSI = re.compile(r"^[0-9]{15}$")


@dataclass(frozen=True)
class Identity:
    kind: IdentityKind
    value: str

    def __repr__(self) -> str:
        # Identities are personal data: keep them out of logs and tracebacks.
        return f"Identity({self.kind}=***{self.value[-2:]})"


def parse_identity(kind: IdentityKind, value: str, field: str) -> Identity:
    pattern = MSISDN if kind == "msisdn" else IMSI
    if not pattern.match(value):
        what = "an E.164 number of 6-15 digits without '+'" if kind == "msisdn" else "15 digits"
        raise InvalidRequest(field, f"must be {what}")
    return Identity(kind, value)


@dataclass(frozen=True)
class Account:
    account_id: str
    msisdn: str
    imsi: str
    plan_id: str
    status: str
    currency: str
    balance: int
    reserved: int

    @property
    def available(self) -> int:
        return self.balance - self.reserved

    @property
    def identity(self) -> Identity:
        return Identity("msisdn", self.msisdn) if self.msisdn else Identity("imsi", self.imsi)


class _BoundedDict(dict[str, str]):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = max(limit, 1)

    def put(self, key: str, value: str) -> None:
        if key not in self and len(self) >= self.limit:
            del self[next(iter(self))]
        self[key] = value


class Directory:
    def __init__(
        self,
        client: aioredis.Redis,
        cache_size: int,
        *,
        clock: Clock | None = None,
        on_records: Callable[[str], None] | None = None,
    ) -> None:
        self._client = client
        self.clock = clock or SystemClock()
        # Called with the account when a change left an audit entry in its record outbox
        # (cdr_relay.py wakes and moves it to PostgreSQL).
        self.on_records = on_records
        self._accounts = _BoundedDict(cache_size)
        self._plans = _BoundedDict(cache_size)
        # Accounts per plan; every change of an account's plan goes through it.
        self.plans = PlanIndex(client)

    async def resolve(self, identity: Identity) -> str | None:
        """The account id behind an identity, or None when nobody has it."""
        key = keys.identity(identity.kind, identity.value)
        account = self._accounts.get(key)
        if account is not None:
            return account
        with storage_errors():
            raw = await self._client.get(key)
        account = None if raw is None else str(raw)
        if account is not None:
            self._accounts.put(key, account)
        return account

    def forget(self, identity: Identity) -> None:
        self._accounts.pop(keys.identity(identity.kind, identity.value), None)

    def plan_hint(self, account: str) -> str:
        return self._plans.get(account, "")

    def learn_plan(self, account: str, plan_id: str) -> None:
        self._plans.put(account, plan_id)

    async def create(
        self,
        msisdn: Identity,
        imsi: Identity | None,
        plan: Plan,
        initial_balance: int,
        pool: str = "",
        status: str = "active",
    ) -> Account:
        """Create an account with one subscriber, standalone or as a member of ``pool``.
        The identities are claimed after the account exists, so a crash in between
        leaves only an unreachable account."""
        if not 0 <= initial_balance <= MAX_BALANCE:
            raise InvalidRequest("initial_balance_micros", f"must be between 0 and {MAX_BALANCE}")
        with storage_errors():
            if pool:
                if keys.pool_of(pool) is not None or not await self._client.exists(keys.account(pool)):
                    raise InvalidRequest("pool_account_id", "must be an existing account that is not a pool member")
                member = await self._client.hincrby(keys.account(pool), "member_seq", 1)
                account_id = f"{pool}.{member}"
            else:
                account_id = str(await self._client.incr(keys.ACCOUNT_SEQ))
            fields = {
                "balance": str(initial_balance),
                "reserved": "0",
                "plan": plan.id,
                "status": status,
                "currency": plan.currency,
                "msisdn": msisdn.value,
            }
            if imsi is not None:
                fields["imsi"] = imsi.value
            await self._client.hset(keys.account(account_id), mapping=fields)  # type: ignore[arg-type]
            try:
                # After the hash, before the identities: see plan_index.py.
                await self.plans.join(account_id, plan.id)
            except InvalidRequest:
                await self._client.delete(keys.account(account_id))
                raise
            claimed: list[str] = []
            for ident in (msisdn, imsi):
                if ident is None:
                    continue
                key = keys.identity(ident.kind, ident.value)
                if not await self._client.set(key, account_id, nx=True):
                    if claimed:
                        await self._client.delete(*claimed)
                    await self.plans.leave(account_id, plan.id)
                    await self._client.delete(keys.account(account_id))
                    raise Conflict(f"{ident.kind} is already assigned to another subscriber")
                claimed.append(key)
        self.learn_plan(account_id, plan.id)
        return await self.read(account_id)

    async def newest_account_id(self) -> int:
        """The id of the newest standalone account (0 before the first): an account a
        later ``create`` makes has a greater id."""
        with storage_errors():
            return int(await self._client.get(keys.ACCOUNT_SEQ) or 0)

    async def orphan(self, msisdn: Identity, imsi: Identity | None, plan_id: str, newer_than: int) -> str | None:
        """The standalone account holding ``msisdn`` if it is newer than ``newer_than``
        and was made for exactly this subscriber (number, SIM, plan): what a ``create``
        interrupted by a crash may have left behind. None when there is none."""
        with storage_errors():
            holder = await self._client.get(keys.identity(msisdn.kind, msisdn.value))
        if holder is None or not str(holder).isdigit() or int(holder) <= newer_than:
            return None
        try:
            account = await self.read(str(holder))
        except NotFound:
            return None
        if (account.msisdn, account.imsi, account.plan_id) != (msisdn.value, imsi.value if imsi else "", plan_id):
            return None
        return account.account_id

    async def adopt(self, account_id: str, msisdn: Identity, imsi: Identity | None) -> None:
        """Finish what an interrupted ``create`` of ``account_id`` left undone: it claims
        the MSISDN, then the IMSI, and may have stopped between. When the IMSI went to
        another account meanwhile, the account and its MSISDN are released (Conflict)."""
        if imsi is None:
            return
        key = keys.identity(imsi.kind, imsi.value)
        with storage_errors():
            if await self._client.set(key, account_id, nx=True) or await self._client.get(key) == account_id:
                return
            plan_id = await self._client.hget(keys.account(account_id), "plan")  # type: ignore[misc]
            await self._client.delete(keys.identity(msisdn.kind, msisdn.value), keys.account(account_id))
        if plan_id:
            await self.plans.leave(account_id, str(plan_id))
        self.forget(msisdn)
        raise Conflict(f"{imsi.kind} is already assigned to another subscriber")

    async def set_credit_limit(self, account_id: str, credit_limit: int) -> None:
        """The credit limit of a postpaid account (micros), which postpaid charging spends."""
        with storage_errors():
            await self._client.hset(keys.account(account_id), "credit_limit", credit_limit)

    async def get(self, identity: Identity) -> Account:
        account_id = await self.resolve(identity)
        if account_id is None:
            raise NotFound("no subscriber has this identity")
        return await self.read(account_id)

    async def set_status(self, identity: Identity, status: str) -> Account:
        if status not in STATUSES:
            raise InvalidRequest("status", f"must be one of {', '.join(STATUSES)}")
        account = await self.get(identity)
        # The change and its audit entry in one transaction: neither without the other.
        entry = change_entry(self.clock.now_ms(), caller_name(), "status_change", uuid.uuid4().hex, {"status": status})
        with storage_errors():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(keys.account(account.account_id), "status", status)
                pipe.rpush(keys.cdr_outbox(account.account_id), entry)
                await pipe.execute()
        if self.on_records is not None:
            self.on_records(account.account_id)
        return await self.read(account.account_id)

    async def set_plan(self, identity: Identity, plan: Plan) -> Account:
        """Move the account to another plan; charging re-rates from the next request."""
        account = await self.get(identity)
        await self.plans.join(account.account_id, plan.id, was=account.plan_id)
        with storage_errors():
            await self._client.hset(keys.account(account.account_id), "plan", plan.id)
        # A catalog load may have migrated the plan away since the join (plan_index.py).
        successor = await self.plans.successor(plan.id)
        if successor:
            await self.plans.move(account.account_id, plan.id, successor)
        self.learn_plan(account.account_id, successor or plan.id)
        return await self.read(account.account_id)

    async def read(self, account_id: str) -> Account:
        with storage_errors():
            h: dict[str, str] = await self._client.hgetall(keys.account(account_id))  # type: ignore[assignment]
        if not h:
            raise NotFound("no such account")
        return Account(
            account_id=account_id,
            msisdn=h.get("msisdn", ""),
            imsi=h.get("imsi", ""),
            plan_id=h["plan"],
            status=h["status"],
            currency=h["currency"],
            balance=int(h["balance"]),
            reserved=int(h["reserved"]),
        )
