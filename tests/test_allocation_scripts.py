"""pay.lua and settle.lua against the allocation reference (postpaid/allocation.py), on a
real Redis: random open invoices and credit, then payments, credit notes and refunds
through ``Payments``, and invoices (positive or negative) issued by bill runs; after each,
every invoice's open amount, the open list, the credit, the balance and the allocations
are what the reference says."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charging.clock import ManualClock
from charging.database import open_pool
from charging.errors import LimitExceeded
from charging.server import App
from postpaid import config as billing_config
from postpaid import keys as bill_keys
from postpaid.accounts import BillingAccounts
from postpaid.allocation import Standing, credit_note, issue, pay, refund
from postpaid.bill_run import BillRun
from postpaid.invoice_book import InvoiceBook
from postpaid.payments import Payments
from tests.conftest import SEALER, Stubs
from tests.test_bill_run import JAN_10, postpaid_line

ACCOUNTS = itertools.count(1)


@pytest.fixture
async def payments(redis_url: str, database_url: str) -> AsyncIterator[Payments]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    config = billing_config.default()
    pool = await open_pool(database_url, 2)
    yield Payments(
        client, config, ManualClock(), InvoiceBook(pool, config.issuer.id, config.issuer.number_prefix, SEALER)
    )
    await pool.close()
    await client.aclose()


async def seeded(client: aioredis.Redis, open_: list[int], credit: int) -> tuple[str, Standing]:
    """A billing account with these open invoices (oldest first) and credit."""
    n = next(ACCOUNTS)
    ba = f"P{n}"
    standing = Standing(tuple((f"T{n}-{i}", a) for i, a in enumerate(open_)), credit, sum(open_) - credit)
    await client.hset(
        bill_keys.billing_account(ba), mapping={"credit": credit, "balance": standing.balance, "moves": 0}
    )
    for number, amount in standing.open:
        state = {"ba": ba, "total": amount, "open": amount, "disputed": 0, "due": 0, "status": "OPEN"}
        await client.hset(bill_keys.invoice_state(ba, number), mapping=state)
        await client.rpush(bill_keys.billing_open(ba), number)
    return ba, standing


async def stored(client: aioredis.Redis, ba: str, numbers: list[str]) -> tuple[Standing, dict[str, str]]:
    """The account's standing as Redis has it, and each invoice's status."""
    account = await client.hgetall(bill_keys.billing_account(ba))
    credit, balance = int(account.get("credit", 0)), int(account.get("balance", 0))
    listed = await client.lrange(bill_keys.billing_open(ba), 0, -1)
    opened = [(n, int(await client.hget(bill_keys.invoice_state(ba, n), "open") or 0)) for n in listed]
    status = {n: str(await client.hget(bill_keys.invoice_state(ba, n), "status")) for n in numbers}
    return Standing(tuple(opened), credit, balance), status


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    open_=st.lists(st.integers(1, 5000), max_size=4),
    credit=st.sampled_from([0, 0, 300]),
    moves=st.lists(
        st.tuples(st.sampled_from(["pay", "pay", "credit", "refund"]), st.integers(1, 6000), st.integers(0, 9)),
        min_size=1,
        max_size=4,
    ),
)
async def test_pay_script_allocates_as_the_reference_says(
    payments: Payments, open_: list[int], credit: int, moves: list[tuple[str, int, int]]
) -> None:
    client = payments.client
    ba, expected = await seeded(client, open_, credit)
    numbers = [n for n, _ in expected.open]
    creditable = dict(expected.open)  # what each invoice can still be credited
    for k, (kind, amount, which) in enumerate(moves):
        allocations: tuple[tuple[str, int], ...] = ()
        if kind == "pay":
            record = await payments.pay(ba, amount, "BANK_TRANSFER", f"{ba}-{k}")
            expected, allocations = (o := pay(expected, amount)).standing, o.allocations
        elif kind == "refund" and amount > expected.credit:
            with pytest.raises(LimitExceeded):
                await payments.refund(ba, amount, f"{ba}-{k}", "asked")
            record = {"allocations": {}}
        elif kind == "refund":
            record = await payments.refund(ba, amount, f"{ba}-{k}", "asked")
            record["allocations"] = {}
            expected = refund(expected, amount)
        else:
            if not numbers:
                continue
            invoice = numbers[which % len(numbers)]
            amount = min(amount, creditable[invoice])
            if amount == 0:
                continue
            record = await payments.credit_note(invoice, amount, "goodwill", f"{ba}-{k}")
            creditable[invoice] -= amount
            expected, allocations = (o := credit_note(expected, invoice, amount)).standing, o.allocations
        assert list(record["allocations"].items()) == list(allocations)
        got, status = await stored(client, ba, numbers)
        assert got == expected
        assert status == {n: "OPEN" if expected.open_of(n) else "PAID" for n in numbers}


DAY = 86_400


@pytest.fixture
def bill_run(app: App, clock: ManualClock) -> tuple[BillingAccounts, BillRun, Payments]:
    assert app.redis is not None and app.catalogs is not None
    config = billing_config.default()
    accounts = BillingAccounts(app.redis, config, SEALER)
    assert app.database is not None
    book = InvoiceBook(app.database, config.issuer.id, config.issuer.number_prefix, SEALER)
    return (
        accounts,
        BillRun(app.redis, accounts, config, app.catalogs, clock, book),
        Payments(app.redis, config, clock, book),
    )


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    moves=st.lists(
        # an invoice is about 21 (the first, prorated) or 30 EUR: these make some negative,
        # some paid in part, some paid from credit
        st.lists(
            st.tuples(st.sampled_from(["pay", "adjust"]), st.sampled_from([-6000, -4000, -1000, 700, 2000, 5000])),
            max_size=2,
        ),
        min_size=1,
        max_size=3,
    )
)
async def test_issue_script_pays_new_invoices_from_credit_as_the_reference_says(
    stubs: Stubs,
    bill_run: tuple[BillingAccounts, BillRun, Payments],
    clock: ManualClock,
    moves: list[list[tuple[str, int]]],
) -> None:
    """Each period: payments (credit when nothing is open) and adjustments (a large credit
    makes the invoice negative), then the bill run issues the period's invoice."""
    accounts, run, payments = bill_run
    client = payments.client
    n = next(ACCOUNTS)
    ba = f"H{n}"
    clock.advance(ms=JAN_10 * 1000 - clock.now_ms())
    await postpaid_line(stubs, accounts, f"4917300{n:05d}", ba, JAN_10)
    numbers: list[str] = []
    for k, period_moves in enumerate(moves):
        for j, (kind, amount) in enumerate(period_moves):
            if kind == "pay" and amount > 0:
                await payments.pay(ba, amount, "CARD", f"{ba}-{k}-{j}")
            elif kind == "adjust" and amount:
                await payments.adjust(f"{ba}-{k}-{j}", ba, amount, "test", "tester")
        before, _ = await stored(client, ba, numbers)
        clock.advance(seconds=31 * DAY)
        number = await run.bill(ba, clock.now_ms() // 1000)
        assert number is not None and not number.startswith("ALREADY")
        numbers.append(number)
        total = int(await client.hget(bill_keys.invoice_state(ba, number), "total") or 0)
        expected = issue(before, number, total)
        got, status = await stored(client, ba, numbers)
        assert got == expected
        assert status == {n: "OPEN" if expected.open_of(n) else "PAID" for n in numbers}
