"""``charging crm`` against a real server: each sample application in ``samples/crm/`` is
accepted through the command line and its line activated by the network simulator;
line orders and tickets; every mistake names its field and exits non-zero."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from charging.clock import ManualClock
from charging.server import App
from tests.conftest import set_time
from tests.test_cli import Run, cli

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "crm"


def sample(name: str) -> dict[str, str]:
    return dict(json.loads((SAMPLES / name).read_text(encoding="utf-8")))


async def activate(app: App) -> None:
    """The provisioning worker's pass: the network simulator acknowledges what is asked."""
    assert app.worker is not None
    await app.worker.reconcile_once()


def ok(run: Run) -> str:
    assert run.code == 0 and not run.err, (run.code, run.err, run.out)
    return run.out


@pytest.mark.parametrize("name", ["individual-postpaid.json", "corporate-postpaid.json"])
async def test_each_sample_application_is_accepted_and_its_line_activated(
    app: App, clock: ManualClock, name: str
) -> None:
    set_time(clock, "2026-11-18T10:13:00+00:00")
    doc = sample(name)
    out = ok(await cli(app, "crm", "apply", str(SAMPLES / name)))
    assert out.startswith(f"order {doc['crm_order_id']}: IN_PROGRESS  customer 1  account ")
    assert f"line {doc['msisdn']}" in out and "credit class " in out
    assert "  offer: " in out  # the steps, one a line
    assert "pending_activation" in ok(await cli(app, "crm", "line", doc["msisdn"]))
    await activate(app)
    assert ok(await cli(app, "crm", "order", doc["crm_order_id"])).startswith(f"order {doc['crm_order_id']}: COMPLETED")
    line = ok(await cli(app, "crm", "line", doc["msisdn"], "--wait-for", "active", "--timeout", "5"))
    assert line.startswith(f"line {doc['msisdn']}: active  plan mobile-postpaid  customer 1")
    shown = ok(await cli(app, "crm", "customer", "1"))
    assert shown.splitlines()[0].startswith(f"customer 1  {doc['customer_kind']}")
    assert f"  {doc['msisdn']}  active  mobile-postpaid" in shown
    assert f"  {doc['crm_order_id']}  COMPLETED  line {doc['msisdn']}" in shown
    if doc["customer_kind"] == "CORPORATE":
        assert "Muster Logistik GmbH" in shown and "billing account U" in shown
    else:
        assert "billing account C1" in shown
    # Submitting the same file again answers the same order.
    again = ok(await cli(app, "crm", "apply", str(SAMPLES / name)))
    assert again.startswith(f"order {doc['crm_order_id']}: COMPLETED  customer 1")


async def test_an_application_file_that_is_wrong_names_the_field(app: App, clock: ManualClock, tmp_path: Path) -> None:
    set_time(clock, "2026-11-18T10:13:00+00:00")
    doc = sample("individual-postpaid.json")
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({**doc, "applicant": {**dict(doc["applicant"]), "givenname": "Anna"}}))
    broken = tmp_path / "broken.json"
    broken.write_text('{"crm_order_id": "x",\n "contract": }')
    bad_digit = tmp_path / "bad-digit.json"
    document = {**dict(doc["identity_document"]), "number": "L898902C37"}
    bad_digit.write_text(json.dumps({**doc, "crm_order_id": "bad-1", "identity_document": document}))
    runs = {
        "unknown": await cli(app, "crm", "apply", str(unknown)),
        "broken": await cli(app, "crm", "apply", str(broken)),
        "missing": await cli(app, "crm", "apply", str(tmp_path / "nothing.json")),
        "rejected": await cli(app, "crm", "apply", str(bad_digit)),
        "no line": await cli(app, "crm", "line", "491709999999"),
        "no customer": await cli(app, "crm", "customer", "77"),
        "no reason": await cli(app, "crm", "terminate", "491709999999"),
        "bad topic": await cli(app, "crm", "ticket", "open", "--customer", "1", "--topic", "X", "--summary", "s"),
    }
    for name, run in runs.items():
        assert run.code != 0 and len(run.err.splitlines()) == 1 and "Traceback" not in run.err, (name, run)
    assert runs["unknown"].err.endswith(
        "unknown.json: applicant.givenname: unknown field (the fields here: given_name, family_name, date_of_birth)\n"
    )
    assert "line 2 column" in runs["broken"].err
    assert runs["rejected"].code == 1
    assert "identity_document.number: check digit does not match" in runs["rejected"].err
    assert "order bad-1: REJECTED" in runs["rejected"].out
    assert runs["no line"].err == "error: NOT_FOUND: no such line\n"
    assert runs["no customer"].err == "error: NOT_FOUND: no such customer\n"
    assert "--reason" in runs["no reason"].err and "--topic" in runs["bad topic"].err


async def test_line_orders_and_tickets_from_the_command_line(app: App, clock: ManualClock) -> None:
    set_time(clock, "2026-11-18T10:13:00+00:00")
    msisdn = sample("individual-postpaid.json")["msisdn"]
    ok(await cli(app, "crm", "apply", str(SAMPLES / "individual-postpaid.json")))
    await activate(app)

    async def order(*args: str) -> str:
        out = ok(await cli(app, "crm", *args))
        assert ": IN_PROGRESS" in out.splitlines()[0], out
        await activate(app)
        return ok(await cli(app, "crm", "line", msisdn)).split()[2]

    waited = await cli(app, "crm", "line", msisdn, "--wait-for", "suspended", "--timeout", "0")
    assert (waited.code, waited.err) == (1, f"error: line {msisdn} active, not suspended, after 0 s\n")
    assert await order("bar", msisdn, "--order-id", "bar-1") == "barred_outgoing"
    assert await order("resume", msisdn) == "active"
    assert await order("suspend", msisdn) == "suspended"
    assert await order("resume", msisdn) == "active"
    again = await cli(app, "crm", "resume", msisdn)  # not allowed from active: the order is refused
    assert again.code == 1 and "rejected" in again.err
    # The bundled catalog has one mobile postpaid plan: a prepaid one is refused, naming it.
    change = await cli(app, "crm", "change-plan", msisdn, "--plan", "mobile-prepaid")
    assert change.code == 1 and ": REJECTED" in change.out
    assert "rejected: plan 'mobile-prepaid' is not a product this line can change to" in change.err

    opened = ok(
        await cli(
            app,
            "crm",
            "ticket",
            "open",
            "--customer",
            "1",
            "--topic",
            "NETWORK",
            "--summary",
            "no signal",
            "--line",
            msisdn,
        )
    )
    ticket_id = opened.split()[1].rstrip(":")
    assert opened.startswith(f"ticket {ticket_id}: OPEN  NETWORK  customer 1")
    moved = ok(await cli(app, "crm", "ticket", "move", ticket_id, "--state", "RESOLVED", "--note", "antenna fixed"))
    assert moved.startswith(f"ticket {ticket_id}: RESOLVED") and "'antenna fixed'" in moved
    ok(await cli(app, "crm", "ticket", "move", ticket_id, "--state", "CLOSED"))
    wrong = await cli(app, "crm", "ticket", "move", ticket_id, "--state", "OPEN")  # closed is final
    assert wrong.code == 2 and wrong.err == "error: INVALID_ARGUMENT: state: a CLOSED ticket cannot become OPEN\n"

    assert await order("terminate", msisdn, "--reason", "MOVED_AWAY") == "terminated"
    shown = ok(await cli(app, "crm", "customer", "1"))
    assert f"  {msisdn}  terminated" in shown
    assert f"  {ticket_id}  NETWORK  CLOSED  'no signal'  line {msisdn}" in shown
    assert "  bar-1  COMPLETED" in shown
    assert "disputes: none" in shown
    customer, orders, records = (
        json.loads(x) for x in ok(await cli(app, "crm", "customer", "1", "--json")).splitlines()
    )
    assert customer["lines"][0]["state"] == "terminated" and len(orders["orders"]) == 8  # two of them refused
    assert records["tickets"][0]["state"] == "CLOSED"
    listed = ok(await cli(app, "crm", "customers", "--state", "TERMINATED"))
    assert listed.startswith("1  INDIVIDUAL  TERMINATED  DE 10115")
    assert ok(await cli(app, "crm", "customers", "--name", "muster")).startswith("1  INDIVIDUAL  TERMINATED")
    assert ok(await cli(app, "crm", "customers", "--name", "nobody")) == ""
