"""A settled invoice's state leaves Redis and PostgreSQL answers for it (revision 0016,
``postpaid/settled.py``): GetInvoice, a dispute and credit notes on a paid invoice after
its state went, the credit-note bound under concurrency, a credit note waiting to be
applied holding the switch back, a sweep stopped between its commit and its drop, and an
installation's paid states of before, a dunned invoice's steps. Real Redis (single and cluster), PostgreSQL and
the gRPC services."""

from __future__ import annotations

import asyncio
import shutil
from datetime import date
from pathlib import Path
from typing import Any

import grpc
import pytest

from charging.clock import ManualClock
from charging.errors import InvalidRequest
from charging.server import App
from charging.v1 import billing_pb2, billing_pb2_grpc
from postpaid import keys as bill_keys
from postpaid import settled
from postpaid.billing import Billing
from postpaid.delivery import DirectoryDelivery
from postpaid.invoices import Invoice
from postpaid.receivables import CreditNote
from tests.conftest import LineBook, Stubs, enrol
from tests.test_bill_run import call
from tests.test_payments import DAY, invoiced


async def paid(stubs: Stubs, b: Billing, book: LineBook, clock: ManualClock, n: str) -> Invoice:
    """An invoice of ``C<n>``, paid; its state still in Redis (queued for delivery)."""
    inv = await invoiced(stubs, b, book, clock, n, f"4917000006{n}")
    await b.payments.pay(inv.billing_account, inv.total, "BANK_TRANSFER", f"p-{n}")
    state = bill_keys.invoice_state(inv.billing_account, inv.number)
    assert await b.client.hget(state, "status") == "PAID"  # the delivery pass has it still
    return inv


async def settled_rows(app: App, number: str) -> int:
    assert app.database is not None
    async with app.database.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM settled_invoices WHERE invoice_id = %s", (number,))
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def credit(b: Billing, ba: str) -> int:
    return int((await b.account(ba)).get("credit") or 0)


async def test_a_paid_invoice_is_answered_from_postgresql_once_its_state_left_redis(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock, app: App
) -> None:
    b, book = postpaid_billing
    inv = await paid(stubs, b, book, clock, "61")
    ba, state = inv.billing_account, bill_keys.invoice_state(inv.billing_account, inv.number)
    await b.deliver_queued()  # no channel: it leaves the queue, and Redis
    assert not await b.client.exists(state)
    assert await settled_rows(app, inv.number) == 1
    billing = billing_pb2_grpc.BillingStub(stubs.channel)
    got = await billing.GetInvoice(billing_pb2.InvoiceId(number=inv.number))
    assert (got.total_minor, got.open_minor, got.disputed_minor, got.status) == (inv.total, 0, 0, "PAID")
    assert got.billing_account == ba
    # Nothing is open: nothing to dispute (as before, now from PostgreSQL).
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await billing.OpenDispute(
            billing_pb2.DisputeRequest(
                dispute_id="d-61", invoice_number=inv.number, amount_minor=100, reason="x", actor="a1"
            )
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "undisputed open amount (0)" in str(refused.value.details())
    # A credit note on it: bounded by PostgreSQL, its money is credit (nothing is open).
    part = inv.total // 3
    note = await billing.IssueCreditNote(
        billing_pb2.CreditNoteRequest(
            invoice_number=inv.number, amount_minor=part, reason="goodwill", key="cn-1", actor="a1"
        )
    )
    assert note.number.startswith("CN-") and await credit(b, ba) == part
    with pytest.raises(grpc.aio.AioRpcError) as too_much:
        await billing.IssueCreditNote(
            billing_pb2.CreditNoteRequest(
                invoice_number=inv.number, amount_minor=inv.total - part + 1, reason="more", key="cn-2", actor="a1"
            )
        )
    assert too_much.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"can still be credited ({inv.total - part})" in str(too_much.value.details())
    # A retry is the same credit note, once; the state did not come back.
    again = await b.payments.credit_note(inv.number, part, "goodwill", "cn-1")
    assert again["replayed"] and again["number"] == note.number and await credit(b, ba) == part
    assert not await b.client.exists(state)
    assert (await b.invoice_state(inv.number))["credited"] == str(part)
    # The rest can be credited, exactly.
    await b.payments.credit_note(inv.number, inv.total - part, "the rest", "cn-3")
    assert await credit(b, ba) == inv.total
    # An adjustment's Redis record goes once its outcome is committed; a retry queues nothing.
    doc = await b.payments.adjust("adj-61", ba, 250, "fee", "agent")
    assert not await b.client.exists(bill_keys.adjustment(ba, "adj-61"))
    assert await b.payments.adjust("adj-61", ba, 250, "fee", "agent") == doc
    assert await b.client.llen(bill_keys.billing_pending(ba)) == 1


async def test_two_credit_notes_at_once_cannot_both_pass_the_bound_of_a_settled_invoice(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock, app: App
) -> None:
    b, book = postpaid_billing
    inv = await paid(stubs, b, book, clock, "62")
    await b.deliver_queued()
    assert await settled_rows(app, inv.number) == 1
    more_than_half = inv.total // 2 + 1
    results: list[Any] = await asyncio.gather(
        *(b.payments.credit_note(inv.number, more_than_half, "goodwill", f"race-{k}") for k in range(2)),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["InvalidRequest", "dict"]
    assert await credit(b, inv.billing_account) == more_than_half


async def test_a_pending_credit_note_holds_the_switch_and_a_stopped_sweep_is_finished_once(
    stubs: Stubs,
    postpaid_billing: tuple[Billing, LineBook],
    clock: ManualClock,
    app: App,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    b, book = postpaid_billing
    inv = await paid(stubs, b, book, clock, "63")
    ba, state = inv.billing_account, bill_keys.invoice_state(inv.billing_account, inv.number)
    # A credit note committed and not applied yet (a crash before Redis): the invoice stays.
    draft = CreditNote("", ba, inv.number, 100, 0, "goodwill", "held", clock.now_ms() // 1000)
    entry = b.payments._entry("credit_note", ba, 100, "goodwill", "held", invoice=inv.number)
    await b.payments.ledger.record_credit_note(draft, entry)
    await b.deliver_queued()
    assert await b.client.exists(state) and await settled_rows(app, inv.number) == 0
    assert inv.number in await b.client.smembers(bill_keys.settled(ba))  # still a candidate

    # The job applies it (in Redis, on the state), then the sweep: stopped after its commit.
    async def killed(*_args: object) -> None:
        raise RuntimeError("killed between the commit and the drop")

    monkeypatch.setattr(b.payments.settled, "_drop", killed)
    with pytest.raises(RuntimeError):
        await b.apply_pending()
    assert await b.client.hget(state, "credited") == "100" and await credit(b, ba) == 100
    assert await settled_rows(app, inv.number) == 1 and await b.client.exists(state)
    # PostgreSQL answers now, and bounds a credit note (Redis's left-over state untouched).
    assert (await b.invoice_state(inv.number))["settled"] == "1"
    await b.payments.credit_note(inv.number, 50, "goodwill", "after")
    assert await b.client.hget(state, "credited") == "100" and await credit(b, ba) == 150
    with pytest.raises(InvalidRequest, match=str(inv.total - 150)):
        await b.payments.credit_note(inv.number, inv.total, "all", "too-much")
    # Restarted: the next pass finishes the drop, with one row; no money moved twice.
    monkeypatch.undo()
    await b.apply_pending()
    assert not await b.client.exists(state) and await settled_rows(app, inv.number) == 1
    assert inv.number not in await b.client.smembers(bill_keys.settled(ba))
    assert await credit(b, ba) == 150
    assert (await b.invoice_state(inv.number))["credited"] == "150"


async def test_paid_states_of_an_installation_before_0016_go_too(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock, app: App
) -> None:
    b, book = postpaid_billing
    inv = await paid(stubs, b, book, clock, "64")
    ba, state = inv.billing_account, bill_keys.invoice_state(inv.billing_account, inv.number)
    # As before: no candidates, delivered, and a credit note's copy.
    await b.client.delete(bill_keys.settled(ba), settled.SEEDED)
    await b.client.lrem(bill_keys.delivery_queue(ba), 0, inv.number)
    copy = bill_keys.credit_note_prefix(ba) + "CN-00000009"
    await b.client.set(copy, "{}")
    await b.apply_pending()
    assert await b.client.exists(state)  # nothing knew of it
    assert await settled.seed_once(b.client) == 1
    assert not await b.client.exists(copy)
    await b.apply_pending()
    assert not await b.client.exists(state) and await settled_rows(app, inv.number) == 1
    assert await settled.seed_once(b.client) is None  # once


async def test_a_dunned_invoice_once_paid_leaves_its_dunning_steps_too(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock, app: App
) -> None:
    b, book = postpaid_billing
    inv = await invoiced(stubs, b, book, clock, "65", "491700000665")
    ba, state = inv.billing_account, bill_keys.invoice_state(inv.billing_account, inv.number)
    await b.deliver_queued()
    clock.advance(seconds=((inv.due - date(2026, 2, 10)).days + 21) * DAY)  # barred, a late fee
    await b.collection.evaluate(ba)
    steps = bill_keys.billing_dunning_done(ba)
    assert any(str(m).startswith(inv.number + "|") for m in await b.client.smembers(steps))
    await b.payments.pay(ba, inv.total, "APP", "p-65")
    assert not await b.client.exists(state) and await settled_rows(app, inv.number) == 1
    assert not any(inv.number in str(m) for m in await b.client.smembers(steps))
    assert (await b.account(ba))["state"] == "ACTIVE"  # restored, as before


async def test_a_dispute_checked_before_its_invoice_settled_is_refused_as_nothing_open(
    stubs: Stubs,
    postpaid_billing: tuple[Billing, LineBook],
    clock: ManualClock,
    app: App,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    b, book = postpaid_billing
    inv = await invoiced(stubs, b, book, clock, "66", "491700000666")
    before = await b.invoice_state(inv.number)  # what the dispute's check read
    await b.deliver_queued()
    await b.payments.pay(inv.billing_account, inv.total, "APP", "p-66")  # settled: its state goes
    assert await settled_rows(app, inv.number) == 1

    async def stale(_number: str) -> dict[str, str]:
        return before

    monkeypatch.setattr(b.payments.settled, "state", stale)
    with pytest.raises(InvalidRequest, match=r"undisputed open amount \(0\)"):
        await b.payments.open_dispute("late", inv.number, 100, "x", "a1")
    monkeypatch.undo()
    assert (await b.payments.dispute("late"))["status"] == "REFUSED"
    assert (await b.invoice_state(inv.number))["disputed"] == "0"


async def test_the_upgrade_seeds_only_invoice_states_whatever_a_client_put_in_a_key(
    postpaid_billing: tuple[Billing, LineBook],
) -> None:
    b, _book = postpaid_billing
    client = b.client
    # Keys whose client-chosen part holds "}:is:" or "}:cn:" (a payment reference, a
    # dispute id): SCAN's glob matches them, yet they are no state and no copy.
    hostile = {
        "{bill.3}:pay:CARD:x}:is:INV-00000001": "digest|{}",
        "{bill.3}:pay:CN:k}:cn:CN-00000001": "digest|{}",
    }
    for key, value in hostile.items():
        await client.set(key, value)
    await client.hset("{bill.3}:disp:d}:is:INV-00000002", mapping={"open": "0", "status": "OPEN"})
    state, copy = "{bill.3}:is:INV-00000042", "{bill.3}:cn:CN-00000007"
    await client.hset(state, mapping={"ba": "C3", "open": "0", "status": "PAID"})
    await client.set(copy, "{}")
    await client.delete(settled.SEEDED, bill_keys.settled_shard(3))
    assert await settled.seed_once(client) == 1
    assert await client.smembers(bill_keys.settled_shard(3)) == {"INV-00000042"}
    assert not await client.exists(copy)
    assert [await client.get(key) for key in hostile] == list(hostile.values())
    assert await client.hget("{bill.3}:disp:d}:is:INV-00000002", "status") == "OPEN"


async def test_a_payment_drops_only_its_own_invoices_and_the_job_drains_the_backlog(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock, app: App
) -> None:
    b, book = postpaid_billing
    accounts = ("67", "78", "92")  # one shard
    assert len({bill_keys.shard_of("C" + n) for n in accounts}) == 1
    for n in accounts:
        await enrol(stubs, b, n, f"4917000006{n}")
        book.lines[f"4917000006{n}"] = {"state": "active", "order_id": "new"}
        assert await call(stubs, f"4917000006{n}", "s1", 300) == 2001
    clock.advance(seconds=31 * DAY)
    assert (await b.runs.run()).issued == 3
    mine, *backlog = [await b.invoice((await b.invoices_of("C" + n))[0]) for n in accounts]
    shard = bill_keys.shard_of(mine.billing_account)
    # Paid and delivered before revision 0016: their states stayed; the upgrade seeds them.
    for inv in backlog:
        await b.payments.pay(inv.billing_account, inv.total, "BANK_TRANSFER", f"p-{inv.number}")
    await b.client.delete(bill_keys.DELIVERY_QUEUES[shard], bill_keys.SETTLED_SETS[shard], settled.SEEDED)
    assert await settled.seed_once(b.client) == 2
    # A payment settles its own invoice: its state goes, the backlog's stays for the job.
    await b.payments.pay(mine.billing_account, mine.total, "APP", "p-mine")
    assert await settled_rows(app, mine.number) == 1
    assert [await settled_rows(app, inv.number) for inv in backlog] == [0, 0]
    assert await b.client.smembers(bill_keys.SETTLED_SETS[shard]) == {inv.number for inv in backlog}
    await b.apply_pending()  # the billing_applications job's pass
    assert [await settled_rows(app, inv.number) for inv in backlog] == [1, 1]
    assert not await b.client.smembers(bill_keys.SETTLED_SETS[shard])
    assert not any([await b.client.exists(bill_keys.invoice_state(i.billing_account, i.number)) for i in backlog])


async def test_a_settled_invoices_delivery_is_its_latest_attempt_even_in_the_switchs_second(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock, app: App, tmp_path: Path
) -> None:
    b, book = postpaid_billing
    inv = await paid(stubs, b, book, clock, "68")
    clock.advance(ms=500)  # the switch half-way through a second
    await b.deliver_queued()  # no channel: PENDING, settled
    assert await settled_rows(app, inv.number) == 1
    folder = tmp_path / "out"
    folder.write_text("")  # a file where the directory goes: the channel fails, may pass
    b.deliveries = (("directory", DirectoryDelivery(folder)),)
    assert await b.resend(inv.number) == "RETRYING"  # in the switch's second (kept at whole seconds)
    state = await b.invoice_state(inv.number)
    assert (state["delivery"], state["delivered_on"]) == ("FAILED", "")
    assert state["delivery_detail"].startswith("directory: cannot write invoice files")
    clock.advance(seconds=1)
    assert await b.resend(inv.number) == "RETRYING"  # failed again, later
    folder.unlink()
    clock.advance(seconds=1)
    assert await b.resend(inv.number) == "DELIVERED"  # the latest attempt decides
    state = await b.invoice_state(inv.number)
    assert (state["delivery"], state["delivered_on"], state["delivery_detail"]) == ("DELIVERED", "directory", "")


async def test_a_pass_that_listed_an_invoice_another_pass_delivered_and_dropped_leaves_it_alone(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock, app: App, tmp_path: Path
) -> None:
    b, book = postpaid_billing
    inv = await paid(stubs, b, book, clock, "69")
    shard, state = bill_keys.shard_of(inv.billing_account), bill_keys.invoice_state(inv.billing_account, inv.number)
    queue = bill_keys.DELIVERY_QUEUES[shard]
    folder = tmp_path / "out"
    b.deliveries = (("directory", DirectoryDelivery(folder)),)
    listed = [str(n) for n in await b.client.lrange(queue, 0, -1)]  # pass A lists the queue
    assert listed == [inv.number]
    await b.deliver_queued()  # pass B delivers it; the sweep drops its state
    assert not await b.client.exists(state) and await settled_rows(app, inv.number) == 1
    shutil.rmtree(folder)
    folder.write_text("")  # A's delivery would fail, to be tried again
    # Pass A goes on with what it listed: not queued any more, so not delivered again.
    assert await b._deliver_listed(shard, inv.number) == 0
    assert (await attempts(app, inv.number), await b.client.exists(state), await b.client.llen(queue)) == (1, 0, 0)
    # Had it passed that check, its retry keeps to a state Redis holds: nothing made again.
    assert await b._deliver_queued(shard, inv.number) == 1
    assert (await attempts(app, inv.number), await b.client.exists(state), await b.client.llen(queue)) == (2, 0, 0)


async def attempts(app: App, number: str) -> int:
    assert app.database is not None
    async with app.database.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM invoice_deliveries WHERE invoice_id = %s", (number,))
        row = await cur.fetchone()
    return int(row[0]) if row else 0
