"""The application form (individual and corporate customers), the order it becomes, and
that order followed live until the line is active.

Field names are the API's (``applicant.given_name``, ``identity_document.number``...), so
the problems the acquisition reports, field by field, land next to their inputs. Each
form carries its own order id: submitting the same form twice makes one order.
"""

from __future__ import annotations

import secrets
from typing import Any

from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from charging.money import parse_amount
from console.desk import Desk
from console.web import Visit, guarded
from provisioning.offers import Offer, Refusal, offers
from provisioning.orders import Order

GROUPS: dict[str, tuple[str, ...]] = {
    "applicant": ("given_name", "family_name", "date_of_birth"),
    "address": ("street", "city", "postal_code", "country"),
    "contact": ("email", "phone"),
    "identity_document": ("type", "number", "issuing_country", "expiry_date"),
    "company": ("name", "country", "registration_number"),
    "credit_history": (
        "defaults_5y",
        "late_payments_12m",
        "tenure_months",
        "monthly_income_micros",
        "monthly_debt_micros",
    ),
}
TOP = ("customer_kind", "contract", "plan_id", "msisdn", "imsi")
LIVE = ("SUBMITTED", "IN_PROGRESS")


def new_order_id() -> str:
    return "console-" + secrets.token_hex(8)


def application(values: dict[str, str]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The application document, as ``crm_api.application_doc`` makes it from protobuf
    (empty fields left out), and the problems of the form's own fields."""
    problems: list[tuple[str, str]] = []
    doc: dict[str, Any] = {name: values[name] for name in TOP if values.get(name)}
    for group, names in GROUPS.items():
        if group == "credit_history" and doc.get("contract") != "POSTPAID":
            continue
        if group == "company" and doc.get("customer_kind") != "CORPORATE":
            continue
        part: dict[str, Any] = {}
        for name in names:
            value = values.get(f"{group}.{name}", "")
            if not value:
                continue
            if group == "credit_history":
                if not value.isdigit():
                    problems.append((f"{group}.{name}", "must be a whole number"))
                    continue
                part[name] = int(value)
            else:
                part[name] = value
        if part:
            doc[group] = part
    balance = values.get("initial_balance", "")
    if balance:
        try:
            doc["initial_balance_micros"] = parse_amount(balance)
        except ValueError:
            problems.append(("initial_balance", "must be an amount such as 5 or 12.50"))
    return doc, problems


def form_values(visit: Visit) -> dict[str, str]:
    names = [*TOP, "initial_balance", "crm_order_id"]
    names += [f"{g}.{n}" for g, ns in GROUPS.items() for n in ns]
    return {name: visit.field(name) for name in names}


@guarded("apply")
async def form(visit: Visit) -> Response:
    kind = visit.request.query_params.get("kind", "INDIVIDUAL")
    values = {"customer_kind": kind if kind in ("INDIVIDUAL", "CORPORATE") else "INDIVIDUAL", "contract": "PREPAID"}
    values["crm_order_id"] = new_order_id()
    return page(visit, values, {}, None)


def page(
    visit: Visit, values: dict[str, str], errors: dict[str, str], order: Order | None, status: int = 200
) -> Response:
    plans = sorted(visit.desk.catalogs.current.plans.values(), key=lambda p: p.id)
    return visit.render("apply.html", status, values=values, errors=errors, order=order, plans=plans, groups=GROUPS)


@guarded("apply")
async def submit(visit: Visit) -> Response:
    values = form_values(visit)
    order_id = values.get("crm_order_id") or new_order_id()
    doc, problems = application(values)
    if problems:
        return page(visit, values, dict(problems), None, 422)
    order = await visit.desk.acquisition.submit(order_id, doc)
    await visit.audit("application_submitted", order.crm_order_id, status=order.status, customer=order.customer_id)
    if order.status == "REJECTED":
        values["crm_order_id"] = new_order_id()  # a corrected form is a new order
        return page(visit, values, dict(order.problems), order, 422)
    return RedirectResponse(f"/orders/{order.crm_order_id}", status_code=303)


async def offers_for(desk: Desk, order: Order) -> tuple[list[Offer], list[Refusal]]:
    """What the order's customer may take: every plan of the catalog against the
    customer's address and credit decision."""
    customer = await desk.acquisition.recorded().get(order.customer_id) if order.customer_id else None
    if customer is None:
        return [], []
    catalog = desk.catalogs.current
    coverage = (await desk.acquisition.coverage.current()).coverage
    plans = sorted(catalog.plans.values(), key=lambda p: p.id)
    return offers(
        plans,
        country=customer.country,
        postal_code=customer.postal_code,
        coverage=coverage,
        credit=customer.credit,
        at_s=desk.now_s(),
    )


async def order_state(visit: Visit, order_id: str) -> dict[str, Any] | None:
    order = await visit.desk.acquisition.get_order(order_id)
    if order is None:
        return None
    line = await visit.desk.acquisition.get_line(order.msisdn) if order.msisdn else None
    return {"order": order, "line": line, "live": order.status in LIVE}


@guarded("order")
async def order_page(visit: Visit) -> Response:
    order_id = visit.request.path_params["order_id"]
    state = await order_state(visit, order_id)
    if state is None:
        return visit.render("missing.html", 404, what=f"order {order_id}")
    offered, refused = await offers_for(visit.desk, state["order"])
    return visit.render("order.html", offered=offered, refused=refused, **state)


@guarded("order")
async def order_status(visit: Visit) -> Response:
    """The live part of the order page, polled by htmx until the order is decided."""
    order_id = visit.request.path_params["order_id"]
    state = await order_state(visit, order_id)
    if state is None:
        return visit.render("missing.html", 404, what=f"order {order_id}")
    return visit.render("order_status.html", **state)


def routes() -> list[BaseRoute]:
    return [
        Route("/apply", form),
        Route("/apply", submit, methods=["POST"]),
        Route("/orders/{order_id}", order_page),
        Route("/orders/{order_id}/status", order_status),
    ]
