"""Postpaid usage accumulation and bill runs against a real Redis and the real Charging API."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio as aioredis

from charging import keys
from charging.clock import ManualClock
from charging.server import App
from postpaid import config as billing_config
from postpaid import keys as bill_keys
from postpaid import periods
from postpaid.accounts import BillingAccounts
from postpaid.bill_run import BillRun, _close_commands
from postpaid.invoice_book import InvoiceBook
from postpaid.usage import aggregates, reconciles, records
from tests.conftest import INITIAL, LIMIT, SEALER, TERMINATE, Stubs, notifications, session_request

JAN_10 = 1_768_046_400  # 2026-01-10 12:00 UTC, a Saturday


@pytest.fixture
async def client(app: App) -> AsyncIterator[aioredis.Redis]:
    assert app.redis is not None
    yield app.redis


@pytest.fixture
def billing(app: App, client: aioredis.Redis, clock: ManualClock) -> tuple[BillingAccounts, BillRun]:
    clock.advance(ms=JAN_10 * 1000 - clock.now_ms())
    config = billing_config.default()
    accounts = BillingAccounts(client, config, SEALER)
    assert app.catalogs is not None and app.database is not None
    book = InvoiceBook(app.database, config.issuer.id, config.issuer.number_prefix, SEALER)
    return accounts, BillRun(client, accounts, config, app.catalogs, clock, book)


async def postpaid_line(stubs: Stubs, accounts: BillingAccounts, msisdn: str, ba: str, at_s: int, **kw: object) -> str:
    sub = await stubs.subscriber(msisdn=msisdn, balance=0, plan=str(kw.get("plan", "mobile-postpaid")))
    await accounts.enrol(
        ba,
        account_id=sub.account_id,
        line=msisdn,
        customer_id="1",
        label="Customer 1",
        unit_path=tuple(kw.get("unit_path", ())),  # type: ignore[arg-type]
        plan_id=str(kw.get("plan", "mobile-postpaid")),
        credit_limit_micros=int(kw.get("limit", LIMIT)),  # type: ignore[call-overload]
        deposit_minor=0,
        at_s=at_s,
    )
    return sub.account_id


async def call(stubs: Stubs, msisdn: str, sid: str, seconds: int, to: str = "4915112345678") -> int:
    """A voice call (rating group 10 is voice in the sample catalog); returns the result code."""
    a = await stubs.charging.ChargeSession(
        session_request(
            sid, INITIAL, 0, [{"rating_group": 10, "requested": {"time_s": max(300, seconds)}}], msisdn, called_party=to
        )
    )
    if a.result_code != 2001:
        return int(a.result_code)
    b = await stubs.charging.ChargeSession(
        session_request(sid, TERMINATE, 1, [{"rating_group": 10, "used": {"time_s": seconds}}], msisdn, called_party=to)
    )
    return int(b.result_code)


async def test_postpaid_usage_is_recorded_with_each_debit_and_spends_headroom(
    stubs: Stubs, billing: tuple[BillingAccounts, BillRun], client: aioredis.Redis
) -> None:
    accounts, _run = billing
    acct = await postpaid_line(stubs, accounts, "491700000101", "C1", JAN_10)
    assert (await stubs.balance("491700000101")).balance_micros == LIMIT
    assert await call(stubs, "491700000101", "c1", 125) == 2001
    assert await call(stubs, "491700000101", "c2", 61, to="4930123456") == 2001
    flat = {str(k): str(v) for k, v in (await client.hgetall(keys.usage(acct))).items()}
    raw = [str(x) for x in await client.lrange(keys.usage_records(acct), 0, -1)]
    period = "2026-01"  # activated on the 10th: cycle day 10
    aggs, recs = aggregates(flat, period), records(raw, period)
    assert sum(a.units for a in aggs) == 186 and len(recs) == 2
    assert reconciles(aggs, recs)
    spent = sum(a.cost_micros for a in aggs)
    assert spent > 0
    assert (await stubs.balance("491700000101")).balance_micros == LIMIT - spent
    assert recs[0].destination == "4915112345678"


async def test_over_the_limit_gets_4012_and_crossings_are_notified_once(
    stubs: Stubs, billing: tuple[BillingAccounts, BillRun], app: App, r: redis.Redis
) -> None:
    accounts, _run = billing
    # 0.30 EUR limit: about 5 minutes of off-peak national calls
    acct = await postpaid_line(stubs, accounts, "491700000102", "C2", JAN_10, limit=300_000)
    codes = [await call(stubs, "491700000102", f"x{i}", 60) for i in range(12)]
    assert 2001 in codes and codes[-1] == 4012
    sub = await stubs.balance("491700000102")
    assert sub.balance_micros >= 0
    kinds = [f["kind"] for f in await notifications(app, r)]  # every one relayed, none twice
    assert not r.exists(keys.outbox(acct))
    assert kinds.count("credit_80") == 1 and kinds.count("credit_100") == 1


async def test_bill_run_issues_one_invoice_per_account_and_period_and_can_run_again(
    stubs: Stubs, billing: tuple[BillingAccounts, BillRun], client: aioredis.Redis, clock: ManualClock
) -> None:
    accounts, run = billing
    acct = await postpaid_line(stubs, accounts, "491700000103", "C3", JAN_10)
    assert await call(stubs, "491700000103", "a", 600) == 2001
    # Nothing is due before the period ends.
    assert (await run.run()).issued == 0
    clock.advance(seconds=31 * 86_400)  # 2026-02-10 12:00: the period ended at midnight
    assert await call(stubs, "491700000103", "b", 60) == 2001  # goes to the next period
    report = await run.run()
    assert (report.accounts, report.issued, report.failed) == (1, 1, 0)
    numbers = await run.book.numbers_of("C3")
    assert numbers == ["INV-00000001"]
    inv = await run.book.get(numbers[0])
    assert inv is not None
    assert inv.number == "INV-00000001" and inv.period_start.isoformat() == "2026-01-10"
    (section,) = inv.sections
    kinds = [c.kind for c in section.charges]
    assert kinds == ["RENTAL", "USAGE", "DISCOUNT"]
    assert section.charges[0].amount == 2500  # full month, activated on the cycle day
    assert len(section.usage) == 1 and section.usage[0].units == 600
    state = {str(k): str(v) for k, v in (await client.hgetall(bill_keys.invoice_state("C3", numbers[0]))).items()}
    assert int(state["total"]) == inv.total and state["status"] == "OPEN"
    # The invoiced usage no longer holds headroom; the next period's call does.
    flat = {str(k): str(v) for k, v in (await client.hgetall(keys.usage(acct))).items()}
    assert all(k.startswith("2026-02|") for k in flat)
    feb_cost = sum(a.cost_micros for a in aggregates(flat, "2026-02"))
    assert (await stubs.balance("491700000103")).balance_micros == LIMIT - feb_cost
    # Running again issues nothing more.
    again = await run.run()
    assert again.issued == 0
    assert len(await run.book.numbers_of("C3")) == 1


async def test_an_interrupted_run_completes_without_a_second_invoice(
    stubs: Stubs, billing: tuple[BillingAccounts, BillRun], client: aioredis.Redis, clock: ManualClock
) -> None:
    accounts, run = billing
    await postpaid_line(stubs, accounts, "491700000104", "C4", JAN_10)
    await postpaid_line(stubs, accounts, "491700000105", "C4", JAN_10)
    assert await call(stubs, "491700000104", "a", 100) == 2001
    assert await call(stubs, "491700000105", "b", 200) == 2001
    clock.advance(seconds=31 * 86_400)
    # Crash after the periods were closed on the lines, before the invoice was issued.
    info = await accounts.get("C4")
    lines = await accounts.lines("C4")
    period = periods.by_id(info["next_period"], int(info["cycle_day"]), info["time_zone"])
    ahead = periods.pack(periods.open_periods(periods.following(period, info["time_zone"]), info["time_zone"]))
    await run._many([c for line in lines for c in _close_commands(line.account_id, period, ahead)])
    report = await run.run()
    assert report.issued == 1
    (number,) = await run.book.numbers_of("C4")
    inv = await run.book.get(number)
    assert inv is not None
    assert sorted(u.units for s in inv.sections for u in s.usage) == [100, 200]
    # A crash after issuing, before the usage was purged: the run again finds it issued.
    await client.hset(bill_keys.billing_account("C4"), "next_period", info["next_period"])
    assert await run.bill("C4", clock.now_ms() // 1000) == "ALREADY " + number


async def test_invoice_numbers_are_gapless_across_accounts(
    stubs: Stubs, billing: tuple[BillingAccounts, BillRun], client: aioredis.Redis, clock: ManualClock
) -> None:
    accounts, run = billing
    for i in range(6):
        await postpaid_line(stubs, accounts, f"49170000020{i}", f"G{i}", JAN_10)
    clock.advance(seconds=31 * 86_400)
    assert (await run.run(concurrency=4)).issued == 6
    numbers = []
    for i in range(6):
        numbers += await run.book.numbers_of(f"G{i}")
    numbers.sort()
    assert numbers == [f"INV-{n:08d}" for n in range(1, 7)]
    runs = await run.book.runs(1)
    assert runs[0]["issued"] == 6
