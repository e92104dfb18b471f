"""The ``charging`` command line against a real server: every mistake is one line on
stderr with a non-zero exit, amounts are plain decimals, and ``session`` always ends what
it opened."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass

import pytest

from charging.money import parse_amount
from charging.server import App
from charging.v1 import admin_pb2, common_pb2
from tests.conftest import TERMINATE, Stubs, session_request

MSISDN = "491700000001"


@dataclass
class Run:
    code: int
    out: str
    err: str


async def cli(app: App, *args: str) -> Run:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "charging.cli",
        "--target",
        f"127.0.0.1:{app.grpc_port}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


@pytest.mark.parametrize("text", ["1e3", "1E-2", "NaN", "Infinity", "1_000", "+5", ".5", "5.", "0x10", "١٢"])
def test_parse_amount_refuses_what_is_not_a_plain_decimal(text: str) -> None:
    with pytest.raises(ValueError, match="not a plain decimal"):
        parse_amount(text)


MISTAKES = [
    ("topup", "--msisdn", MSISDN, "--amount", "abc"),
    ("topup", "--msisdn", MSISDN, "--amount", "1.0000001"),
    ("topup", "--msisdn", MSISDN, "--amount", "1e3"),
    ("topup", "--msisdn", MSISDN, "--amount", "Infinity"),
    ("topup", "--msisdn", MSISDN, "--amount", "99999999999999999999"),
    ("topup", "--msisdn", MSISDN, "--amount", "-1"),  # refused by the server: INVALID_ARGUMENT
    ("create-subscriber", "--msisdn", "491700000002", "--balance", "1e3"),
    ("event", "--msisdn", MSISDN, "--units", "-1"),
    ("event", "--msisdn", MSISDN, "--units", "many"),
    ("event", "--msisdn", MSISDN, "--rating-group", "-1"),
    ("session", "--msisdn", MSISDN, "--used", "-10"),
    ("session", "--msisdn", MSISDN, "--updates", "-1"),
    ("load-catalog", "/nonexistent/catalog.json"),
    ("pay", "--billing-account", "C1", "--amount", "1.001", "--reference", "r"),
    ("bill-run", "--limit", "-1"),
    ("balance", "--msisdn", "491799999999"),  # no such subscriber: NOT_FOUND
    ("topup", "--amount", "1"),  # no subscriber given
    ("audit",),  # neither a subject, an actor nor a start: INVALID_ARGUMENT naming subject
    ("audit", "--account", "1", "--from", "yesterday"),
]


async def test_every_mistake_is_one_line_on_stderr_and_changes_nothing(app: App, stubs: Stubs) -> None:
    await stubs.subscriber(MSISDN, balance=1_000_000)
    runs = await asyncio.gather(*(cli(app, *args) for args in MISTAKES))
    wrong = [
        f"{' '.join(args)}: exit {run.code}, stderr {run.err!r}"
        for args, run in zip(MISTAKES, runs, strict=True)
        if run.code == 0 or len(run.err.splitlines()) != 1 or "Traceback" in run.err
    ]
    assert not wrong, "\n".join(wrong)
    assert "--amount" in runs[2].err and "1e3" in runs[2].err
    after = await stubs.balance()
    assert (after.balance_micros, after.reserved_micros) == (1_000_000, 0)
    run = await cli(app, "topup", "--msisdn", MSISDN, "--amount", "1000.25")
    assert run.code == 0, run.err
    assert (await stubs.balance()).balance_micros == 1_000_000 + 1_000_250_000


async def test_event_refused_exits_non_zero(app: App, stubs: Stubs) -> None:
    run = await cli(app, "event", "--msisdn", "491799999999", "--action", "debit")
    assert json.loads(run.out)["result_code"] == 5030
    assert run.code == 1
    assert run.err == "error: result code 5030 USER_UNKNOWN\n"


async def test_buy_bundle_refused_exits_non_zero(app: App, stubs: Stubs) -> None:
    await stubs.subscriber(MSISDN, balance=0)
    run = await cli(app, "buy-bundle", "--msisdn", MSISDN, "--bundle", "sms-100")
    assert json.loads(run.out)["result"] == "PURCHASE_RESULT_INSUFFICIENT_BALANCE"
    assert run.code == 1
    assert len(run.err.splitlines()) == 1


async def test_session_terminates_after_a_refused_update(app: App, stubs: Stubs) -> None:
    """0.50 EUR reserves 300 s at 0.10 EUR a minute; an UPDATE reporting 600 s is debited
    beyond the grant and refused (4012). The client then ends the session itself."""
    await stubs.subscriber(MSISDN, balance=500_000)
    run = await cli(app, "session", "--msisdn", MSISDN, "--session-id", "s1", "--used", "600", "--updates", "3")
    answers = [json.loads(line) for line in run.out.splitlines()]
    assert [a["request_type"] for a in answers] == [
        "REQUEST_TYPE_INITIAL",
        "REQUEST_TYPE_UPDATE",
        "REQUEST_TYPE_TERMINATE",
    ]
    assert answers[1]["result_code"] == 4012
    assert run.code == 1
    assert run.err == "error: result code 4012 CREDIT_LIMIT_REACHED\n"
    after = await stubs.balance()
    assert (after.balance_micros, after.reserved_micros) == (500_000 - 1_000_000, 0)
    # The session is closed: a TERMINATE of our own finds nothing to end.
    late = await stubs.charging.ChargeSession(
        session_request("s1", TERMINATE, 9, [{"rating_group": 10}], msisdn=MSISDN)
    )
    assert late.result_code == 5002


async def test_audit_prints_an_accounts_trail_as_json_lines(app: App, stubs: Stubs) -> None:
    sub = await stubs.subscriber(MSISDN, balance=1_000_000)
    await stubs.admin.SetSubscriberStatus(
        admin_pb2.SetStatusRequest(
            subscriber=common_pb2.SubscriberId(msisdn=MSISDN), status=admin_pb2.SUBSCRIBER_STATUS_SUSPENDED
        )
    )
    deadline = time.monotonic() + 30  # the relay moves the entry from the record outbox to PostgreSQL
    while True:
        run = await cli(app, "audit", "--account", sub.account_id)
        assert run.code == 0, run.err
        if run.out or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    [line] = run.out.splitlines()
    entry = json.loads(line)
    assert (entry["actor"], entry["action"], entry["subject"]) == (
        "local",
        "status_change",
        "account:" + sub.account_id,
    )
    assert entry["details"] == {"status": "suspended"}
    by_actor = await cli(app, "audit", "--actor", "nobody")
    assert (by_actor.code, by_actor.out) == (0, "")
