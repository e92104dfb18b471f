"""Billing accounts and the postpaid lines they pay for.

A billing account is the customer (individuals, id ``C<customer>``) or the corporate unit
that pays (``U<unit>``, ``provisioning/customers.py`` ``paying_unit``); its lines are
charging accounts. When a postpaid line is first acknowledged active, it is enrolled:
its charging account's balance becomes headroom against the credit limit
(``enrol.lua``) and its open bill periods are those of its billing account, so every
line of an account closes the same periods. Line state and product changes are kept as
a history the rentals are prorated on.

Who the invoices are addressed to (``PERSONAL``: name, postal address, email) is sealed
(``provisioning/sealing.py``, kind ``billing_account.<field>``) before it is written and
opened by ``get``; a value written in clear before sealing existed is read as it is
until ``reseal_all`` (run by ``charging rotate-data-key``) seals it.

Every step is idempotent, so an interrupted enrolment completes when it runs again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from charging import keys
from charging.money import MICROS_PER_MINOR, split_evenly
from charging.store import storage_errors
from postpaid import keys as bill_keys
from postpaid import periods
from postpaid.config import BillingConfig
from postpaid.scripts import CREDIT, ENROL, CreditArgs, EnrolArgs
from provisioning.sealing import Sealer

PERSONAL = ("name", "address", "email")  # the billing account's fields that are sealed
KIND = "billing_account."  # and their kinds: billing_account.name...


def billing_account_id(customer_id: str, paying_unit: str) -> str:
    return f"U{paying_unit}" if paying_unit else f"C{customer_id}"


def sealed(fields: dict[str, str | int], sealer: Sealer) -> dict[str, str | int]:
    """The account's fields with the personal ones sealed (empty ones stay empty)."""
    return {k: sealer.seal(str(v), KIND + k) if k in PERSONAL and v else v for k, v in fields.items()}


def opened(h: dict[str, str], sealer: Sealer) -> dict[str, str]:
    """The account's hash as stored, with the personal fields opened."""
    return {k: sealer.open(v, KIND + k) if k in PERSONAL and v else v for k, v in h.items()}


async def reseal_all(client: aioredis.Redis, sealer: Sealer) -> int:
    """Seal again under the newest key every billing account's personal field sealed with
    an older key or written in clear; how many accounts changed. One watched transaction
    per account (a change meanwhile reads it again). On a Redis Cluster the client's
    SCAN walks every primary, each with its own cursor (tests/test_rotation_cluster.py)."""
    done = 0
    async for raw in client.scan_iter(match=bill_keys.BILLING_ACCOUNT_PATTERN, count=500):
        key = str(raw)
        if bill_keys.billing_account_of(key) is None:
            continue  # the account's lines, pending charges...: not the account itself

        async def txn(pipe: Pipeline, key: str = key) -> int:
            stored = [str(v) if v is not None else "" for v in await pipe.hmget(key, list(PERSONAL))]
            stale = {k: v for k, v in zip(PERSONAL, stored, strict=True) if v and not sealer.is_current(v)}
            if not stale:
                return 0
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.hset(key, mapping={k: sealer.seal(v, KIND + k) for k, v in opened(stale, sealer).items()})
            return 1

        done += await client.transaction(txn, key, value_from_callable=True)
    return done


async def invoice_account(client: aioredis.Redis, number: str) -> str | None:
    """The billing account of an invoice Redis holds the state of (None: no such
    invoice): its state is in its account's shard, which the number alone does not name,
    so every shard is asked (a call by a person: a dispute, a credit note)."""
    with storage_errors():
        for shard in range(bill_keys.SHARDS):
            found = await client.hget(bill_keys.invoice_state_in(shard, number), "ba")
            if found is not None:
                return str(found)
    return None


@dataclass(frozen=True)
class BillingLine:
    account_id: str
    line: str
    unit_path: tuple[str, ...]


class BillingAccounts:
    def __init__(self, client: aioredis.Redis, config: BillingConfig, sealer: Sealer) -> None:
        self.client = client
        self.config = config
        self.sealer = sealer

    async def enrol(
        self,
        ba: str,
        *,
        account_id: str,
        line: str,
        customer_id: str,
        label: str,
        unit_path: tuple[str, ...],
        plan_id: str,
        credit_limit_micros: int,
        deposit_minor: int,
        at_s: int,
        email: str = "",
        name: str = "",
        address: tuple[str, ...] = (),
    ) -> None:
        """Bill a postpaid line to ``ba`` from ``at_s`` on (the account is opened on its
        first line, with the bill cycle day of that day). ``name`` and ``address`` (postal
        lines) are who its invoices are addressed to, sealed like ``email``."""
        tz = self.config.time_zone
        cycle_day = min(datetime.fromtimestamp(at_s, UTC).day, 28)
        first = periods.period_at(cycle_day, tz, at_s)
        with storage_errors():
            # The account, all its fields or none, never overwriting an existing one.
            async with self.client.pipeline(transaction=True) as pipe:
                fields: dict[str, str | int] = {
                    "cycle_day": cycle_day,
                    "customer": customer_id,
                    "label": label,
                    "time_zone": tz,
                    "next_period": first.id,
                    "state": "ACTIVE",
                    "created": at_s,
                    "deposit": deposit_minor,
                    "email": email,
                    "name": name,
                    "address": "\n".join(address),
                    "credit_limit": credit_limit_micros,
                }
                for name, value in sealed(fields, self.sealer).items():
                    pipe.hsetnx(bill_keys.billing_account(ba), name, value)
                pipe.zadd(bill_keys.due_index(ba), {ba: first.end_s}, nx=True)
                await pipe.execute()
            info = await self.client.hmget(bill_keys.billing_account(ba), ["cycle_day", "next_period"])
            current = periods.by_id(str(info[1]), int(str(info[0])), tz)
            if current.end_s <= at_s and not await self.client.hlen(bill_keys.billing_lines(ba)):
                # Every line had ended and the account stopped being billed: it starts again
                # at the period running now, not at the old one.
                current = periods.period_at(current.start.day, tz, at_s)
                await self.client.hset(bill_keys.billing_account(ba), "next_period", current.id)
                await self.client.zadd(bill_keys.due_index(ba), {ba: current.end_s})
            # In this order, so that whatever a crash leaves is finished by enrolling again
            # (the marker last: until it is set, the next change of the line enrols again)
            # and a bill run never finds a line on the account that is not postpaid yet.
            bp = periods.pack(periods.open_periods(current, tz))
            await ENROL(self.client, (keys.account(account_id),), EnrolArgs(bp, credit_limit_micros))
            await self.record_change(account_id, at_s, "active", plan_id)
            entry = json.dumps({"line": line, "unit_path": list(unit_path)})
            await self.client.hset(bill_keys.billing_lines(ba), account_id, entry)
            await self.share_credit_limit(ba)
            await self.client.set(bill_keys.line_billing(account_id), ba)

    async def open_account_for(self, ba: str) -> str:
        """The billing account new lines of this payer join: ``ba``, unless dunning
        terminated it (its debt is with collection), then its successor ``ba-2``, ``ba-3``..."""
        candidate, n = ba, 1
        while await self.client.hget(bill_keys.billing_account(candidate), "state") == "TERMINATED":
            n += 1
            candidate = f"{ba}-{n}"
        return candidate

    async def record_change(self, account_id: str, at_s: int, state: str, plan_id: str) -> None:
        """Add a state or product change to the line's history (a repeat is not added)."""
        key = bill_keys.line_history(account_id)
        last = await self.client.lindex(key, -1)
        if last is not None:
            _at, was_state, was_plan = str(last).split(",")
            if (was_state, was_plan) == (state, plan_id):
                return
        await self.client.rpush(key, f"{at_s},{state},{plan_id}")

    async def billed_to(self, account_id: str) -> str | None:
        ba = await self.client.get(bill_keys.line_billing(account_id))
        return None if ba is None else str(ba)

    async def get(self, ba: str) -> dict[str, str]:
        """The account's hash, its personal fields opened."""
        return self.opened(
            {str(k): str(v) for k, v in (await self.client.hgetall(bill_keys.billing_account(ba))).items()}
        )

    def opened(self, h: dict[str, str]) -> dict[str, str]:
        """An account's hash read elsewhere (a bill run's pipeline), its personal fields opened."""
        return opened(h, self.sealer)

    async def lines(self, ba: str) -> list[BillingLine]:
        out = []
        for account_id, raw in (await self.client.hgetall(bill_keys.billing_lines(ba))).items():
            d: dict[str, Any] = json.loads(raw)
            out.append(BillingLine(str(account_id), d["line"], tuple(d["unit_path"])))
        return sorted(out, key=lambda x: x.account_id)

    async def set_overdue(self, ba: str, overdue_minor: int) -> None:
        """The account's overdue amount comes off its lines' headroom, shared the way the
        credit limit is (absolute: setting it again changes nothing)."""
        lines = await self.lines(ba)
        for line, part in zip(lines, split_evenly(overdue_minor * MICROS_PER_MINOR, len(lines)), strict=True):
            await CREDIT(self.client, (keys.account(line.account_id),), CreditArgs(credit_limit=None, overdue=part))

    async def set_credit_limit(self, ba: str, limit_micros: int) -> None:
        """A new credit limit of the account (its customer's credit class changed), shared
        over its lines at once; an account not here is left alone; absolute, so setting it
        again changes nothing."""
        key = bill_keys.billing_account(ba)
        if await self.client.hexists(key, "credit_limit"):
            await self.client.hset(key, "credit_limit", limit_micros)
            await self.share_credit_limit(ba)

    async def share_credit_limit(self, ba: str) -> None:
        """The account's credit limit is spread evenly over its lines (the first lines
        take the odd micros), so all of them together never spend more than the limit.
        Called when a line joins or leaves; each share is set absolutely (credit.lua), so
        doing it again changes nothing."""
        stored = await self.client.hget(bill_keys.billing_account(ba), "credit_limit")
        if stored is None:
            return  # an account without a limit of its own: each line keeps its own
        limit = int(str(stored))
        lines = await self.lines(ba)
        for i, share in enumerate(split_evenly(limit, len(lines))):
            await CREDIT(
                self.client, (keys.account(lines[i].account_id),), CreditArgs(credit_limit=share, overdue=None)
            )
