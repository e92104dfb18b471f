"""What the system of record holds after a run: the usage records and audit entries the
charging scripts wrote with each change (``charging/cdrs.py``), once the relay has moved
them all into PostgreSQL.

Two claims, checked against the final balances and the history:

* **The records explain every balance, exactly**, sessions included: final balance =
  initial + top-ups - the money of every usage record of the account (session usage,
  debits, bundle sales; a refund's is negative).
* **Every acknowledged money movement has its record, with its amount, and no record
  stands for a request that was never made**: a debit or refund its usage row
  (``<account>:e:<event id>``, the money its answer stated), a top-up and a bundle sale
  their audit entries (``<account>:t:<key>``, ``<account>:b:<key>``), a session step that
  reported usage its usage row (``<account>:s:<session>:<n>:<rating group>``, the money
  its answer stated and the units it reported, before and after a tariff change
  together; required of a step answered 2001, checked where present on 4010 and 4012).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import psycopg
import redis

from chaos import checks, tariff
from chaos.history import History, Operation
from charging import keys


@dataclass(frozen=True)
class Records:
    money: dict[str, int]  # account -> sum of money_micros of its usage rows
    usage: dict[str, int]  # record id -> money_micros
    audit: set[str]  # audit entry ids
    bucket_units: dict[str, int]  # account -> units taken from its buckets, less units refunded to them
    sessions: dict[str, tariff.SessionRecord]  # record id -> a session request's rated usage


async def drained(client: redis.Redis | redis.RedisCluster, accounts: list[str], timeout_s: float = 60.0) -> bool:
    """Wait until no record outbox of ``accounts`` holds anything (the relay moved it all)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lengths = [int(client.llen(keys.cdr_outbox(a))) for a in accounts]
        if not any(lengths):
            return True
        await asyncio.sleep(0.2)
    return False


def read(database_url: str) -> Records:
    with psycopg.connect(database_url) as conn:
        usage = {str(r): int(m) for r, m in conn.execute("SELECT record_id, money_micros FROM usage_records")}
        money: dict[str, int] = {}
        for account, total in conn.execute("SELECT account, sum(money_micros) FROM usage_records GROUP BY account"):
            money[str(account)] = int(total)
        audit = {str(e) for (e,) in conn.execute("SELECT entry_id FROM audit")}
        taken: dict[str, int] = {}
        query = (
            "SELECT u.account, u.bucket_units, EXISTS (SELECT 1 FROM audit a WHERE a.entry_id = u.record_id "
            "AND a.action = 'refund') FROM usage_records u WHERE u.bucket_units <> '{}'::jsonb"
        )
        for account, units, refund in conn.execute(query):
            n = sum(int(v) for v in dict(units).values())
            taken[str(account)] = taken.get(str(account), 0) + (-n if refund else n)
        sessions = {
            str(r): tariff.SessionRecord(str(plan), str(band), int(at.timestamp()), int(units), int(m), bool(b))
            for r, plan, band, at, units, m, b in conn.execute(
                "SELECT record_id, plan_id, band, occurred_at, units, money_micros, bucket_units <> '{}'::jsonb "
                "FROM usage_records WHERE record_id LIKE '%:s:%' AND cause = ''"
            )
        }
    return Records(money, usage, audit, taken, sessions)


def buckets_conserved(
    history: History,
    final: dict[str, checks.AccountState],
    records: Records,
    bundle_units: dict[str, int],
    expired: dict[str, int] | None = None,
) -> list[checks.Violation]:
    """Units bought = units used (less those refunded) + units remaining + units expired,
    per account (``expired``: the accounts' ``expired_<unit>`` totals; buckets expire
    within a run only when the clock jumps, chaos/clock.py)."""
    bought: dict[str, int] = {}
    seen: set[str] = set()
    for op in history.operations:
        if op.kind == "buy" and op.applied and op.identity not in seen:
            seen.add(op.identity)
            bought[op.account] = bought.get(op.account, 0) + bundle_units[str(op.request["bundle_id"])]
    found: list[checks.Violation] = []
    for account, state in final.items():
        remaining = sum(b.amount for b in state.buckets)
        used = records.bucket_units.get(account, 0)
        lost = (expired or {}).get(account, 0)
        if bought.get(account, 0) != used + remaining + lost:
            found.append(
                checks.Violation(
                    "bucket_units",
                    account,
                    f"bought {bought.get(account, 0)} units != used {used} + remaining {remaining} + expired {lost}",
                )
            )
    return found


def explain_balances(
    history: History, initial: dict[str, int], final: dict[str, checks.AccountState], records: Records
) -> list[checks.Violation]:
    found: list[checks.Violation] = []
    topups: dict[str, int] = {}
    seen: set[str] = set()
    for op in history.operations:
        if op.kind == "topup" and op.applied and op.identity not in seen:
            seen.add(op.identity)
            topups[op.account] = topups.get(op.account, 0) + int(op.request["amount_micros"])
    for account, start in initial.items():
        expected = start + topups.get(account, 0) - records.money.get(account, 0)
        if final[account].balance_micros != expected:
            found.append(
                checks.Violation(
                    "records_explain_balances",
                    account,
                    f"balance {final[account].balance_micros} != initial {start} + top-ups "
                    f"{topups.get(account, 0)} - money of its usage records {records.money.get(account, 0)}",
                )
            )
    return found


def every_movement_recorded(history: History, records: Records) -> list[checks.Violation]:
    found: list[checks.Violation] = []
    made: set[str] = set()
    for op in history.operations:
        if op.kind == "session":
            found += _session_recorded(op, records, made)
            continue
        if op.kind == "status":
            continue
        key = op.record_id
        made.add(key)
        if not op.applied:
            continue
        assert op.answer is not None
        if op.kind in ("debit", "refund"):
            money = op.answer.cost_micros if op.kind == "debit" else -op.answer.cost_micros
            if records.usage.get(key) != money:
                found.append(
                    checks.Violation(
                        "records_match",
                        op.account,
                        f"{key}: usage record {records.usage.get(key)} != {money}",
                        (op.seq,),
                    )
                )
        elif key not in records.audit:
            found.append(checks.Violation("records_match", op.account, f"{key}: no audit entry", (op.seq,)))
    for record_id in records.usage:
        account, _, rest = record_id.partition(":")
        if rest.startswith(("e:", "b:", "s:")) and record_id not in made:
            found.append(checks.Violation("records_match", account, f"{record_id}: a record of no request"))
    return found


def _session_recorded(op: Operation, records: Records, made: set[str]) -> list[checks.Violation]:
    """A session step's usage row has the money its answer stated and the units it reported."""
    key = tariff.record_id(op)
    made.add(key)
    units = int(op.request.get("used_s", 0)) + int(op.request.get("used_after_s", 0))
    if op.outcome != "ok" or op.answer is None or op.answer.code not in tariff.CHARGED or not units:
        return []
    record = records.sessions.get(key)
    if record is None:
        if op.answer.code != 2001:
            return []  # a 4010 or 4012 may come before any rating (a line barred, a limit)
        return [checks.Violation("records_match", op.account, f"{key}: no usage record", (op.seq,))]
    if (record.money_micros, record.units) != (op.answer.cost_micros, units):
        return [
            checks.Violation(
                "records_match",
                op.account,
                f"{key}: usage record {record.money_micros} micros for {record.units} units != "
                f"answer {op.answer.cost_micros} micros for {units} units reported",
                (op.seq,),
            )
        ]
    return []
