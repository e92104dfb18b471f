"""The postpaid checkers of the fault-injection suite catch what they claim to: each is
given a consistent book (no violation) and books with one thing wrong (a violation)."""

from __future__ import annotations

import dataclasses
from datetime import date, datetime
from zoneinfo import ZoneInfo

import grpc
import pytest

from chaos import postpaid_checks as pc
from chaos.history import History
from chaos.postpaid import BillingOp, Paid, Postpaid, as_of
from charging.money import to_minor
from postpaid import config as billing_config

LINE = "491709900000"
# A session (s1) split by the close of the first period: two records in it, one after.
S1 = (
    pc.UsageRecord("1:s:s1:1:10", LINE, "s1", "voice", 1_000, 60, 50_000),
    pc.UsageRecord("1:s:s1:2:10", LINE, "s1", "voice", 2_000, 30, 25_000),
    pc.UsageRecord("1:s:s1:3:10", LINE, "s1", "voice", 3_000, 60, 50_000),
)
SMS = pc.UsageRecord("1:e:e1", LINE, "e1", "sms", 1_500, 1, 70_000)
RECORDS = (*S1, SMS)


def invoice(
    number: int, start: date, end: date, rows: tuple[pc.UsageRow, ...], total: int = 1_000, ba: str = "C1"
) -> pc.IssuedInvoice:
    charges: dict[str, int] = {}
    for row in rows:
        charges[row.category] = charges.get(row.category, 0) + row.cost_micros
    return pc.IssuedInvoice(
        f"INV-{number:08d}",
        "issuer",
        "INV-",
        number,
        ba,
        "REGULAR",
        start,
        end,
        total,
        rows,
        tuple((cat, to_minor(micros)) for cat, micros in charges.items()),
    )


FIRST = invoice(
    1,
    date(2026, 11, 28),
    date(2026, 12, 27),
    (
        pc.UsageRow(LINE, 1_000, "voice", "NATIONAL_CALLS", 90, 75_000),
        pc.UsageRow(LINE, 1_500, "sms", "SMS", 1, 70_000),
    ),
)
SECOND = invoice(
    2, date(2026, 12, 28), date(2027, 1, 27), (pc.UsageRow(LINE, 3_000, "voice", "NATIONAL_CALLS", 60, 50_000),)
)


def test_invoice_numbers_are_gapless_and_unique() -> None:
    assert pc.numbers_gapless([FIRST, SECOND]) == []
    [gap] = pc.numbers_gapless([FIRST, dataclasses.replace(SECOND, number=3)])
    assert gap.check == "invoice_numbers" and "missing [2]" in gap.detail
    assert pc.numbers_gapless([FIRST, dataclasses.replace(SECOND, number=1)])  # a number twice
    assert pc.numbers_gapless([FIRST, dataclasses.replace(SECOND, invoice_id=FIRST.invoice_id)])


def test_an_invoice_a_bill_run_answered_is_kept() -> None:
    run = BillingOp(0, "bill_run", "", "2027-01-01", 0, 0.0, "ok", issued=(FIRST.invoice_id,))
    assert pc.runs_kept([run], [FIRST]) == []
    [lost] = pc.runs_kept([run], [SECOND])
    assert lost.check == "bill_runs" and FIRST.invoice_id in lost.detail
    assert pc.runs_kept([dataclasses.replace(run, outcome="unknown")], []) == []


def test_one_invoice_per_account_and_period() -> None:
    assert pc.one_per_period([FIRST, SECOND]) == []
    again = dataclasses.replace(SECOND, invoice_id="INV-00000003", number=3, period_start=FIRST.period_start)
    [twice] = pc.one_per_period([FIRST, again])
    assert twice.check == "one_invoice_per_period" and twice.account == "C1"
    # the same period on another account is that account's invoice
    assert pc.one_per_period([FIRST, dataclasses.replace(again, billing_account="C2")]) == []
    # a period skipped: its rental and usage never billed
    later = dataclasses.replace(SECOND, period_start=date(2027, 1, 28), period_end=date(2027, 2, 27))
    [skipped] = pc.one_per_period([FIRST, later])
    assert "no invoice for 2026-12-28..2027-01-27" in skipped.detail


def usage(invoices: list[pc.IssuedInvoice], records: tuple[pc.UsageRecord, ...] = RECORDS) -> list[str]:
    return [v.detail for v in pc.usage_invoiced(invoices, records, [LINE])]


def test_invoice_usage_is_the_usage_records_it_covers() -> None:
    assert usage([FIRST, SECOND]) == []
    # usage billed twice: the SMS on both invoices
    twice = dataclasses.replace(SECOND, usage=(*SECOND.usage, FIRST.usage[1]))
    assert usage([FIRST, dataclasses.replace(twice, usage_charges=(("NATIONAL_CALLS", 5), ("SMS", 7)))])
    # usage lost: the second period's invoice without the end of the session (its record
    # then adds up with the first invoice's row, which bills less than that)
    [lost] = usage([FIRST, dataclasses.replace(SECOND, usage=(), usage_charges=())])
    assert "says 90 units 75000 micros, its usage records 150 units 125000 micros" in lost
    # and an SMS on no invoice at all
    [unbilled] = usage(
        [dataclasses.replace(FIRST, usage=FIRST.usage[:1], usage_charges=(("NATIONAL_CALLS", 8),)), SECOND]
    )
    assert "1:e:e1 is on no invoice" in unbilled
    # a record the database lost that an invoice bills
    assert usage([FIRST, SECOND], (*S1,)) == [f"{FIRST.invoice_id}: row at 1500 (sms) has no usage record"]
    # an invoice row whose money is not its records'
    wrong = dataclasses.replace(FIRST.usage[0], cost_micros=75_001)
    [differs] = usage([dataclasses.replace(FIRST, usage=(wrong, FIRST.usage[1])), SECOND])
    assert "75001 micros" in differs and "75000 micros" in differs
    # a usage charge line that is not its itemised money rounded once
    [charged] = usage([dataclasses.replace(FIRST, usage_charges=(("NATIONAL_CALLS", 7), ("SMS", 7))), SECOND])
    assert "charges" in charged
    # usage worth less than half a minor unit is charged 0, shown or not
    tiny = invoice(3, date(2026, 11, 28), date(2026, 12, 27), (pc.UsageRow(LINE, 1_500, "sms", "SMS", 1, 4_000),))
    record = (dataclasses.replace(SMS, cost_micros=4_000),)
    assert tiny.usage_charges == (("SMS", 0),) and usage([tiny], record) == []
    assert usage([dataclasses.replace(tiny, usage_charges=())], record) == []
    [rounded_up] = usage([dataclasses.replace(tiny, usage_charges=(("SMS", 1),))], record)
    assert "charges" in rounded_up
    # records of other lines (prepaid) are not the invoices' business
    other = pc.UsageRecord("9:e:x", "491709999999", "x", "sms", 5, 1, 1)
    assert usage([FIRST, SECOND], (*RECORDS, other)) == []


def voice(at_ms: int, units: int, cost: int) -> pc.UsageRow:
    return pc.UsageRow(LINE, at_ms, "voice", "NATIONAL_CALLS", units, cost)


def test_usage_is_matched_exactly_when_the_clock_jumps_back() -> None:
    """A jump back of the server's clock repeats milliseconds: a session (a) has a record
    in the millisecond in which a later session (b), after a close, starts its row; and a
    session (c) made across the jump has its second record before its first. Rows are
    matched by what some split of the records adds up to, in the order the records were
    made, not by times (which matched the later session's row to a, and c's second record
    to nothing: "row says 60 units 30000 micros, its usage records 59 units")."""
    a = (
        pc.UsageRecord("1:s:a:1:10", LINE, "a", "voice", 1_000, 59, 30_000, order=1),
        pc.UsageRecord("1:s:a:2:10", LINE, "a", "voice", 2_000, 1, 0, order=2),
    )
    b = (pc.UsageRecord("1:s:b:1:10", LINE, "b", "voice", 2_000, 1, 30_000, order=1),)
    c = (
        pc.UsageRecord("1:s:c:1:10", LINE, "c", "voice", 5_000, 60, 50_000, order=1),
        pc.UsageRecord("1:s:c:2:10", LINE, "c", "voice", 4_000, 30, 25_000, order=2),
    )
    first = invoice(1, date(2026, 12, 1), date(2026, 12, 31), (voice(1_000, 60, 30_000), voice(5_000, 90, 75_000)))
    second = invoice(2, date(2027, 1, 1), date(2027, 1, 31), (voice(2_000, 1, 30_000),))
    assert usage([first, second], (*a, *b, *c)) == []
    # still exact: the record a made in that millisecond billed on the second invoice too
    doubled = dataclasses.replace(second, usage=(voice(2_000, 1, 30_000), voice(2_000, 1, 0)))
    [twice] = usage([first, doubled], (*a, *b, *c))
    assert twice == f"{second.invoice_id}: row at 2000 (voice) has no usage record"
    # and c's records merged under the time of its second, not its first
    moved = dataclasses.replace(first, usage=(voice(1_000, 60, 30_000), voice(4_000, 90, 75_000)))
    unbilled, differs = usage([moved, second], (*a, *b, *c))
    assert unbilled == "usage record 1:s:c:1:10 is on no invoice"
    assert "row at 4000 (voice) says 90 units 75000 micros, its usage records 30 units 25000 micros" in differs


def test_records_in_one_millisecond_are_told_apart_by_what_the_rows_add_up_to() -> None:
    """Two events of one line in one millisecond (a clock jump back), one on each invoice:
    either could be on either, the search finds the one assignment that uses every row."""
    e1 = pc.UsageRecord("1:e:e1", LINE, "e1", "sms", 1_000, 1, 70_000)
    e2 = pc.UsageRecord("1:e:e2", LINE, "e2", "sms", 1_000, 1, 70_000)
    sms = pc.UsageRow(LINE, 1_000, "sms", "SMS", 1, 70_000)
    first = invoice(1, date(2026, 12, 1), date(2026, 12, 31), (sms,))
    second = invoice(2, date(2027, 1, 1), date(2027, 1, 31), (sms,))
    assert usage([first, second], (e1, e2)) == []
    # one of them billed on both invoices: a row no record explains
    [twice] = usage([first, second], (e1,))
    assert twice.endswith(": row at 1000 (sms) has no usage record")
    # and one billed on neither
    assert usage([first, dataclasses.replace(second, usage=(), usage_charges=())], (e1, e2)) == [
        "usage record 1:e:e2 is on no invoice"
    ]


PAY = BillingOp(0, "pay", "C1", "CARD:r1", 500, 0.0, "ok", Paid(500, (("INV-00000001", 500),)))
ROW = pc.PaymentRow("C1", "CARD:r1", 500, applied=True, allocations=(("INV-00000001", 500),))


def test_no_acknowledged_payment_lost_and_none_applied_twice() -> None:
    repeat = dataclasses.replace(PAY, seq=1)
    assert pc.payments_kept([PAY, repeat], [ROW]) == []
    [lost] = pc.payments_kept([PAY], [])
    assert lost.check == "payments_kept" and "CARD:r1 acknowledged" in lost.detail
    assert pc.payments_kept([PAY], [dataclasses.replace(ROW, applied=False)])  # kept, never applied
    assert pc.payments_kept([PAY], [dataclasses.replace(ROW, amount_minor=501)])
    assert pc.payments_kept([PAY], [dataclasses.replace(ROW, allocations=(("INV-00000002", 500),))])
    assert pc.payments_kept([PAY], [ROW, ROW])  # kept twice
    [stranger] = pc.payments_kept([PAY], [ROW, pc.PaymentRow("C1", "CARD:r9", 1, True)])
    assert "of no request" in stranger.detail
    other = dataclasses.replace(PAY, seq=2, paid=Paid(500, (("INV-00000002", 500),)))
    assert any("answered differently" in v.detail for v in pc.payments_kept([PAY, other], [ROW]))
    # an unknown outcome, then nothing kept: nothing was acknowledged, nothing is missing
    unknown = dataclasses.replace(PAY, outcome="unknown", paid=None)
    assert pc.payments_kept([unknown], []) == []


def test_an_audit_entry_for_every_payment() -> None:
    entry = pc.AuditedPayment("C1", "CARD:r1")
    assert pc.payments_audited([ROW], [entry]) == []
    [none] = pc.payments_audited([ROW], [pc.AuditedPayment("C2", "CARD:r1")])
    assert none.check == "payments_audited" and "0 audit entries" in none.detail
    assert pc.payments_audited([ROW], [entry, entry])


@pytest.mark.parametrize(
    ("balance", "open_minor", "credit", "violated"),
    [
        (1_500, 1_500, 0, False),  # invoiced 2,000 - paid 500
        (1_500, 1_600, 100, False),  # an overpayment on an invoice paid: credit
        (1_000, 1_000, 0, True),  # a payment applied twice
        (1_500, 1_400, 0, True),  # an invoice's open amount not what is owed
    ],
)
def test_receivables_balance_per_account(balance: int, open_minor: int, credit: int, violated: bool) -> None:
    account = pc.Receivable("C1", balance, credit, open_minor)
    found = pc.receivables_balance([FIRST, SECOND], [ROW], [account])
    assert bool(found) is violated, found


def test_what_is_paid_covers_the_oldest_invoices_first() -> None:
    per_invoice = (("INV-00000001", 500), ("INV-00000002", 1_000))
    account = pc.Receivable("C1", 1_500, 0, 1_500, per_invoice)
    assert pc.receivables_balance([FIRST, SECOND], [ROW], [account]) == []
    # the account's sums agree, but the payment paid the newer invoice
    swapped = dataclasses.replace(account, open_by_invoice=(("INV-00000001", 1_000), ("INV-00000002", 500)))
    assert len(pc.receivables_balance([FIRST, SECOND], [ROW], [swapped])) == 2
    # an overpayment's credit paid the next invoice when it was issued: no allocation row
    over = pc.PaymentRow("C1", "CARD:r2", 1_200, applied=True, allocations=(("INV-00000001", 1_000),))
    paid_on = pc.Receivable("C1", 800, 0, 800, (("INV-00000001", 0), ("INV-00000002", 800)))
    assert pc.receivables_balance([FIRST, SECOND], [over], [paid_on]) == []
    # more allocated to an invoice than it has paid
    greedy = dataclasses.replace(over, allocations=(("INV-00000001", 1_000), ("INV-00000002", 900)))
    [too_much] = pc.receivables_balance([FIRST, SECOND], [greedy], [paid_on])
    assert "900 allocated" in too_much.detail


def test_bill_runs_as_of_whole_months_ahead() -> None:
    assert as_of(1, date(2026, 11, 30)) == "2026-12-30"
    assert as_of(3, date(2026, 11, 30)) == "2027-02-28"  # the last of a shorter month
    assert as_of(2, date(2026, 12, 1)) == "2027-02-01"


async def test_bill_runs_are_dated_from_the_server_s_clock() -> None:
    """Clock faults move the server's wall clock months ahead (31-day jumps), and the server
    refuses an ``as_of`` before its today: the last bill run, dated from this machine's
    clock, was once refused and left the usage since the last invoice on no invoice."""
    assert billing_config.default().time_zone == "Europe/Berlin"  # the zone bill dates are in
    # Half past midnight in the billing time zone: still 31 March in UTC.
    ahead = datetime(2027, 4, 1, 0, 30, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()
    async with grpc.aio.insecure_channel("127.0.0.1:1") as channel:  # never called
        biller = Postpaid(1, channel, History([]), [], 0.0, now_s=lambda: ahead)
        assert biller.bill_date(3) == "2027-07-01"


async def test_the_last_bill_run_refused_is_a_failed_run() -> None:
    """It must invoice everything used: its refusal is reported as such (a run while the
    load lasts may be refused, e.g. dated before a clock jump)."""
    async with grpc.aio.insecure_channel("127.0.0.1:1") as channel:  # never called
        biller = Postpaid(1, channel, History([]), [], 0.0)
    during = BillingOp(0, "bill_run", "", "2027-01-01", 0, 1.0, outcome="refused", error="INVALID_ARGUMENT: as_of")
    last = BillingOp(1, "bill_run", "", "2027-03-01", 0, 9.0, outcome="refused", error="INVALID_ARGUMENT: as_of")
    last.resolved = True
    answered = BillingOp(2, "bill_run", "", "2027-03-01", 0, 9.5, outcome="ok", resolved=True)
    for op in (during, last, answered):
        biller.ledger.add(op)
    assert biller.failed_runs() == [last]
