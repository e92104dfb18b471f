"""Billing at the edges: records out of order, late joiners, termination after a period
ended, credit notes and credit, forged placeholders, promises, charges after the last line."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiosmtpd.controller import Controller

from charging import keys
from charging.clock import ManualClock
from charging.errors import InvalidRequest
from charging.money import split_evenly
from charging.server import App
from charging.v1 import common_pb2, topup_pb2
from postpaid import config as billing_config
from postpaid import keys as bill_keys
from postpaid import periods
from postpaid.accounts import BillingAccounts
from postpaid.bill_run import BillRun
from postpaid.billing import Billing, DeliveryStalled
from postpaid.delivery import DirectoryDelivery, SmtpDelivery, SmtpSettings
from postpaid.scripts import DUNNING, DunningArgs, DunningStep
from provisioning.orders import Order
from tests.conftest import LIMIT, SEALER, LineBook, Stubs, enrol, free_port, payer, postpaid_line
from tests.test_bill_run import call
from tests.test_delivery import Mailbox
from tests.test_payments import DAY, invoiced


async def terminate(b: Billing, customer: str, account_id: str, msisdn: str) -> None:
    """The network acknowledged the line's termination."""
    await b.line_changed(
        line=postpaid_line(msisdn, account_id, customer),
        state="terminated",
        plan_id="mobile-postpaid",
        customer=payer(),
        paying_unit="",
        unit_path=(),
        label="Customer",
    )


async def test_records_out_of_order_at_a_period_boundary_are_all_billed_and_purged(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock, app: App
) -> None:
    b, _book = postpaid_billing
    acct = await enrol(stubs, b, "20", "491700000401")
    assert await call(stubs, "491700000401", "a", 60) == 2001
    client: aioredis.Redis = app.redis  # type: ignore[assignment]
    # Two servers' clocks apart at the boundary: a record of the next period lands between
    # two of this period's.
    first = [str(x) for x in await client.lrange(keys.usage_records(acct), 0, -1)]
    nxt = first[0].replace("2026-01,", "2026-02,", 1).replace(",a", ",b")
    late = first[0].replace(",a", ",c")
    await client.rpush(keys.usage_records(acct), nxt, late)
    field = next(iter(await client.hkeys(keys.usage(acct))))
    units, cost, n = (int(x) for x in str(await client.hget(keys.usage(acct), field)).split(","))
    await client.hset(keys.usage(acct), field, f"{2 * units},{2 * cost},{2 * n}")
    await client.hset(keys.usage(acct), field.replace("2026-01", "2026-02", 1), f"{units},{cost},1")
    clock.advance(seconds=31 * DAY)
    assert (await b.runs.run()).issued == 1
    (number,) = await b.invoices_of("C20")
    inv = await b.invoice(number)
    assert len(inv.sections[0].usage) == 2  # both January records, none of February
    left = [str(x) for x in await client.lrange(keys.usage_records(acct), 0, -1)]
    assert left == [nxt]


async def test_a_line_that_joined_while_a_period_was_billed_is_billed_with_the_next(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock, app: App
) -> None:
    b, _book = postpaid_billing
    await enrol(stubs, b, "21", "491700000402")
    clock.advance(seconds=31 * DAY)
    assert (await b.runs.run()).issued == 1  # January is billed
    # A second line enrolled with the open periods read before that run: January first.
    sub = await stubs.subscriber(msisdn="491700000403", balance=0, plan="mobile-postpaid")
    client: aioredis.Redis = app.redis  # type: ignore[assignment]
    jan = periods.by_id("2026-01", 10, "Europe/Berlin")
    bp = periods.pack(periods.open_periods(jan, "Europe/Berlin"))
    await client.hset(keys.account(sub.account_id), mapping={"bp": bp, "credit_limit": LIMIT, "balance": LIMIT})
    await client.hset(bill_keys.billing_lines("C21"), sub.account_id, '{"line": "491700000403", "unit_path": []}')
    joined_at = jan.end_s - 2 * 3600  # activated two hours before January's period ended
    await client.rpush(bill_keys.line_history(sub.account_id), f"{joined_at},active,mobile-postpaid")
    assert await call(stubs, "491700000403", "late", 60) == 2001  # recorded in January's bucket
    clock.advance(seconds=28 * DAY)
    report = await b.runs.run()
    assert (report.issued, report.failed) == (1, 0)
    february = await b.invoice((await b.invoices_of("C21"))[-1])
    joined = next(s for s in february.sections if s.line == "491700000403")
    assert [u.units for u in joined.usage] == [60]
    # Its rental covers the days it had in January as well as February.
    rentals = [c for c in joined.charges if c.kind == "RENTAL"]
    assert len(rentals) == 2 and "2026-01-10 to 2026-02-09" in rentals[0].description
    assert rentals[0].quantity == 1 and rentals[1].quantity == 28


async def test_a_termination_after_a_period_ended_bills_that_period_then_the_final_one(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock, app: App
) -> None:
    b, _book = postpaid_billing
    acct = await enrol(stubs, b, "22", "491700000404", deposit=50_000_000)
    assert await call(stubs, "491700000404", "jan", 60) == 2001
    clock.advance(seconds=33 * DAY)  # February 12: January ended, not billed yet
    assert await call(stubs, "491700000404", "feb", 120) == 2001
    await terminate(b, "22", acct, "491700000404")
    regular, final = [await b.invoice(n) for n in await b.invoices_of("C22")]
    assert (regular.kind, final.kind) == ("REGULAR", "FINAL")
    assert regular.period_end == date(2026, 2, 9)
    # The final invoice ends on the day the line terminated, not a month later.
    assert (final.period_start, final.period_end) == (date(2026, 2, 10), date(2026, 2, 12))
    assert [u.units for u in regular.sections[0].usage] == [60]
    assert [u.units for u in final.sections[0].usage] == [120]
    assert [c.kind for c in final.account_charges] == ["DEPOSIT"]
    assert (await b.account("C22"))["deposit"] == "0"  # used up: never offset twice


async def test_credit_notes_are_bounded_and_their_surplus_pays_older_invoices(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock, app: App
) -> None:
    b, book = postpaid_billing
    first = await invoiced(stubs, b, book, clock, "23", "491700000405")
    clock.advance(seconds=31 * DAY)
    await b.runs.run()
    second_number = (await b.invoices_of("C23"))[-1]
    second = await b.invoice(second_number)
    await b.payments.pay("C23", first.total, "CARD", "pay-1")  # the oldest invoice, in full
    with pytest.raises(InvalidRequest, match="amount_minor"):
        await b.payments.credit_note(first.number, first.total + 1, "too much", "cn-0")
    # The first invoice is paid: crediting it pays the second, still open.
    note = await b.payments.credit_note(first.number, 300, "goodwill", "cn-1")
    assert note["number"].startswith("CN-") and note["allocations"] == {second_number: 300}
    assert int((await b.invoice_state(second_number))["open"]) == second.total - 300
    assert int((await b.account("C23"))["credit"]) == 0
    with pytest.raises(InvalidRequest):
        await b.payments.credit_note(first.number, first.total, "again", "cn-2")
    # The next invoice lists the credit note.
    clock.advance(seconds=31 * DAY)
    await b.runs.run()
    third = await b.invoice((await b.invoices_of("C23"))[-1])
    assert any(note["number"] in n and "3.00 EUR" in n and first.number in n for n in third.notes)


async def test_placeholders_in_a_reference_or_reason_cannot_forge_the_record(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock
) -> None:
    b, book = postpaid_billing
    inv = await invoiced(stubs, b, book, clock, "24", "491700000406")
    record = await b.payments.pay("C24", 100, "BANK_TRANSFER", "@@ALLOCATIONS@@")
    assert record["reference"] == "@@ALLOCATIONS@@" and record["allocations"] == {inv.number: 100}
    again = await b.payments.pay("C24", 100, "BANK_TRANSFER", "@@ALLOCATIONS@@")
    assert again["replayed"]
    note = await b.payments.credit_note(inv.number, 50, "@@NUMBER@@ \x01NUMBER\x01", "cn-x")
    assert note["reason"] == "@@NUMBER@@ \x01NUMBER\x01" and note["number"].startswith("CN-")


async def test_promises_to_pay_are_bounded(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock
) -> None:
    b, book = postpaid_billing
    await invoiced(stubs, b, book, clock, "25", "491700000407")
    today = b.collection.today()
    with pytest.raises(InvalidRequest, match="until"):
        await b.collection.promise("C25", today + timedelta(days=365), "agent")
    with pytest.raises(InvalidRequest, match="until"):
        await b.collection.promise("C25", today - timedelta(days=1), "agent")
    await b.collection.promise("C25", today + timedelta(days=10), "agent")


async def test_charges_after_the_last_line_ended_are_still_invoiced(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock, app: App
) -> None:
    b, _book = postpaid_billing
    acct = await enrol(stubs, b, "26", "491700000408")
    await terminate(b, "26", acct, "491700000408")
    clock.advance(seconds=31 * DAY)
    assert (await b.runs.run()).issued == 0  # nothing left to bill: off the run index
    await b.payments.adjust("late-adj", "C26", 700, "equipment not returned", "agent-3")
    assert (await b.runs.run()).issued == 1
    latest = await b.invoice((await b.invoices_of("C26"))[-1])
    assert [(c.kind, c.amount) for c in latest.account_charges] == [("ADJUSTMENT", 700)]
    assert latest.sections == ()


async def test_a_bundle_bought_on_a_postpaid_line_is_invoiced(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock
) -> None:
    b, _book = postpaid_billing
    await enrol(stubs, b, "27", "491700000409")
    bought = await stubs.topup.BuyBundle(
        topup_pb2.BuyBundleRequest(
            subscriber=common_pb2.SubscriberId(msisdn="491700000409"),
            bundle_id="data-1gb",
            channel=topup_pb2.CHANNEL_APP,
            idempotency_key="bb-1",
        )
    )
    assert bought.result == topup_pb2.PURCHASE_RESULT_PURCHASED
    price = LIMIT - (await stubs.balance("491700000409")).balance_micros
    assert price > 0
    clock.advance(seconds=31 * DAY)
    await b.runs.run()
    inv = await b.invoice((await b.invoices_of("C27"))[-1])
    bundles = [c for c in inv.sections[0].charges if c.category == "BUNDLES"]
    assert [(c.description, c.amount * 10_000) for c in bundles] == [("Bundles bought", price)]
    assert (await stubs.balance("491700000409")).balance_micros == LIMIT  # invoiced: headroom back


async def test_an_invoice_waits_in_the_queue_while_the_mail_server_is_down(
    stubs: Stubs, app: App, clock: ManualClock, tmp_path: Path
) -> None:
    assert app.redis is not None and app.catalogs is not None
    port = free_port()
    smtp = SmtpDelivery(SmtpSettings(host="127.0.0.1", port=port, sender="billing@operator.example", timeout_s=10))
    folder = DirectoryDelivery(tmp_path)
    assert app.database is not None
    b = Billing(
        app.redis,
        billing_config.default(),
        app.catalogs,
        clock,
        deliveries=[("email", smtp), ("directory", folder)],
        database=app.database,
        sealer=SEALER,
    )
    clock.advance(ms=1_768_046_400_000 - clock.now_ms())
    await enrol(stubs, b, "28", "491700000410")
    await app.redis.hset(bill_keys.billing_account("C28"), "email", "customer@example.org")
    clock.advance(seconds=31 * DAY)
    await b.runs.run()
    (number,) = await b.invoices_of("C28")
    # The mail server is down: the directory has it, the mail waits, the job's pass fails.
    with pytest.raises(DeliveryStalled):
        await b.passes()["invoice_delivery"]()
    state = await b.invoice_state(number)
    assert (state["delivery"], state["delivered_on"]) == ("RETRYING", "directory")
    assert "cannot reach SMTP server" in state["delivery_detail"]
    assert (tmp_path / f"{number}.pdf").exists()
    (tmp_path / f"{number}.pdf").unlink()
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        await b.passes()["invoice_delivery"]()
    finally:
        controller.stop()
    state = await b.invoice_state(number)
    assert (state["delivery"], state["delivered_on"]) == ("DELIVERED", "directory,email")
    assert len(box.messages) == 1 and box.messages[0][0].rcpt_tos == ["customer@example.org"]
    assert not (tmp_path / f"{number}.pdf").exists()  # not written twice
    assert [await app.redis.llen(queue) for queue in bill_keys.DELIVERY_QUEUES] == [0] * bill_keys.SHARDS
    async with app.database.connection() as conn:
        cur = await conn.execute(
            "SELECT channel, delivered FROM invoice_deliveries WHERE invoice_id = %s ORDER BY attempt_id",
            (number,),
        )
        history = await cur.fetchall()
    assert history == [("email", False), ("directory", True), ("email", True)]


async def test_a_new_line_after_termination_for_non_payment_opens_a_new_billing_account(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock
) -> None:
    b, book = postpaid_billing
    inv = await invoiced(stubs, b, book, clock, "29", "491700000411")
    clock.advance(seconds=((inv.due - b.collection.today()).days + 61) * DAY)
    assert (await b.collection.evaluate("C29")).state.value == "TERMINATED"
    await enrol(stubs, b, "29", "491700000412")
    assert (await b.account("C29-2"))["lines"] == ["491700000412"]
    assert (await b.account("C29-2"))["state"] == "ACTIVE"


def test_split_evenly() -> None:
    assert split_evenly(10, 3) == [4, 3, 3]
    assert split_evenly(9, 3) == [3, 3, 3]
    assert split_evenly(5, 0) == []
    assert sum(split_evenly(50_000_001, 7)) == 50_000_001


async def test_lines_of_an_account_share_its_credit_limit(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock
) -> None:
    b, _book = postpaid_billing
    first = await enrol(stubs, b, "30", "491700000413")
    assert (await stubs.balance("491700000413")).balance_micros == LIMIT
    await enrol(stubs, b, "30", "491700000414")
    assert (await stubs.balance("491700000413")).balance_micros == LIMIT // 2
    assert (await stubs.balance("491700000414")).balance_micros == LIMIT // 2
    assert await call(stubs, "491700000414", "big", 60) == 2001
    spent = LIMIT // 2 - (await stubs.balance("491700000414")).balance_micros
    # The first line leaves: the other has the whole limit again, less what it spent.
    await terminate(b, "30", first, "491700000413")
    assert (await stubs.balance("491700000414")).balance_micros == LIMIT - spent


async def test_a_committed_dunning_decision_is_applied_once(app: App) -> None:
    # A decision is made and applied under the account's lock (payments take it too), so
    # dunning.lua no longer refuses stale decisions: it applies a committed one once.
    assert app.redis is not None
    await app.redis.hset(bill_keys.billing_account("C31"), mapping={"state": "ACTIVE", "epoch": 4})
    dunning_keys = (
        bill_keys.billing_dunning_done("C31"),
        bill_keys.billing_pending("C31"),
        bill_keys.billing_account("C31"),
        bill_keys.outbox("C31"),
        bill_keys.due_index("C31"),
    )
    steps = (DunningStep("INV-1|barring", '{"kind": "LATE_FEE"}', "note"),)
    args = DunningArgs("BARRED_OUTGOING", steps, 0)
    assert await DUNNING(app.redis, dunning_keys, args) == 1
    assert await DUNNING(app.redis, dunning_keys, args) == 0
    assert await app.redis.hget(bill_keys.billing_account("C31"), "state") == "BARRED_OUTGOING"
    assert await app.redis.hget(bill_keys.billing_account("C31"), "epoch") == "5"
    assert await app.redis.llen(bill_keys.billing_pending("C31")) == 1
    assert await app.redis.lrange(bill_keys.outbox("C31"), 0, -1) == ["note"]


class SlowNetworkBook(LineBook):
    """Orders wait for the network until ``acknowledge`` is called."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: dict[str, tuple[str, str]] = {}

    async def order(self, order_id: str, msisdn: str, kind: str, plan_id: str = "", reason: str = "") -> Order:
        if any(o[0] == order_id for o in self.orders):
            return Order(order_id, "IN_PROGRESS" if order_id in self.waiting else "COMPLETED")
        self.orders.append((order_id, msisdn, kind))
        self.waiting[order_id] = (msisdn, kind)
        self.lines[msisdn] = {**self.lines[msisdn], "order_id": order_id}
        return Order(order_id, "IN_PROGRESS")

    async def get_order(self, order_id: str) -> Order | None:
        if not any(o[0] == order_id for o in self.orders):
            return None
        return Order(order_id, "IN_PROGRESS" if order_id in self.waiting else "COMPLETED")

    def acknowledge(self) -> None:
        for order_id, (msisdn, kind) in list(self.waiting.items()):
            state = {"BAR_OUTGOING": "barred_outgoing", "SUSPEND": "suspended", "RESUME": "active"}[kind]
            self.lines[msisdn] = {"state": state, "order_id": order_id}
            del self.waiting[order_id]


async def test_a_payment_while_a_bar_is_on_its_way_resumes_the_line_once_barred(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock
) -> None:
    b, _ = postpaid_billing
    book = SlowNetworkBook()
    b.attach_lines(book)
    inv = await invoiced(stubs, b, book, clock, "32", "491700000415")
    clock.advance(seconds=((inv.due - b.collection.today()).days + 21) * DAY)
    await b.collection.evaluate("C32")  # BAR_OUTGOING ordered, not acknowledged yet
    assert [o[2] for o in book.orders] == ["BAR_OUTGOING"]
    await b.payments.pay("C32", inv.total, "CARD", "p-32")  # restored while the bar is pending
    assert (await b.account("C32"))["state"] == "ACTIVE"
    book.acknowledge()  # the network bars the line after all
    assert book.lines["491700000415"]["state"] == "barred_outgoing"
    await b.collection.run()  # the account is still watched: the line is resumed
    book.acknowledge()
    assert [o[2] for o in book.orders] == ["BAR_OUTGOING", "RESUME"]
    assert book.lines["491700000415"]["state"] == "active"
    await b.collection.run()
    assert [o[2] for o in book.orders] == ["BAR_OUTGOING", "RESUME"]  # settled: nothing more


async def test_usage_invoiced_but_not_purged_is_never_billed_again(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock, app: App
) -> None:
    b, _book = postpaid_billing
    acct = await enrol(stubs, b, "33", "491700000416")
    assert await call(stubs, "491700000416", "j", 60) == 2001
    client: aioredis.Redis = app.redis  # type: ignore[assignment]
    january_agg = await client.hgetall(keys.usage(acct))
    january_recs = await client.lrange(keys.usage_records(acct), 0, -1)
    clock.advance(seconds=31 * DAY)
    assert (await b.runs.run()).issued == 1
    # As if the purge after issuing had failed: January's usage is still stored.
    await client.hset(keys.usage(acct), mapping=january_agg)
    await client.rpush(keys.usage_records(acct), *january_recs)
    headroom = (await stubs.balance("491700000416")).balance_micros
    clock.advance(seconds=31 * DAY)
    assert (await b.runs.run()).issued == 1
    february = await b.invoice((await b.invoices_of("C33"))[-1])
    assert february.sections[0].usage == () and not [c for c in february.sections[0].charges if c.kind == "USAGE"]
    assert (await stubs.balance("491700000416")).balance_micros == headroom  # nothing given back twice
    assert await client.llen(keys.usage_records(acct)) == 0  # and the leftovers are gone now
    bp = str(await client.hget(keys.account(acct), "bp"))
    assert [p for p, _ in periods.unpack(bp)] == ["2026-03", "2026-04", "2026-05"]


async def test_a_final_invoice_racing_a_bill_run_bills_the_line_once(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock, app: App
) -> None:
    b, _book = postpaid_billing
    await enrol(stubs, b, "34", "491700000417")
    leaving = await enrol(stubs, b, "34", "491700000418")
    assert await call(stubs, "491700000417", "s1", 60) == 2001
    assert await call(stubs, "491700000418", "s2", 120) == 2001
    clock.advance(seconds=30 * DAY + 9 * 3600)  # 2026-02-09 21:00 UTC: January's period not over
    after_end = clock.now_ms() // 1000 + 4 * 3600  # a bill run whose clock says it is over

    class Racing(BillingAccounts):
        """The bill run's reading of the account, with the line's termination landing
        between that reading and the issue."""

        reads = 0

        async def get(self, ba: str) -> dict[str, str]:
            state = await super().get(ba)
            Racing.reads += 1
            if Racing.reads == 2:  # inside invoice(), just before composing
                await terminate(b, "34", leaving, "491700000418")
            return state

    assert app.redis is not None and app.catalogs is not None
    racing = BillRun(app.redis, Racing(app.redis, b.config, SEALER), b.config, app.catalogs, clock, b.book)
    outcomes = await racing.bill_due("C34", after_end)
    numbers = await b.invoices_of("C34")
    invoices = [await b.invoice(n) for n in numbers]
    assert [i.kind for i in invoices] == ["FINAL", "REGULAR"] and len(outcomes) == 1
    final, regular = invoices
    assert [s.line for s in final.sections] == ["491700000418"]
    assert [s.line for s in regular.sections] == ["491700000417"]  # the leaving line once, on the final
    assert sum(len(s.usage) for i in invoices for s in i.sections) == 2


async def test_an_accepted_dispute_credits_what_is_left_and_releases_its_hold(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock
) -> None:
    b, book = postpaid_billing
    inv = await invoiced(stubs, b, book, clock, "35", "491700000419")
    held = inv.total - 100
    await b.payments.open_dispute("dx", inv.number, held, "roaming", "agent")
    await b.payments.credit_note(inv.number, inv.total - 50, "billing error", "cn-35")  # only 50 left to credit
    done = await b.payments.resolve_dispute("dx", True, "accepted in part", "agent")
    assert done["status"] == "ACCEPTED"
    state = await b.invoice_state(inv.number)
    assert (state["disputed"], state["credited"]) == ("0", str(inv.total))
    again = await b.payments.resolve_dispute("dx", True, "said again, otherwise", "agent")  # a retry
    assert again["credit_note"] == done["credit_note"]


async def test_a_postpaid_line_cannot_be_topped_up(stubs: Stubs, postpaid_billing: tuple[Billing, LineBook]) -> None:
    import grpc

    b, _book = postpaid_billing
    await enrol(stubs, b, "36", "491700000420")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.topup.Recharge(
            topup_pb2.RechargeRequest(
                subscriber=common_pb2.SubscriberId(msisdn="491700000420"),
                amount_micros=10_000_000,
                channel=topup_pb2.CHANNEL_RETAIL,
                idempotency_key="r-36",
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "postpaid" in (err.value.details() or "")
    assert (await stubs.balance("491700000420")).balance_micros == LIMIT


async def test_a_new_line_on_an_account_that_had_ended_starts_in_the_current_period(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock
) -> None:
    b, _book = postpaid_billing
    first = await enrol(stubs, b, "37", "491700000421")
    await terminate(b, "37", first, "491700000421")
    clock.advance(seconds=150 * DAY)  # 9 June: the account has not been billed since January
    assert (await b.runs.run()).issued == 0
    await enrol(stubs, b, "37", "491700000422")
    account = await b.account("C37")
    assert account["next_period"] == "2026-05"  # 10 May - 9 June, the period running
    clock.advance(seconds=5 * DAY)
    assert (await b.runs.run()).issued == 1  # that period only: no invoices for the months between
