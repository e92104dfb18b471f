"""``charging bill-run --as-of`` and ``charging dunning --as-of`` against a real server: a
line activated today is billed as of a month ahead (its usage keeps its time), the
reports say what happened, the ladder is walked as of later days and an account dunned
as of a later day is never looked at as of an earlier one again (a payment, the periodic
run); ``charging invoices`` for an unknown account says so."""

from __future__ import annotations

import grpc
import pytest
import redis

from charging.clock import ManualClock
from charging.server import App
from charging.v1 import billing_pb2, billing_pb2_grpc, crm_pb2, crm_pb2_grpc
from postpaid import keys as bill_keys
from tests.conftest import set_time
from tests.test_cli import cli
from tests.test_crm_cli import SAMPLES, activate, ok, sample

MSISDN = sample("individual-postpaid.json")["msisdn"]


async def postpaid_customer(app: App, clock: ManualClock) -> None:
    """The individual sample applied on 2026-11-18 10:13 UTC (bill cycle day 18), its
    line active, a call, a data session and an SMS made."""
    set_time(clock, "2026-11-18T10:13:00+00:00")
    ok(await cli(app, "crm", "apply", str(SAMPLES / "individual-postpaid.json")))
    await activate(app)
    ok(await cli(app, "session", "--msisdn", MSISDN, "--rating-group", "10", "--used", "90", "--called", "4930123456"))
    ok(
        await cli(
            app, "session", "--msisdn", MSISDN, "--rating-group", "30", "--unit", "total_octets", "--used", "5000000"
        )
    )
    ok(await cli(app, "event", "--msisdn", MSISDN, "--rating-group", "20"))


async def test_a_period_is_billed_as_of_a_later_day_and_the_report_says_what_happened(
    app: App, clock: ManualClock
) -> None:
    await postpaid_customer(app, clock)
    nothing = ok(await cli(app, "bill-run"))
    assert nothing.splitlines() == [
        "bill run as of 2026-11-18: 0 accounts due, 0 invoiced, 0 already invoiced, 0 skipped, 0 failed",
        "next period end: 2026-12-18",
    ]
    mistakes = {
        "2026-11-17": "as_of: must not be before today (2026-11-18 in Europe/Berlin), got 2026-11-17",
        "2026-12-32": "as_of: must be a day YYYY-MM-DD, got '2026-12-32'",
        "20261218": "as_of: must be a day YYYY-MM-DD, got '20261218'",
        "2027-11-20": "as_of: must be at most 366 days after today (2026-11-18)",
    }
    for day, message in mistakes.items():
        for command in ("bill-run", "dunning"):
            run = await cli(app, command, "--as-of", day)
            assert (run.code, run.err) == (2, f"error: INVALID_ARGUMENT: {message}\n"), (command, day)
    assert ok(await cli(app, "bill-run", "--as-of", "2026-12-17")).startswith(
        "bill run as of 2026-12-17: 0 accounts due"
    )

    billed = ok(await cli(app, "bill-run", "--as-of", "2026-12-18"))
    assert billed.splitlines() == [
        "bill run as of 2026-12-18: 1 account due, 1 invoiced, 0 already invoiced, 0 skipped, 0 failed",
        "  issued INV-00000001",
        "next period end: 2027-01-18",
    ]
    listing = ok(await cli(app, "invoices", "--billing-account", "C1"))
    assert listing.startswith("INV-00000001  2026-11-18..2026-12-17  total ")
    assert "due 2027-01-01  OPEN" in listing
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
    billing = billing_pb2_grpc.BillingStub(channel)
    invoice = await billing.GetInvoice(billing_pb2.InvoiceId(number="INV-00000001"))
    crm = crm_pb2_grpc.CrmStub(channel)
    await crm.OpenDispute(
        crm_pb2.Dispute(customer_id="1", invoice="INV-00000001", amount_minor=100, reason="a call I did not make")
    )
    await channel.close()
    assert invoice.issued == "2026-12-18"
    shown = ok(await cli(app, "crm", "customer", "1"))
    assert "disputes:\n  crm-1  INV-00000001  1.00  OPEN  'a call I did not make'\n" in shown
    items = invoice.document_json
    assert "NATIONAL_CALLS" in items and "DATA" in items and "SMS" in items  # usage kept its real time
    # Billed again as of the same day: nothing is due any more.
    again = ok(await cli(app, "bill-run", "--as-of", "2026-12-18", "--json"))
    assert '"accounts"' not in again and '"as_of": "2026-12-18"' in again

    unknown = await cli(app, "invoices", "--billing-account", "C99")
    assert (unknown.code, unknown.err) == (1, "error: no billing account C99\n")


async def test_skipped_accounts_are_reported_with_the_reason(app: App, clock: ManualClock, r: redis.Redis) -> None:
    set_time(clock, "2026-11-18T10:13:00+00:00")
    r.zadd(bill_keys.due_index("C404"), {"C404": 1_700_000_000})  # the due index names an account that is not there
    out = ok(await cli(app, "bill-run"))
    assert out.splitlines() == [
        "bill run as of 2026-11-18: 1 account due, 0 invoiced, 0 already invoiced, 1 skipped, 0 failed",
        "  skipped 1: no such account",
        "no further period to bill",
    ]


async def test_the_ladder_is_walked_as_of_later_days_and_stays_there_until_paid(
    app: App, clock: ManualClock, r: redis.Redis
) -> None:
    await postpaid_customer(app, clock)
    ok(await cli(app, "bill-run", "--as-of", "2026-12-18"))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
    billing = billing_pb2_grpc.BillingStub(channel)
    total = (await billing.GetInvoice(billing_pb2.InvoiceId(number="INV-00000001"))).total_minor
    assert total > 2 * 1000  # the barring step needs 10.00 overdue after the part paid
    ok(await cli(app, "pay", "--billing-account", "C1", "--amount", "5.00", "--reference", "bank-1"))
    left = total - 500

    def amount(minor: int) -> str:
        return f"{minor // 100:,}.{minor % 100:02d}"

    dunned = ok(await cli(app, "dunning", "--as-of", "2027-01-04"))  # due 2027-01-01, +3
    assert dunned.splitlines() == [
        "dunning as of 2027-01-04: 1 account evaluated, 1 action, 0 failed",
        f"  C1  ACTIVE  overdue {amount(left)}  reminder: EMAIL for INV-00000001",
    ]
    dunned = ok(await cli(app, "dunning", "--as-of", "2027-01-21"))  # +20: the fee of +10 and the bar
    assert dunned.splitlines()[1] == (
        f"  C1  BARRED_OUTGOING  overdue {amount(left)}  late fee 5.00 EUR for INV-00000001 (second_reminder); "
        "barring: SMS for INV-00000001; state BARRED_OUTGOING"
    )
    await activate(app)
    assert ok(await cli(app, "crm", "line", MSISDN)).startswith(f"line {MSISDN}: barred_outgoing")
    refused = await cli(app, "session", "--msisdn", MSISDN, "--rating-group", "10", "--called", "4930123456")
    assert refused.code == 1 and "4010" in refused.err

    # Today's run and a part payment look at the account as of 2027-01-21, not today:
    # nothing is restored while money is overdue.
    assert r.zscore(bill_keys.as_of("C1"), "C1") is not None
    today = ok(await cli(app, "dunning"))
    assert today.splitlines()[1] == f"  C1  BARRED_OUTGOING  overdue {amount(left)} (as of 2027-01-21)  nothing new"
    ok(await cli(app, "pay", "--billing-account", "C1", "--amount", "1.00", "--reference", "bank-2"))
    await activate(app)
    assert ok(await cli(app, "crm", "line", MSISDN)).startswith(f"line {MSISDN}: barred_outgoing")
    status = await billing.GetDunningStatus(billing_pb2.BillingAccountId(billing_account="C1"))
    assert (status.state, status.invoices[0].step, status.invoices[0].days_overdue) == (
        "BARRED_OUTGOING",
        "barring",
        20,
    )

    # Paying the rest restores the line once the network acknowledges.
    ok(await cli(app, "pay", "--billing-account", "C1", "--amount", amount(left - 100), "--reference", "bank-3"))
    await activate(app)
    assert ok(await cli(app, "crm", "line", MSISDN, "--wait-for", "active", "--timeout", "5")).startswith(
        f"line {MSISDN}: active"
    )
    assert (
        ok(await cli(app, "dunning", "--as-of", "2027-01-22")).splitlines()[1]
        == "  C1  ACTIVE  overdue 0.00  nothing new"
    )
    shown = ok(await cli(app, "crm", "customer", "1"))
    assert "dunning-C1-" in shown  # the bar and the resume are the line's orders
    line = await crm_line(channel)
    assert line.state == "active"
    await channel.close()


async def crm_line(channel: grpc.aio.Channel) -> crm_pb2.Line:
    return await crm_pb2_grpc.CrmStub(channel).GetLine(crm_pb2.LineRef(msisdn=MSISDN))


@pytest.mark.parametrize("day", ["2026-11-18", ""])
async def test_as_of_today_is_now(app: App, clock: ManualClock, day: str) -> None:
    await postpaid_customer(app, clock)
    clock.advance(seconds=30 * 86_400)  # 2026-12-18 10:13 UTC: the period has ended
    args = ("bill-run", "--as-of", "2026-12-18") if day else ("bill-run",)
    assert "1 invoiced" in ok(await cli(app, *args))


async def test_an_account_whose_lines_all_ended_is_skipped_as_having_no_lines(app: App, clock: ManualClock) -> None:
    await postpaid_customer(app, clock)
    ok(await cli(app, "crm", "terminate", MSISDN, "--reason", "MOVED_AWAY"))
    await activate(app)  # terminated on the network: the final invoice is issued
    assert "INV-00000001" in ok(await cli(app, "invoices", "--billing-account", "C1"))
    out = ok(await cli(app, "bill-run", "--as-of", "2026-12-18"))
    assert out.splitlines() == [
        "bill run as of 2026-12-18: 1 account due, 0 invoiced, 0 already invoiced, 1 skipped, 0 failed",
        "  skipped 1: no lines",
        "no further period to bill",
    ]


async def test_an_account_that_fails_is_named_and_the_command_exits_non_zero(
    app: App, clock: ManualClock, r: redis.Redis
) -> None:
    """A run that broke does not look like one that found nothing to do."""
    set_time(clock, "2026-11-18T10:13:00+00:00")
    r.hset(bill_keys.billing_account("C9"), mapping={"next_period": "garbage", "cycle_day": "5", "time_zone": "UTC"})
    r.zadd(bill_keys.due_index("C9"), {"C9": 1_700_000_000})
    r.rpush(bill_keys.billing_open("C9"), "INV-GONE")  # an open invoice whose record is missing
    r.sadd(bill_keys.recheck("C9"), "C9")
    billed = await cli(app, "bill-run")
    assert billed.code == 1 and billed.err == "error: 1 account(s) could not be billed\n"
    assert billed.out.splitlines()[:2] == [
        "bill run as of 2026-11-18: 1 account due, 0 invoiced, 0 already invoiced, 0 skipped, 1 failed",
        "  failed C9 (the server's log says why)",
    ]
    dunned = await cli(app, "dunning")
    assert dunned.code == 1 and dunned.err == "error: 1 account(s) could not be dunned\n"
    assert dunned.out.splitlines() == [
        "dunning as of 2026-11-18: 1 account evaluated, 0 actions, 1 failed",
        "  C9  failed (the server's log says why)",
    ]
