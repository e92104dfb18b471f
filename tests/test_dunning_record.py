"""Dunning steps and promises to pay in PostgreSQL first, then applied in Redis once
(``postpaid/dunning_record.py``, revision 0008), on a real Redis and PostgreSQL: a dunning
run SIGKILLed in a real process before its transaction commits, after the commit and
after Redis applied, and run again, takes every step once (rows, late fees,
notifications, the state, audit entries); the job finishes a decision a crash left; two
evaluations of one account at once decide once; a promise holds dunning and is judged
kept or broken once."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from charging.clock import ManualClock
from charging.database import Pool, open_pool
from postpaid import keys as bill_keys
from postpaid.collection import Collection
from postpaid.dunning_record import DunningRecord
from tests.dunning_process import DAYS, collection

ROOT = Path(__file__).resolve().parent.parent
DAY = 86_400
ACCOUNTS = [f"D{i}" for i in range(1, 6)]
# 25 days past due at the run: reminder, second reminder (late fee 5.00), bar outgoing.
STEPS = ["barring", "reminder", "second_reminder"]


@pytest.fixture
async def world(redis_url: str, database_url: str) -> AsyncIterator[tuple[Collection, aioredis.Redis, Pool]]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    pool = await open_pool(database_url, 2)
    clock = ManualClock()
    due_s = clock.now_ms() // 1000 + (DAYS - 25) * DAY
    for n, ba in enumerate(ACCOUNTS):
        await client.hset(bill_keys.billing_account(ba), mapping={"state": "ACTIVE", "epoch": 0, "moves": 0})
        number = f"INV-{n + 1:08d}"
        state = {"ba": ba, "total": 3000, "open": 3000, "disputed": 0, "due": due_s, "status": "OPEN"}
        await client.hset(bill_keys.invoice_state(ba, number), mapping=state)
        await client.rpush(bill_keys.billing_open(ba), number)
        await client.zadd(bill_keys.dunning_index(ba), {ba: due_s})
    clock.advance(seconds=DAYS * DAY)
    yield collection(client, DunningRecord(pool), clock), client, pool
    await pool.close()
    await client.aclose()


async def rows(pool: Pool, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    async with pool.connection() as conn:
        return await (await conn.execute(sql, params)).fetchall()


async def run_process(redis_url: str, database_url: str, point: str, at: int) -> int:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.dunning_process", redis_url, database_url, point, str(at),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    if proc.returncode not in (0, -signal.SIGKILL):
        pytest.fail(f"the dunning process failed: {err.decode()[-2000:]}")
    return proc.returncode


async def assert_each_step_once(client: aioredis.Redis, pool: Pool) -> None:
    for n, ba in enumerate(ACCOUNTS):
        number = f"INV-{n + 1:08d}"
        taken = await rows(
            pool, "SELECT invoice_id, step FROM dunning_steps WHERE billing_account = %s ORDER BY step", ba
        )
        assert taken == [(number, step) for step in STEPS]
        fees = await rows(
            pool, "SELECT step, late_fee_minor FROM dunning_steps WHERE billing_account = %s AND late_fee_minor > 0", ba
        )
        assert fees == [("second_reminder", 500)]
        pending = await client.lrange(bill_keys.billing_pending(ba), 0, -1)
        assert len(pending) == 1 and '"LATE_FEE"' in pending[0]
        account = await client.hgetall(bill_keys.billing_account(ba))
        assert (account["state"], account["epoch"]) == ("BARRED_OUTGOING", "1")
        audit = await rows(pool, "SELECT action FROM audit WHERE subject = %s ORDER BY action", ba)
        assert [a for (a,) in audit] == ["dunning_state", "dunning_step", "dunning_step", "dunning_step"]
    outbox = [x for box in bill_keys.OUTBOXES for x in await client.lrange(box, 0, -1)]
    notes = sorted(" ".join(x.split(" ")[:2]) for x in outbox)
    expected = [f"dunning_barring INV-{n:08d}" for n in range(1, 6)]
    assert notes == sorted(expected + [f"service_barred_outgoing {ba}" for ba in ACCOUNTS])
    unapplied = await rows(
        pool,
        "SELECT application_id FROM billing_applications a WHERE NOT EXISTS "
        "(SELECT 1 FROM billing_applied d WHERE d.application_id = a.application_id)",
    )
    assert unapplied == []


@pytest.mark.parametrize(("point", "committed"), [("in_transaction", 2), ("after_commit", 3), ("after_redis", 3)])
async def test_a_dunning_run_killed_and_run_again_takes_every_step_once(
    world: tuple[Collection, aioredis.Redis, Pool], redis_url: str, database_url: str, point: str, committed: int
) -> None:
    c, client, pool = world
    assert await run_process(redis_url, database_url, point, 3) == -signal.SIGKILL
    decisions = await rows(pool, "SELECT billing_account FROM billing_applications WHERE kind = 'DUNNING'")
    assert len(decisions) == committed
    pending = await c.record.pending()
    assert len(pending) == (0 if point == "in_transaction" else 1)
    # The third account: Redis has its decision only when it was killed after Redis.
    third = await client.hget(bill_keys.billing_account(ACCOUNTS[2]), "state")
    assert third == ("BARRED_OUTGOING" if point == "after_redis" else "ACTIVE")
    # Run again, in a process of its own: everything once.
    assert await run_process(redis_url, database_url, "none", 0) == 0
    await assert_each_step_once(client, pool)
    # And once more, here: nothing new is decided.
    report = await c.run()
    assert report.actions == {}
    assert len(await rows(pool, "SELECT 1 FROM billing_applications WHERE kind = 'DUNNING'")) == len(ACCOUNTS)
    await assert_each_step_once(client, pool)


async def test_the_job_applies_a_decision_a_crash_left(
    world: tuple[Collection, aioredis.Redis, Pool], redis_url: str, database_url: str
) -> None:
    c, client, pool = world
    assert await run_process(redis_url, database_url, "after_commit", 1) == -signal.SIGKILL
    (pending,) = await c.record.pending()
    assert await client.hget(bill_keys.billing_account(pending.billing_account), "state") == "ACTIVE"
    assert await c.apply_pending() == 1
    assert await c.apply_pending() == 0
    assert await client.hget(bill_keys.billing_account(pending.billing_account), "state") == "BARRED_OUTGOING"
    assert pending.billing_account in await client.smembers(bill_keys.recheck(pending.billing_account))
    await c.run()
    await assert_each_step_once(client, pool)


async def test_two_evaluations_of_one_account_at_once_decide_once(
    world: tuple[Collection, aioredis.Redis, Pool],
) -> None:
    c, client, pool = world
    first, second = await asyncio.gather(c.evaluate("D1"), c.evaluate("D1"))
    assert sorted([len(first.actions), len(second.actions)]) == [0, 3]  # late fee, notice, state
    assert len(await rows(pool, "SELECT 1 FROM dunning_steps WHERE billing_account = 'D1'")) == 3
    assert await client.llen(bill_keys.billing_pending("D1")) == 1


async def test_a_promise_holds_dunning_and_is_judged_once(world: tuple[Collection, aioredis.Redis, Pool]) -> None:
    c, client, pool = world
    today = c.today()
    await c.promise("D2", today + timedelta(days=5), "agent-1")
    await c.promise("D2", today + timedelta(days=5), "agent-1")  # the same promise
    assert await rows(pool, "SELECT until_date, actor FROM promises_to_pay") == [(today + timedelta(days=5), "agent-1")]
    assert await rows(pool, "SELECT 1 FROM dunning_steps WHERE billing_account = 'D2'") == []
    assert (await c.record.promise("D2")) is not None
    # Six days later, unpaid: broken, once; dunning catches up.
    assert isinstance(c.clock, ManualClock)
    c.clock.advance(seconds=6 * DAY)
    await c.evaluate("D2")
    await c.evaluate("D2")
    assert await rows(pool, "SELECT outcome FROM promise_outcomes") == [("BROKEN",)]
    assert await client.hget(bill_keys.billing_account("D2"), "state") == "BARRED_OUTGOING"
    actions = await rows(pool, "SELECT action FROM audit WHERE subject = 'D2' AND action LIKE 'promise%%'")
    assert sorted(a for (a,) in actions) == ["promise_broken", "promise_to_pay"]
    # A promise kept: the invoice is paid within it.
    await c.promise("D3", c.today() + timedelta(days=3), "agent-2")
    await client.hset(bill_keys.invoice_state("D3", "INV-00000003"), "open", 0)
    await client.lrem(bill_keys.billing_open("D3"), 0, "INV-00000003")
    await c.evaluate("D3")
    kept = await rows(pool, "SELECT o.outcome FROM promise_outcomes o JOIN promises_to_pay p USING (promise_id) "
                            "WHERE p.billing_account = 'D3'")  # fmt: skip
    assert kept == [("KEPT",)]
    assert [p.outcome for p in await c.record.promises("D3")] == ["KEPT"]
