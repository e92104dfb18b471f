"""What a representative does on a customer and its lines. Each action is a POST with
the session's CSRF token (``web.guarded``), checks that the line, invoice or billing
account is the customer's, calls the domain, writes an audit entry with the staff
member as actor, and goes back to the customer page saying what happened (POST,
redirect, GET). Forms carry their own idempotency key, so a form sent twice acts once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from datetime import date
from urllib.parse import quote

from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from charging import metrics
from charging.errors import ChargingError, InvalidRequest
from charging.money import MICROS_PER_MINOR, format_micros, parse_amount
from charging.subscribers import parse_identity
from charging.topups import BundlePurchase, Recharge
from console.access import ACTIONS
from console.web import Visit, guarded, problem
from provisioning.lines import Line

TOPUP_CHANNEL = "operator"  # a top-up from the console is the operator's (TopUp CHANNEL_OPERATOR)
LINE_ORDERS = ("CHANGE_PRODUCT", "BAR_OUTGOING", "SUSPEND", "RESUME", "TERMINATE")


def micros(text: str, field: str) -> int:
    try:
        return parse_amount(text)
    except ValueError:
        raise InvalidRequest(field, "must be an amount such as 5 or 12.50") from None


def minor(text: str, field: str) -> int:
    amount = micros(text, field)
    if amount % MICROS_PER_MINOR:
        raise InvalidRequest(field, "must be whole cents")
    return amount // MICROS_PER_MINOR


def key_of(visit: Visit) -> str:
    key = visit.field("key")
    if not key or len(key) > 64 or not key.isascii() or not key.isalnum():
        raise InvalidRequest("key", "the form is out of date: reload the page")
    return "console-" + key


def back(customer_id: str, *, done: str = "", error: str = "") -> RedirectResponse:
    what = f"done={quote(done)}" if done else f"error={quote(error)}"
    return RedirectResponse(f"/customers/{customer_id}?{what}", status_code=303)


async def line_of(visit: Visit) -> Line:
    msisdn = visit.request.path_params["msisdn"]
    line = await visit.desk.acquisition.get_line(msisdn)
    if line is None or line.customer_id != visit.request.path_params["customer_id"]:
        raise InvalidRequest("line", "is not a line of this customer")
    return line


async def billing_account_of(visit: Visit) -> str:
    """The billing account named by the form, when it bills one of the customer's lines."""
    ba, customer_id = visit.field("billing_account"), visit.request.path_params["customer_id"]
    for line in await visit.desk.acquisition.customer_lines(customer_id):
        if line.account_id and await visit.desk.billing.accounts.billed_to(line.account_id) == ba:
            return ba
    raise InvalidRequest("billing_account", "is not a billing account of this customer")


Act = Callable[[Visit, str], Awaitable[str | Response]]


def action(name: str) -> Callable[[Act], Callable[..., Awaitable[Response]]]:
    """A customer action: ``act`` returns what it did (or a response of its own); a
    domain error goes back to the customer page naming the field."""

    def wrap(act: Act) -> Callable[..., Awaitable[Response]]:
        async def handler(visit: Visit) -> Response:
            customer_id = visit.request.path_params["customer_id"]
            try:
                outcome = await act(visit, customer_id)
            except ChargingError as exc:
                field, message = problem(exc)
                return back(customer_id, error=f"{field}: {message}" if field else message)
            if isinstance(outcome, Response):
                return outcome
            return back(customer_id, done=outcome)

        handler.__name__ = act.__name__
        return guarded(name)(handler)

    assert name in ACTIONS
    return wrap


@action("top_up")
async def top_up(visit: Visit, customer_id: str) -> str:
    line = await line_of(visit)
    amount = micros(visit.field("amount"), "amount")
    key = key_of(visit)
    digest = hashlib.blake2b(f"{line.msisdn}|{amount}|{TOPUP_CHANNEL}".encode(), digest_size=16).hexdigest()
    identity = parse_identity("msisdn", line.msisdn, "msisdn")
    result = await visit.desk.topups.recharge(Recharge(identity, amount, TOPUP_CHANNEL, key, digest))
    if not result.replayed:
        metrics.TOPUPS.labels(TOPUP_CHANNEL).inc()
        metrics.TOPUP_MICROS.labels(TOPUP_CHANNEL).inc(amount)
    await visit.audit(
        "top_up", line.msisdn, channel="OPERATOR", amount_micros=amount, key=key, replayed=result.replayed
    )
    balance = format_micros(result.balance_micros, result.currency)
    return f"Topped up {format_micros(amount, result.currency)}; balance {balance}"


@action("sell_bundle")
async def sell_bundle(visit: Visit, customer_id: str) -> str:
    line = await line_of(visit)
    bundle, key = visit.field("bundle"), key_of(visit)
    digest = hashlib.blake2b(f"{line.msisdn}|{bundle}|{TOPUP_CHANNEL}".encode(), digest_size=16).hexdigest()
    identity = parse_identity("msisdn", line.msisdn, "msisdn")
    result = await visit.desk.topups.buy_bundle(BundlePurchase(identity, bundle, TOPUP_CHANNEL, key, digest))
    await visit.audit("sell_bundle", line.msisdn, channel="OPERATOR", bundle=bundle, outcome=result.outcome, key=key)
    if result.outcome == "FUNDS":
        raise InvalidRequest("bundle", "the balance does not cover this bundle: nothing was sold")
    if result.outcome != "OK":
        raise InvalidRequest("bundle", f"not sold ({result.outcome.lower()})")
    return f"Sold bundle {bundle}"


@action("line_order")
async def line_order(visit: Visit, customer_id: str) -> str | Response:
    line = await line_of(visit)
    kind, plan, reason = visit.field("kind"), visit.field("plan_id"), visit.field("reason")
    if kind not in LINE_ORDERS:
        raise InvalidRequest("kind", "must be one of " + ", ".join(LINE_ORDERS))
    if kind == "TERMINATE" and not reason:
        raise InvalidRequest("reason", "is required to terminate a line")
    order = await visit.desk.acquisition.order(
        key_of(visit), line.msisdn, kind, plan if kind == "CHANGE_PRODUCT" else "", reason
    )
    await visit.audit("line_order", line.msisdn, reason, kind=kind, order=order.crm_order_id, status=order.status)
    return RedirectResponse(f"/orders/{order.crm_order_id}", status_code=303)


@action("interaction")
async def interaction(visit: Visit, customer_id: str) -> str:
    references = [r for r in visit.field("reference").split() if r]
    added = await visit.desk.care.add_interaction(
        customer_id, visit.field("channel"), visit.field("note"), references, visit.desk.now_s(), actor=visit.actor
    )
    return f"Interaction {added.id} recorded"


@action("open_ticket")
async def open_ticket(visit: Visit, customer_id: str) -> str:
    ticket = await visit.desk.care.open_ticket(
        customer_id,
        visit.field("topic"),
        visit.field("summary"),
        visit.desk.now_s(),
        line=visit.field("line"),
        invoice=visit.field("invoice"),
        actor=visit.actor,
    )
    return f"Ticket {ticket.id} opened"


@action("move_ticket")
async def move_ticket(visit: Visit, customer_id: str) -> str:
    ticket_id = visit.request.path_params["ticket_id"]
    mine = {t.id for t in await visit.desk.care.tickets(customer_id)}
    if ticket_id not in mine:
        raise InvalidRequest("ticket", "is not a ticket of this customer")
    ticket = await visit.desk.care.move_ticket(
        ticket_id, visit.field("state"), visit.field("note"), visit.desk.now_s(), actor=visit.actor
    )
    return f"Ticket {ticket.id} is {ticket.state}"


@action("open_dispute")
async def open_dispute(visit: Visit, customer_id: str) -> str:
    amount = minor(visit.field("amount"), "amount")
    dispute = await visit.desk.care.open_dispute(
        customer_id,
        visit.field("invoice"),
        amount,
        visit.field("reason"),
        line=visit.field("line"),
        dispute_id=key_of(visit),
        actor=f"staff:{visit.staff.name}",
    )
    await visit.audit("dispute_opened", customer_id, dispute=dispute.id, invoice=dispute.invoice, amount_minor=amount)
    return f"Dispute {dispute.id} opened on invoice {dispute.invoice}"


@action("resolve_dispute")
async def resolve_dispute(visit: Visit, customer_id: str) -> str:
    dispute_id = visit.request.path_params["dispute_id"]
    if dispute_id not in {d.id for d in await visit.desk.care.disputes(customer_id)}:
        raise InvalidRequest("dispute", "is not a dispute of this customer")
    decision = visit.field("decision")
    if decision not in ("accept", "reject"):
        raise InvalidRequest("decision", "must be accept or reject")
    reason = visit.field("reason")
    if not reason:
        raise InvalidRequest("reason", "is required")
    d = await visit.desk.billing.payments.resolve_dispute(
        dispute_id, decision == "accept", reason, f"staff:{visit.staff.name}"
    )
    await visit.audit("dispute_resolved", customer_id, reason, dispute=dispute_id, status=str(d["status"]))
    return f"Dispute {dispute_id} is {d['status']}"


@action("record_payment")
async def record_payment(visit: Visit, customer_id: str) -> str:
    ba = await billing_account_of(visit)
    amount = minor(visit.field("amount"), "amount")
    reference = visit.field("reference") or key_of(visit)
    record = await visit.desk.billing.payments.pay(ba, amount, visit.field("channel"), reference)
    await visit.audit(
        "payment_recorded", ba, amount_minor=amount, channel=visit.field("channel"), replayed=record["replayed"]
    )
    return f"Payment of {amount // 100}.{amount % 100:02d} recorded on {ba}"


@action("promise_to_pay")
async def promise_to_pay(visit: Visit, customer_id: str) -> str:
    ba = await billing_account_of(visit)
    try:
        until = date.fromisoformat(visit.field("until"))
    except ValueError:
        raise InvalidRequest("until", "must be a date YYYY-MM-DD") from None
    await visit.desk.billing.collection.promise(ba, until, f"staff:{visit.staff.name}")
    await visit.audit("promise_to_pay", ba, until=until.isoformat())
    return f"Promise to pay by {until.isoformat()} recorded on {ba}"


def routes() -> list[BaseRoute]:
    base = "/customers/{customer_id}"
    post = ["POST"]
    return [
        Route(base + "/lines/{msisdn}/top-up", top_up, methods=post),
        Route(base + "/lines/{msisdn}/bundle", sell_bundle, methods=post),
        Route(base + "/lines/{msisdn}/order", line_order, methods=post),
        Route(base + "/interactions", interaction, methods=post),
        Route(base + "/tickets", open_ticket, methods=post),
        Route(base + "/tickets/{ticket_id}/move", move_ticket, methods=post),
        Route(base + "/disputes", open_dispute, methods=post),
        Route(base + "/disputes/{dispute_id}/resolve", resolve_dispute, methods=post),
        Route(base + "/payments", record_payment, methods=post),
        Route(base + "/promise", promise_to_pay, methods=post),
    ]
