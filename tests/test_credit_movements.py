"""The accounts' credit as rows (revision 0014): every movement of an overpayment's credit
reaches ``credit_movements`` through the relay, once, and ``account_credit`` equals the
credit Redis holds. Real Redis and PostgreSQL."""

from __future__ import annotations

import psycopg
import pytest

from charging.cdr_relay import drain
from charging.clock import ManualClock
from charging.server import App
from postpaid import credit_movements
from postpaid import keys as bill_keys
from postpaid.billing import Billing
from postpaid.credit_movements import credit_of
from tests.conftest import LineBook, PostgresServer, Stubs, enrol
from tests.test_payments import DAY, invoiced


async def _rows(app: App, ba: str) -> list[tuple[str, str, str, str | None, int]]:
    assert app.database is not None
    async with app.database.connection() as conn, conn.cursor() as cur:
        await cur.execute(
            "SELECT movement, kind, source, invoice, amount_minor FROM credit_movements "
            "WHERE billing_account = %s ORDER BY at, movement",
            (ba,),
        )
        return [(str(m), str(k), str(s), i, int(a)) for m, k, s, i, a in await cur.fetchall()]


async def _relay(app: App, ba: str) -> int:
    assert app.cdr_relay is not None
    return await app.cdr_relay.relay_outboxes([bill_keys.credit_outbox(ba)])


async def _redis_credit(b: Billing, ba: str) -> int:
    return int((await b.account(ba)).get("credit") or 0)


async def test_an_overpayment_its_use_and_its_refund_are_rows_that_sum_to_the_credit(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock, app: App
) -> None:
    b, book = postpaid_billing
    assert app.database is not None
    assert app.cdr_relay is not None and app.billing is not None
    # The server tells its relay of the outboxes its billing writes to; so does this one.
    assert app.billing.payments.on_credit == app.billing.runs.on_credit == app.cdr_relay.wake_outbox
    relay = app.cdr_relay
    told: list[str] = []

    def wake_outbox(outbox: str) -> None:
        told.append(outbox)
        relay.wake_outbox(outbox)

    b.payments.on_credit = b.runs.on_credit = wake_outbox
    first = await invoiced(stubs, b, book, clock, "41", "491700000411")
    ba = "C41"
    # Overpaid: the invoice is paid, 5,000 stays as credit.
    await b.payments.pay(ba, first.total + 5_000, "BANK_TRANSFER", "over-1")
    assert await _redis_credit(b, ba) == 5_000
    # Relayed (by the server's relay job, woken by the payment, or by this drain): a row,
    # and the view equals Redis.
    await drain(app.cdr_relay)
    assert await _rows(app, ba) == [("pay:BANK_TRANSFER:over-1", "overpaid", "BANK_TRANSFER:over-1", None, 5_000)]
    assert await credit_of(app.database, ba) == 5_000
    # The next bill run settles the new invoice from the credit: an "applied" row.
    clock.advance(seconds=31 * DAY)
    del told[:]
    await b.runs.run()
    assert told == [bill_keys.credit_outbox(ba)]  # the bill run told the relay
    second = (await b.invoices_of(ba))[-1]
    total = (await b.invoice(second)).total
    used = min(total, 5_000)
    assert used > 0
    assert await _redis_credit(b, ba) == 5_000 - used
    # A second payment (more than is open) and a refund of part of the credit.
    open_ = int((await b.invoice_state(second))["open"])
    await b.payments.pay(ba, open_ + 900, "CARD", "over-2")
    await b.payments.refund(ba, 400, "rf-1", "customer asked")
    credit = await _redis_credit(b, ba)
    assert credit == 5_000 - used + 900 - 400
    # The relay was told of the outbox by the bill run and each payment (and finds it by
    # name when it scans: a kept outbox of every shard).
    assert told == [bill_keys.credit_outbox(ba)] * 3
    await drain(app.cdr_relay)  # what the server's own relay job, woken too, has not moved yet
    assert [(m, k, i, a) for m, k, _s, i, a in await _rows(app, ba)] == [
        ("pay:BANK_TRANSFER:over-1", "overpaid", None, 5_000),
        ("inv:" + second, "applied", second, used),
        ("pay:CARD:over-2", "overpaid", None, 900),
        ("pay:REFUND:rf-1", "refunded", None, 400),
    ]
    assert await credit_of(app.database, ba) == credit
    assert await app.redis.llen(bill_keys.credit_outbox(ba)) == 0  # type: ignore[union-attr]


async def test_a_relay_repeated_after_its_commit_keeps_each_movement_once_and_rows_are_immutable(
    stubs: Stubs,
    postpaid_billing: tuple[Billing, LineBook],
    clock: ManualClock,
    app: App,
    postgres_server: PostgresServer,
    database_url: str,
) -> None:
    b, book = postpaid_billing
    assert app.database is not None and app.redis is not None and app.cdr_relay is not None
    relay = app.cdr_relay
    first = await invoiced(stubs, b, book, clock, "42", "491700000421")
    ba = "C42"
    outbox = bill_keys.credit_outbox(ba)
    await drain(relay)  # the call's usage records: nothing else is on its way

    class Crash(Exception):
        pass

    async def crash() -> None:
        raise Crash

    # Every relay round from here commits and then "crashes" before its trim: the
    # server's own relay job (it finds the outbox on its next look) as well as this test's.
    relay.after_commit = crash
    await b.payments.pay(ba, first.total + 300, "CARD", "twice")
    # A repeated payment request moves nothing again (answered from billing_applied).
    await b.payments.pay(ba, first.total + 300, "CARD", "twice")
    assert await app.redis.llen(outbox) == 1  # type: ignore[misc]
    with pytest.raises(Crash):
        await _relay(app, ba)
    # Committed, not trimmed: the next round reads the same entry again.
    assert len(await _rows(app, ba)) == 1
    assert await app.redis.llen(outbox) == 1  # type: ignore[misc]
    relay.after_commit = None
    relay.wake_outbox(outbox)  # as its next look at the outboxes known by name would
    await drain(relay)
    assert await app.redis.llen(outbox) == 0  # type: ignore[misc]
    assert len(await _rows(app, ba)) == 1
    assert await credit_of(app.database, ba) == await _redis_credit(b, ba) == 300
    # Immutable, even for the tables' owner.
    with psycopg.connect(postgres_server.owner_of(database_url), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="immutable"):
            conn.execute("UPDATE credit_movements SET amount_minor = 1 WHERE billing_account = %s", (ba,))
        with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="immutable"):
            conn.execute("DELETE FROM credit_movements WHERE billing_account = %s", (ba,))


async def test_a_credit_note_and_a_negative_invoice_move_the_credit_as_rows_too(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock, app: App
) -> None:
    b, book = postpaid_billing
    assert app.database is not None
    first = await invoiced(stubs, b, book, clock, "43", "491700000431")
    ba = "C43"
    half = first.total // 2
    assert half > 0
    await b.payments.pay(ba, half, "CARD", "part")  # allocated: no credit moves
    # Credited in full: what the invoice no longer owes stays as credit.
    await b.payments.credit_note(first.number, first.total, "goodwill", "cn-1")
    clock.advance(seconds=31 * DAY)
    await b.runs.run()
    second = (await b.invoices_of(ba))[-1]
    open_second = int((await b.invoice_state(second))["open"])
    # A large manual credit makes the next invoice negative: it adds to the credit, which
    # pays what is still open.
    await b.payments.adjust("adj-1", ba, -50_000, "goodwill", "tester")
    clock.advance(seconds=31 * DAY)
    await b.runs.run()
    third = (await b.invoices_of(ba))[-1]
    assert (await b.invoice(third)).total < 0
    await _relay(app, ba)
    rows = await _rows(app, ba)
    kinds = {(m, k) for m, k, _s, _i, _a in rows}
    assert ("pay:CN:cn-1", "credit_note") in kinds and ("inv:" + third, "negative_invoice") in kinds
    assert (("inv:" + third + ":" + second, "applied") in kinds) == (open_second > 0)
    assert await credit_of(app.database, ba) == await _redis_credit(b, ba) > 0


async def test_credit_held_before_the_upgrade_is_an_opening_movement_once(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock, app: App
) -> None:
    b, book = postpaid_billing
    assert app.database is not None and app.redis is not None
    old, moving = "C44", "C45"
    for customer, msisdn in (("44", "491700000441"), ("45", "491700000451")):
        await enrol(stubs, b, customer, msisdn)
        book.lines[msisdn] = {"state": "active", "order_id": "new"}
    clock.advance(seconds=31 * DAY)
    assert (await b.runs.run()).issued == 2
    # The server's relay job looks for outboxes when the clock has moved: it does so now, so
    # that it cannot relay a movement below before the test takes it away.
    await drain(app.cdr_relay)
    for customer in ("44", "45"):
        (number,) = await b.invoices_of("C" + customer)
        total = (await b.invoice(number)).total
        await b.payments.pay("C" + customer, total + 2_500, "CARD", "before-" + customer)
        # As an installation before revision 0014 left it: the credit, no movement.
        await app.redis.delete(bill_keys.credit_outbox("C" + customer))
        await app.redis.hdel(bill_keys.billing_account("C" + customer), "credit_rows")  # type: ignore[misc]
    # The moving account's next movement records the opening before itself.
    await b.payments.pay(moving, 100, "CARD", "after")
    # The upgrade's pass records the other's (the moving one has its opening already).
    await app.redis.delete(bill_keys.BILL_CREDITS_OPENED)
    assert await credit_movements.open_once(app.redis, clock.now_ms() // 1000) == 1
    assert await credit_movements.open_once(app.redis, clock.now_ms() // 1000) is None
    await app.redis.delete(bill_keys.BILL_CREDITS_OPENED)
    assert await credit_movements.open_once(app.redis, clock.now_ms() // 1000) == 0  # resumed: each once
    for ba in (old, moving):
        await _relay(app, ba)
    assert [(m, k, a) for m, k, _s, _i, a in await _rows(app, old)] == [("opening", "opening", 2_500)]
    assert sorted((m, k, a) for m, k, _s, _i, a in await _rows(app, moving)) == [
        ("opening", "opening", 2_500),
        ("pay:CARD:after", "overpaid", 100),
    ]
    for ba in (old, moving):
        assert await credit_of(app.database, ba) == await _redis_credit(b, ba)
