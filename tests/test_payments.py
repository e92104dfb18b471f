"""Payments, refunds, credit notes, disputes, adjustments and dunning on real Redis."""

from __future__ import annotations

import json
from datetime import date
from importlib import resources
from typing import Any

import pytest
import redis.asyncio as aioredis

from charging import keys
from charging.cdr_relay import CdrRelay, drain
from charging.cdr_store import CdrStore
from charging.clock import ManualClock
from charging.errors import Conflict, InvalidRequest, LimitExceeded
from charging.server import App
from postpaid import config as billing_config
from postpaid import keys as bill_keys
from postpaid.billing import Billing
from postpaid.dunning import ServiceState
from postpaid.invoices import Invoice
from postpaid.payments import MAX_MINOR
from tests.conftest import LIMIT, SEALER, LineBook, Stubs, enrol, payer, postpaid_line
from tests.test_bill_run import call

DAY = 86_400


async def invoiced(stubs: Stubs, b: Billing, book: LineBook, clock: ManualClock, ba: str, msisdn: str) -> Invoice:
    await enrol(stubs, b, ba, msisdn)
    book.lines[msisdn] = {"state": "active", "order_id": "new"}
    assert await call(stubs, msisdn, "s1", 300) == 2001
    clock.advance(seconds=31 * DAY)
    assert (await b.runs.run()).issued == 1
    (number,) = await b.invoices_of("C" + ba)
    return await b.invoice(number)


async def test_payments_allocate_oldest_first_keep_credit_and_are_idempotent(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock, app: App
) -> None:
    b, book = postpaid_billing
    first = await invoiced(stubs, b, book, clock, "7", "491700000301")
    clock.advance(seconds=31 * DAY)
    await b.runs.run()
    numbers = await b.invoices_of("C7")
    assert len(numbers) == 2 and numbers[0] == first.number
    second = await b.invoice(numbers[1])
    # The second invoice carries the first as previous balance.
    assert second.previous_balance == first.total and second.total_due == first.total + second.total
    part = await b.payments.pay("C7", first.total - 100, "BANK_TRANSFER", "ref-1")
    assert part["allocations"] == {first.number: first.total - 100}
    again = await b.payments.pay("C7", first.total - 100, "BANK_TRANSFER", "ref-1")
    assert again["replayed"] and again["allocations"] == part["allocations"]
    with pytest.raises(Conflict):
        await b.payments.pay("C7", 1, "BANK_TRANSFER", "ref-1")
    with pytest.raises(InvalidRequest, match="amount_minor"):
        await b.payments.pay("C7", 0, "BANK_TRANSFER", "ref-2")
    rest = await b.payments.pay("C7", 100 + second.total + 777, "CARD", "ref-3")
    assert rest["allocations"] == {first.number: 100, second.number: second.total}
    info = await b.account("C7")
    assert (int(info["credit"]), int(info["balance"])) == (777, -777)
    assert (await b.invoice_state(first.number))["status"] == "PAID"
    with pytest.raises(LimitExceeded):
        await b.payments.refund("C7", 778, "rf-1", "customer asked")
    await b.payments.refund("C7", 700, "rf-1", "customer asked")
    assert int((await b.account("C7"))["credit"]) == 77
    # The remaining credit pays the next invoice first.
    clock.advance(seconds=31 * DAY)
    await b.runs.run()
    third = (await b.invoices_of("C7"))[-1]
    assert int((await b.invoice_state(third))["open"]) == (await b.invoice(third)).total - 77


class Stopped(Exception):
    """The process dies here."""


async def test_a_payment_record_left_by_a_stop_before_its_delete_expires_and_postgresql_answers(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    b, book = postpaid_billing
    inv = await invoiced(stubs, b, book, clock, "14", "491700000308")
    record = bill_keys.payment("C14", "CARD", "stop-1")
    real = b.payments.client.delete

    async def stop_at_the_record(*names: str) -> int:
        if record in names:
            raise Stopped
        return int(await real(*names))

    # The outcome is committed in PostgreSQL, then the process dies before its delete.
    monkeypatch.setattr(b.payments.client, "delete", stop_at_the_record)
    with pytest.raises(Stopped):
        await b.payments.pay("C14", inv.total, "CARD", "stop-1")
    monkeypatch.undo()
    assert await b.payments.ledger.pending() == []
    # The record pay.lua wrote expires on its own (the idempotency period, not for ever).
    assert 0 < await b.client.ttl(record) <= b.payments.idempotency_ttl_s
    account = await b.account("C14")
    await b.client.delete(record)  # what its expiry does
    again = await b.payments.pay("C14", inv.total, "CARD", "stop-1")  # answered from PostgreSQL
    assert again["replayed"] and again["allocations"] == {inv.number: inv.total}
    assert await b.account("C14") == account  # no money moved again
    assert not await b.client.exists(record)


async def test_overpayments_stop_at_the_credit_an_account_may_hold(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock, app: App
) -> None:
    b, book = postpaid_billing
    first = await invoiced(stubs, b, book, clock, "8", "491700000302")
    # the invoice takes its total; the rest of the largest payment is credit, up to MAX_MINOR
    await b.payments.pay("C8", MAX_MINOR, "BANK_TRANSFER", "big-1")
    await b.payments.pay("C8", first.total, "BANK_TRANSFER", "big-2")
    info = await b.account("C8")
    assert (int(info["credit"]), int(info["balance"])) == (MAX_MINOR, -MAX_MINOR)
    with pytest.raises(LimitExceeded):
        await b.payments.pay("C8", 1, "CARD", "big-3")
    assert int((await b.account("C8"))["credit"]) == MAX_MINOR
    await b.payments.refund("C8", 5, "rf-8", "customer asked")
    await b.payments.pay("C8", 5, "CARD", "big-4")
    info = await b.account("C8")
    assert (int(info["credit"]), int(info["balance"])) == (MAX_MINOR, -MAX_MINOR)


async def test_disputes_hold_amounts_out_of_dunning_and_resolve_by_credit_note_or_rejection(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock, app: App
) -> None:
    b, book = postpaid_billing
    inv = await invoiced(stubs, b, book, clock, "8", "491700000302")
    with pytest.raises(InvalidRequest, match="amount_minor"):
        await b.payments.open_dispute("d1", inv.number, inv.total + 1, "too much", "agent-1")
    d = await b.payments.open_dispute("d1", inv.number, inv.total, "roaming I never used", "agent-1")
    assert d["status"] == "OPEN"
    # Fully disputed: far past due, nothing happens.
    clock.advance(seconds=40 * DAY)
    decision = await b.collection.evaluate("C8")
    assert decision.actions == () and decision.state is ServiceState.ACTIVE
    await b.payments.resolve_dispute("d1", True, "roaming charges were wrong", "agent-2")
    resolved = await b.payments.dispute("d1")
    assert resolved["status"] == "ACCEPTED" and resolved["credit_note"].startswith("CN-")
    state = await b.invoice_state(inv.number)
    assert (state["open"], state["disputed"], state["status"]) == ("0", "0", "PAID")
    # The issued invoice is unchanged: the correction is the credit note.
    assert (await b.invoice(inv.number)).total == inv.total
    with pytest.raises(Conflict):
        await b.payments.resolve_dispute("d1", False, "no", "agent-2")


async def test_dunning_walks_the_ladder_once_and_a_payment_restores(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock, app: App
) -> None:
    b, book = postpaid_billing
    inv = await invoiced(stubs, b, book, clock, "9", "491700000303")
    assert app.redis is not None
    client: aioredis.Redis = app.redis
    due_day = inv.due
    # Jump to 21 days past due: catch up to barring with only that step's notice, the
    # second reminder's late fee charged once.
    clock.advance(seconds=((due_day - date(2026, 2, 10)).days + 21) * DAY)
    d1 = await b.collection.evaluate("C9")
    assert d1.state is ServiceState.BARRED_OUTGOING
    assert [o[2] for o in book.orders] == ["BAR_OUTGOING"]
    assert book.lines["491700000303"]["state"] == "barred_outgoing"
    pending = [str(x) for x in await client.lrange(bill_keys.billing_pending("C9"), 0, -1)]
    assert len(pending) == 1 and '"LATE_FEE"' in pending[0]
    outbox = [str(x) for x in await client.lrange(bill_keys.outbox("C9"), 0, -1)]
    assert [x.split(" ")[0] for x in outbox] == ["dunning_barring", "service_barred_outgoing"]
    # The line's headroom carries the overdue amount.
    sub = await stubs.balance("491700000303")
    assert sub.balance_micros == LIMIT - inv.total * 10_000
    # Running again the same day: nothing more.
    d2 = await b.collection.evaluate("C9")
    assert d2.actions == ()
    assert await client.llen(bill_keys.billing_pending("C9")) == 1 and len(book.orders) == 1
    # Payment of the whole amount: restored at once, reconnection fee on the next invoice.
    await b.payments.pay("C9", inv.total, "APP", "p-9")
    assert book.lines["491700000303"]["state"] == "active"
    assert [o[2] for o in book.orders] == ["BAR_OUTGOING", "RESUME"]
    assert (await b.account("C9"))["state"] == "ACTIVE"
    assert (await stubs.balance("491700000303")).balance_micros == LIMIT
    pending = [str(x) for x in await client.lrange(bill_keys.billing_pending("C9"), 0, -1)]
    assert any('"RECONNECTION_FEE"' in p for p in pending)
    # The next invoice issued carries the late fee and the reconnection fee.
    await b.runs.run()
    following = await b.invoice((await b.invoices_of("C9"))[1])
    kinds = sorted(c.kind for c in following.account_charges)
    assert kinds == ["LATE_FEE", "RECONNECTION_FEE"]


async def test_adjustments_are_audited_and_idempotent(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock, app: App
) -> None:
    b, book = postpaid_billing
    await invoiced(stubs, b, book, clock, "10", "491700000304")
    a = await b.payments.adjust("adj-1", "C10", -500, "goodwill for an outage", "agent-7")
    assert a["amount"] == -500
    assert (await b.payments.adjust("adj-1", "C10", -500, "goodwill for an outage", "agent-7")) == a
    with pytest.raises(Conflict):
        await b.payments.adjust("adj-1", "C10", -600, "goodwill for an outage", "agent-7")
    with pytest.raises(InvalidRequest, match="reason"):
        await b.payments.adjust("adj-2", "C10", 100, " ", "agent-7")
    assert app.redis is not None
    audit: list[tuple[str, dict[str, str]]] = await app.redis.xrange(bill_keys.audit("C10"))  # type: ignore[assignment]
    assert [e[1]["action"] for e in audit] == ["adjustment"]
    clock.advance(seconds=31 * DAY)
    await b.runs.run()
    latest = await b.invoice((await b.invoices_of("C10"))[-1])
    assert [c.amount for c in latest.account_charges] == [-500]


async def test_a_terminated_line_gets_a_final_invoice_with_the_deposit_offset(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock, app: App
) -> None:
    b, _book = postpaid_billing
    sub = await stubs.subscriber(msisdn="491700000305", balance=0, plan="mobile-postpaid")
    common: dict[str, Any] = {
        "line": postpaid_line("491700000305", sub.account_id, "11"),
        "plan_id": "mobile-postpaid",
        "customer": payer(LIMIT, deposit=100_000_000),  # 100.00 EUR deposit
        "paying_unit": "",
        "unit_path": (),
        "label": "Customer",
    }
    await b.line_changed(state="active", **common)
    assert await call(stubs, "491700000305", "f1", 120) == 2001
    clock.advance(seconds=9 * DAY)  # terminated on 2026-01-19, the 10th day of the period
    await b.line_changed(state="terminated", **common)
    (number,) = await b.invoices_of("C11")
    final = await b.invoice(number)
    assert final.kind == "FINAL"
    rental = final.sections[0].charges[0]
    assert (rental.kind, rental.quantity) == ("RENTAL", 10) and "10/31 days" in rental.description
    assert [c.kind for c in final.sections[0].charges][1] == "USAGE"
    assert [(c.kind, c.amount) for c in final.account_charges] == [("DEPOSIT", -10_000)]
    # The line has left the account: the period's bill run has nothing to bill.
    clock.advance(seconds=31 * DAY)
    assert (await b.runs.run()).issued == 0
    assert await b.invoices_of("C11") == [number]
    # Terminated again (a repeated acknowledgement): no second final invoice.
    await b.line_changed(state="terminated", **common)
    assert await b.invoices_of("C11") == [number]


@pytest.mark.parametrize(("policy", "left"), [("REFUND_ON_REQUEST", 3_000_000), ("FORFEIT", 0)])
async def test_a_terminated_prepaid_line_keeps_or_forfeits_its_balance(
    stubs: Stubs, app: App, clock: ManualClock, policy: str, left: int
) -> None:
    assert app.redis is not None and app.catalogs is not None
    config = billing_config.parse({**_billing_doc(), "prepaid_termination": policy})
    assert app.database is not None
    b = Billing(app.redis, config, app.catalogs, clock, database=app.database, sealer=SEALER)
    sub = await stubs.subscriber(msisdn="491700000306", balance=3_000_000, plan="mobile-prepaid")
    line = postpaid_line("491700000306", sub.account_id, "12", customer_type="MOBILE_PREPAID")
    kw: dict[str, Any] = {"line": line, "plan_id": "mobile-prepaid", "customer": payer()}
    for _ in range(2):
        await b.line_changed(state="terminated", paying_unit="", unit_path=(), label="x", **kw)
    assert (await stubs.balance("491700000306")).balance_micros == left
    # The closure's audit entry was written by its script, in the account's record outbox,
    # once; the relay moves it to the audit table.
    assert await app.redis.llen(keys.cdr_outbox(sub.account_id)) == 1
    await drain(CdrRelay(app.redis, CdrStore(app.database), clock))
    async with app.database.connection() as conn:
        rows = await (
            await conn.execute("SELECT action, details FROM audit WHERE subject = %s", (f"account:{sub.account_id}",))
        ).fetchall()
    closing = {"policy": policy, "closing_balance_micros": "3000000", "forfeited_micros": str(3_000_000 - left)}
    assert [(action, details) for action, details in rows if action == "prepaid_closed"] == [
        ("prepaid_closed", closing)
    ]


def _billing_doc() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(resources.files("postpaid").joinpath("billing.json").read_text())
    return doc


async def test_sixty_days_overdue_terminates_and_hands_over_to_collection(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock, app: App
) -> None:
    b, book = postpaid_billing
    inv = await invoiced(stubs, b, book, clock, "13", "491700000307")
    clock.advance(seconds=((inv.due - date(2026, 2, 10)).days + 61) * DAY)
    decision = await b.collection.evaluate("C13")
    assert decision.state is ServiceState.TERMINATED
    assert [o[2] for o in book.orders] == ["TERMINATE"]
    # Audited in PostgreSQL with the decision: every step on the invoice, the state, the hand-over.
    assert app.database is not None
    async with app.database.connection() as conn:
        cur = await conn.execute("SELECT action, details FROM audit WHERE subject = 'C13' ORDER BY entry_id")
        audit = await cur.fetchall()
    handed = [d for a, d in audit if a == "collection_handover"]
    assert handed == [{"amount_minor": inv.total, "caller": "internal"}]
    steps = sorted(d["step"] for a, d in audit if a == "dunning_step")
    assert steps == sorted(s.name for s in b.config.dunning.steps)
    assert [d["state"] for a, d in audit if a == "dunning_state"] == ["TERMINATED"]
    # Paying afterwards does not bring a terminated line back.
    await b.payments.pay("C13", inv.total, "CARD", "late")
    assert [o[2] for o in book.orders] == ["TERMINATE"]
