"""The console over real HTTP (uvicorn in the server's process, real Redis and
PostgreSQL): sign-in, sessions, CSRF and roles, search and the customer page, the
application form to an active line, and the actions, each audited with the staff member."""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from charging.clock import ManualClock
from charging.errors import StartupError
from charging.server import App
from charging.settings import Settings
from console import keys
from console.serving import development_user
from console.staff import FAILURES_ALLOWED, StaffBook, hash_password, verify_password
from provisioning import keys as provisioning_keys
from tests.console_client import PASSWORD, Desk, add_staff, console_app

DAY = 86_400
GOOD = {"credit_history.tenure_months": "36", "credit_history.monthly_income_micros": "4000000000"}


def application(**over: str) -> dict[str, str]:
    form = {
        "customer_kind": "INDIVIDUAL",
        "contract": "PREPAID",
        "plan_id": "mobile-prepaid",
        "msisdn": "491701234567",
        "imsi": "262011234567890",
        "initial_balance": "5",
        "applicant.given_name": "Anna",
        "applicant.family_name": "Muster",
        "applicant.date_of_birth": "1990-05-17",
        "address.street": "Hauptstr. 1",
        "address.city": "Berlin",
        "address.postal_code": "10115",
        "address.country": "DE",
        "contact.email": "anna@example.org",
        "identity_document.type": "PASSPORT",
        "identity_document.number": "L898902C36",
        "identity_document.issuing_country": "DE",
        "identity_document.expiry_date": "2030-01-01",
    }
    form.update(over)
    return form


@pytest.fixture
async def console(settings: Settings, clock: ManualClock) -> AsyncIterator[App]:
    app = await console_app(settings, clock)
    yield app
    await app.stop()


@pytest.fixture
async def desk(console: App) -> AsyncIterator[Desk]:
    assert console.console is not None
    client = Desk(console.console.port)
    yield client
    await client.aclose()


async def audit_rows(app: App, action: str) -> list[tuple[Any, ...]]:
    assert app.database is not None
    async with app.database.connection() as conn:
        cur = await conn.execute("SELECT actor, subject, details FROM audit WHERE action = %s", (action,))
        return list(await cur.fetchall())


async def apply_and_activate(app: App, desk: Desk, **over: str) -> str:
    """A customer through the console's form, its line acknowledged by the network;
    returns the customer id."""
    await desk.get("/apply")
    done = await desk.post("/apply", application(**over))
    assert done.status_code == 303 and done.headers["location"].startswith("/orders/console-")
    assert app.worker is not None
    await app.worker.reconcile_once()
    page = await desk.follow(done)
    found = re.search(r'href="/customers/(\d+)"', page.text)
    assert found
    return found.group(1)


def test_passwords_are_scrypt_hashes_checked_in_constant_time() -> None:
    stored = hash_password("a long password", n=2**10)
    assert stored.startswith("scrypt$1024$8$1$") and "a long password" not in stored
    assert verify_password("a long password", stored)
    assert not verify_password("a long passwore", stored)
    assert not verify_password("anything", "md5$nonsense")


async def test_sign_in_gives_a_secure_http_only_strict_cookie_and_bad_passwords_are_refused(
    console: App, desk: Desk
) -> None:
    await add_staff(console, "carla", "crm")
    assert console.redis is not None
    stored = await console.redis.hgetall(keys.staff("carla"))
    assert PASSWORD not in str(stored) and str(stored["password"]).startswith("scrypt$")

    refused = await desk.sign_in("carla", "not the password")
    assert refused.status_code == 401 and "Wrong name or password" in refused.text and not desk.cookie
    assert (await desk.sign_in("nobody")).status_code == 401

    signed_in = await desk.sign_in("carla")
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/search"
    cookie = signed_in.headers["set-cookie"].lower()
    assert "httponly" in cookie and "secure" in cookie and "samesite=strict" in cookie
    page = await desk.follow(signed_in)
    assert page.status_code == 200 and "carla (crm)" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]

    # A cookie not signed with the console's secret is nobody's.
    forged = desk.cookie.split(".")[0] + ".AAAA"
    assert (await desk.http.get("/search", headers={"Cookie": forged})).status_code == 303

    assert (await desk.follow(await desk.post("/logout", {}))).status_code == 200
    assert (await desk.get("/search")).status_code == 303  # the session ended


async def test_the_sign_in_form_needs_its_signed_double_submit_token(console: App, desk: Desk) -> None:
    await add_staff(console, "carla", "crm")
    creds = {"name": "carla", "password": PASSWORD, "next": "/search"}
    # Posted from another site: no sign-in cookie, or the attacker's own token.
    assert (await desk.post("/login", creds, csrf="")).status_code == 403
    assert (await desk.post("/login", creds, csrf="made-up")).status_code == 403
    desk.login_cookie = ""  # a browser coming to the sign-in page for the first time
    page = await desk.get("/login")
    cookie = page.headers["set-cookie"].lower()
    assert cookie.startswith("console_login=") and "httponly" in cookie and "samesite=strict" in cookie
    token = desk.csrf
    assert desk.login_cookie.split("=", 1)[1].startswith(token + ".")
    # A cookie not signed with the console's secret, or one for another token.
    good_cookie = desk.login_cookie
    desk.login_cookie = f"console_login={token}.AAAA"
    assert (await desk.post("/login", creds, csrf=token)).status_code == 403
    desk.login_cookie = good_cookie
    assert (await desk.post("/login", creds, csrf=token[:-1] + ("A" if token[-1] != "A" else "B"))).status_code == 403
    assert not desk.cookie and await audit_rows(console, "sign_in") == []
    # The refusal's page carries a working form (the same token: the cookie is still good).
    refused = await desk.post("/login", creds, csrf="")
    assert "out of date" in refused.text and desk.csrf == token
    signed_in = await desk.post("/login", creds)
    assert signed_in.status_code == 303 and desk.cookie
    assert not desk.login_cookie  # spent: cleared with the sign-in
    assert [row[0] for row in await audit_rows(console, "sign_in")] == ["staff:carla"]


async def test_pages_need_a_session_and_posts_need_the_csrf_token(console: App, desk: Desk) -> None:
    for path in ("/search", "/customers/1", "/apply", "/operations", "/orders/x"):
        answer = await desk.get(path)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login?next=")
    assert (await desk.post("/customers/1/interactions", {"note": "x"})).status_code == 401

    await add_staff(console, "carla", "crm")
    await desk.sign_in("carla")
    customer = await apply_and_activate(console, desk)
    await desk.get(f"/customers/{customer}")
    forged = await desk.post(
        f"/customers/{customer}/interactions", {"channel": "PHONE", "note": "forged"}, csrf="not-the-token"
    )
    assert forged.status_code == 403
    assert console.redis is not None
    page = await desk.get(f"/customers/{customer}")
    assert "forged" not in page.text and "No interactions." in page.text


async def test_roles_are_denied_by_default_and_monitor_sees_no_personal_data(console: App, desk: Desk) -> None:
    await add_staff(console, "carla", "crm")
    await add_staff(console, "mo", "monitor")
    await add_staff(console, "otto", "operator")
    await desk.sign_in("carla")
    customer = await apply_and_activate(console, desk)
    assert (await desk.get("/operations")).status_code == 403  # crm: not operations
    page = await desk.get(f"/customers/{customer}")
    assert "Anna Muster" in page.text and "Hauptstr. 1" in page.text
    assert "Top up" not in page.text  # the operator's
    await desk.get(f"/customers/{customer}")
    topup = await desk.post(f"/customers/{customer}/lines/491701234567/top-up", {"amount": "1"})
    assert topup.status_code == 403

    await desk.post("/logout", {})
    await desk.sign_in("mo")
    page = await desk.get(f"/customers/{customer}")
    assert page.status_code == 200 and "active" in page.text
    for personal in ("Anna", "Muster", "Hauptstr", "anna@example.org", "491701234567"):
        assert personal not in page.text
    assert "4567" in page.text  # the line, masked
    # Search: by customer id only, whatever the query asks for.
    found = await desk.get("/search", by="name", q="Anna")
    assert "No customer found." in found.text
    assert f'href="/customers/{customer}"' in (await desk.get("/search", by="customer", q=customer)).text
    assert (await desk.get("/apply")).status_code == 403
    assert (await desk.get("/operations")).status_code == 200


async def test_guessing_locks_the_name_out(console: App, desk: Desk) -> None:
    await add_staff(console, "carla", "crm")
    for _ in range(FAILURES_ALLOWED):
        assert (await desk.sign_in("carla", "a wrong guess")).status_code == 401
    assert (await desk.sign_in("carla")).status_code == 401  # locked out, right password or not
    assert console.redis is not None
    await console.redis.delete(keys.sign_in_failures("carla"))  # the window has passed
    assert (await desk.sign_in("carla")).status_code == 303


async def test_disabled_staff_lose_their_sessions(console: App, desk: Desk) -> None:
    await add_staff(console, "carla", "crm")
    await desk.sign_in("carla")
    assert (await desk.get("/search")).status_code == 200
    assert console.redis is not None
    await StaffBook(console.redis).disable("carla")
    assert (await desk.get("/search")).status_code == 303
    assert (await desk.sign_in("carla")).status_code == 401


async def test_the_application_form_names_each_bad_field_like_the_api(console: App, desk: Desk) -> None:
    await add_staff(console, "carla", "crm")
    await desk.sign_in("carla")
    await desk.get("/apply")
    bad = application(**{"applicant.date_of_birth": "1990-02-31", "address.postal_code": "1011"})
    refused = await desk.post("/apply", bad)
    assert refused.status_code == 422
    for field in ("applicant.date_of_birth", "address.postal_code"):
        assert f'id="{field}-error"' in refused.text, field
        assert f'aria-describedby="{field}-error"' in refused.text
    assert "was refused" in refused.text
    bad_number = await desk.post("/apply", application(msisdn="12"))
    assert bad_number.status_code == 422 and 'id="msisdn-error"' in bad_number.text
    # The corrected form is a new order, accepted.
    fixed = await desk.post("/apply", application())
    assert fixed.status_code == 303


async def test_from_application_to_active_line_then_top_up_and_bundle_audited(console: App, desk: Desk) -> None:
    await add_staff(console, "carla", "crm", "operator")
    await desk.sign_in("carla")
    await desk.get("/apply")
    done = await desk.post("/apply", application())
    order_page = await desk.follow(done)
    assert "IN_PROGRESS" in order_page.text and "pending_activation" in order_page.text
    assert 'hx-trigger="every 1s"' in order_page.text  # followed live
    assert "mobile-prepaid" in order_page.text  # among the offers
    assert console.worker is not None
    await console.worker.reconcile_once()
    status = await desk.get(done.headers["location"] + "/status")
    assert "COMPLETED" in status.text and ">active<" in status.text and "hx-trigger" not in status.text

    found = await desk.get("/search", by="number", q="491701234567")
    customer = re.search(r'href="/customers/(\d+)"', found.text)
    assert customer
    cid = customer.group(1)
    by_document = await desk.get("/search", by="document", q="L898902C36", doc_type="PASSPORT", doc_country="DE")
    assert f'href="/customers/{cid}"' in by_document.text
    assert f'href="/customers/{cid}"' in (await desk.get("/search", by="name", q="muster")).text
    assert "No customer found." in (await desk.get("/search", by="name", q="Nobody")).text

    page = await desk.get(f"/customers/{cid}")
    assert "5.00 EUR" in page.text and ">active<" in page.text
    topped = await desk.follow(await desk.post(f"/customers/{cid}/lines/491701234567/top-up", {"amount": "2.50"}))
    assert "Topped up 2.50 EUR; balance 7.50 EUR" in topped.text
    # The same form sent twice credits once (its idempotency key).
    form = {"amount": "1", "key": "samekey"}
    await desk.post(f"/customers/{cid}/lines/491701234567/top-up", form)
    again = await desk.follow(await desk.post(f"/customers/{cid}/lines/491701234567/top-up", form))
    assert "balance 8.50 EUR" in again.text
    bad = await desk.follow(await desk.post(f"/customers/{cid}/lines/491701234567/top-up", {"amount": "1e3"}))
    assert "amount: must be an amount" in bad.text

    sold = await desk.follow(await desk.post(f"/customers/{cid}/lines/491701234567/bundle", {"bundle": "sms-100"}))
    assert "Sold bundle sms-100" in sold.text and "sms-100" in sold.text

    rows = await audit_rows(console, "top_up")
    assert len(rows) == 3 and {r[0] for r in rows} == {"staff:carla"}
    assert {r[2]["channel"] for r in rows} == {"OPERATOR"} and rows[0][1] == "491701234567"
    assert await audit_rows(console, "application_submitted")


async def test_care_records_line_orders_and_the_corporate_tree(console: App, desk: Desk) -> None:
    await add_staff(console, "carla", "crm")
    await desk.sign_in("carla")
    cid = await apply_and_activate(console, desk)
    base = f"/customers/{cid}"
    await desk.get(base)
    noted = await desk.follow(
        await desk.post(
            base + "/interactions",
            {"channel": "PHONE", "note": "asked about roaming", "reference": "https://rec.example/1"},
        )
    )
    assert "Interaction 1 recorded" in noted.text and "asked about roaming" in noted.text
    assert '<a href="https://rec.example/1" rel="noopener noreferrer">https://rec.example/1</a>' in noted.text
    # A reference the domain accepts (it has "://") but the page must not make a link of.
    hostile = "javascript://x%0Aalert(1)"
    shown = await desk.follow(
        await desk.post(base + "/interactions", {"channel": "CHAT", "note": "n", "reference": hostile})
    )
    assert f"<code>{hostile}</code>" in shown.text and 'href="javascript' not in shown.text
    opened = await desk.follow(
        await desk.post(base + "/tickets", {"topic": "SERVICE", "summary": "no data in the garden"})
    )
    assert "Ticket 1 opened" in opened.text and "no data in the garden" in opened.text
    moved = await desk.follow(await desk.post(base + "/tickets/1/move", {"state": "IN_PROGRESS", "note": "checking"}))
    assert "Ticket 1 is IN_PROGRESS" in moved.text
    wrong = await desk.follow(await desk.post(base + "/tickets", {"topic": "NETWORK", "summary": "x"}))
    assert "line: is required for a network ticket" in wrong.text

    barred = await desk.post(base + "/lines/491701234567/order", {"kind": "BAR_OUTGOING"})
    assert barred.status_code == 303 and barred.headers["location"].startswith("/orders/")
    assert console.worker is not None
    await console.worker.reconcile_once()
    assert ">barred_outgoing<" in (await desk.get(base)).text
    no_reason = await desk.follow(await desk.post(base + "/lines/491701234567/order", {"kind": "TERMINATE"}))
    assert "reason: is required to terminate a line" in no_reason.text
    await desk.post(base + "/lines/491701234567/order", {"kind": "TERMINATE", "reason": "MOVED_AWAY"})
    await console.worker.reconcile_once()
    page = await desk.get(base)
    assert ">terminated<" in page.text and "MOVED_AWAY" in page.text
    assert {r[0] for r in await audit_rows(console, "line_order")} == {"staff:carla"}

    # Somebody else's line is not this customer's to order on.
    other = await desk.follow(await desk.post("/customers/999/lines/491701234567/order", {"kind": "SUSPEND"}))
    assert "is not a line of this customer" in other.text

    await desk.get("/apply?kind=CORPORATE")
    corporate = application(
        customer_kind="CORPORATE",
        msisdn="491701234599",
        imsi="262011234567899",
        **{
            "identity_document.number": "T220001293",
            "company.name": "Nordwind Logistik GmbH",
            "company.country": "DE",
            "company.registration_number": "HRB 12345",
        },
    )
    done = await desk.post("/apply", corporate)
    assert done.status_code == 303, done.text
    await console.worker.reconcile_once()
    page = await desk.follow(done)
    ccid = re.search(r'href="/customers/(\d+)"', page.text)
    assert ccid
    assert "Nordwind Logistik GmbH (unit" in (await desk.get(f"/customers/{ccid.group(1)}")).text


async def test_postpaid_invoice_dispute_payment_and_promise(console: App, desk: Desk, clock: ManualClock) -> None:
    await add_staff(console, "bea", "crm", "billing")
    await desk.sign_in("bea")
    cid = await apply_and_activate(
        console, desk, contract="POSTPAID", plan_id="mobile-postpaid", initial_balance="", **GOOD
    )
    assert "<dt>Credit class</dt><dd>A (limit" in (await desk.get(f"/customers/{cid}")).text
    clock.advance(seconds=31 * DAY)
    assert console.billing is not None
    assert (await console.billing.runs.run()).issued == 1
    base = f"/customers/{cid}"
    page = await desk.get(base)
    number = re.search(r'/invoices/([\w-]+)\.pdf"', page.text)
    assert number, page.text
    pdf = await desk.get(f"{base}/invoices/{number.group(1)}.pdf")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    assert (await desk.get(f"/customers/999/invoices/{number.group(1)}.pdf")).status_code == 404

    disputed = await desk.follow(
        await desk.post(base + "/disputes", {"invoice": number.group(1), "amount": "1.00", "reason": "rental twice"})
    )
    assert "opened on invoice" in disputed.text and "rental twice" in disputed.text
    dispute_id = re.search(r"Resolve dispute ([\w-]+)<", disputed.text)
    assert dispute_id
    resolved = await desk.follow(
        await desk.post(f"{base}/disputes/{dispute_id.group(1)}/resolve", {"decision": "accept", "reason": "agreed"})
    )
    assert f"Dispute {dispute_id.group(1)} is ACCEPTED" in resolved.text

    ba = "C" + cid
    paid = await desk.follow(
        await desk.post(
            base + "/payments", {"billing_account": ba, "amount": "3.00", "channel": "CASH", "reference": "r1"}
        )
    )
    assert f"Payment of 3.00 recorded on {ba}" in paid.text and "PAYMENT" in paid.text
    stranger = await desk.follow(
        await desk.post(base + "/payments", {"billing_account": "C999", "amount": "1", "channel": "CASH"})
    )
    assert "billing_account: is not a billing account of this customer" in stranger.text
    promised = await desk.follow(await desk.post(base + "/promise", {"billing_account": ba, "until": "2026-12-25"}))
    assert "promised to pay by 2026-12-25" in promised.text
    for action in ("dispute_opened", "dispute_resolved", "payment_recorded", "promise_to_pay"):
        assert {r[0] for r in await audit_rows(console, action)} == {"staff:bea"}, action


async def test_the_operations_page(console: App, desk: Desk) -> None:
    await add_staff(console, "otto", "operator", "crm")
    await desk.sign_in("otto")
    await apply_and_activate(console, desk)
    page = await desk.get("/operations")
    assert page.status_code == 200
    assert "MOBILE_PREPAID" in page.text and "notifications" in page.text  # base figures and a job
    assert "No bill runs yet." in page.text and "Nothing overdue." in page.text
    bad = await desk.get("/operations", first="2026-13-01", last="x")
    assert "dates must be YYYY-MM-DD" in bad.text
    assert console.redis is not None
    await console.redis.lpush(provisioning_keys.DEAD, "491700000999")  # as the worker gives up on a line
    assert "line 491700000999" in (await desk.get("/operations")).text
    await add_staff(console, "mo", "monitor")
    await desk.post("/logout", {})
    await desk.sign_in("mo")
    page = await desk.get("/operations")
    assert "line ••••••••0999" in page.text and "491700000999" not in page.text


async def test_a_taken_console_address_stops_the_server_saying_why(settings: Settings, clock: ManualClock) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        app = App(replace(settings, console_address=f"127.0.0.1:{port}"), clock=clock, run_background=False)
        with pytest.raises(StartupError, match=f"cannot listen on console address 127.0.0.1:{port}"):
            await app.start()
        await app.stop()


async def test_a_development_user_is_made_once_on_loopback(console: App) -> None:
    assert console.redis is not None
    book = StaffBook(console.redis)
    dev = await book.get("dev")
    assert dev is not None and dev.roles == {"crm", "billing", "operator", "monitor"}
    assert console.console is not None
    assert await development_user(console.console.desk) is None  # staff exist: never again
    assert [s.name for s in await book.list()] == ["dev"]
