"""Event-based charging (RFC 8506 CCR-E): debit, refund, check balance, price enquiry.

A direct debit is all or nothing, and its answer carries a refund token (3GPP TS 32.299
Refund-Information, ``refunds.py``). A refund presents a token and gets back at most what
that debit took and was not refunded yet, where it came from; it is not rated again (it
reverses a debit at the prices of that debit). Debits and refunds are applied once per
event id; balance checks and price enquiries change nothing and are not remembered.

A debit the plan rates free (toll-free, emergency) is answered 4011 and takes nothing, but
it is a use all the same: it runs event.lua as action ``F``, which records it (layout
``n``, ``cdrs.py``) and keeps its answer under the event id like any debit, so that a
retransmission is answered the same and recorded once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from charging.catalog import Catalog, Plan, Usage
from charging.codes import ResultCode
from charging.context import Context
from charging.errors import Conflict, InvalidRequest, LimitExceeded
from charging.ledger import Reply
from charging.money import MAX_AMOUNT, MAX_BALANCE, MAX_UNITS
from charging.rating import NO_RATE, UNIT_FIELD, Rate, UnitKind, Units, check_units, cost, worst_case_cost
from charging.refunds import RefundRef, event_token, parse_token
from charging.routing import Target, route
from charging.script_args import EventArgs
from charging.security.identity import caller_name
from charging.subscribers import Identity

Action = Literal["D", "R", "C", "P"]  # direct debit, refund, check balance, price enquiry


@dataclass(frozen=True)
class EventRequest:
    event_id: str
    action: Action
    identity: Identity
    rating_group: int
    service_identifier: int
    requested: Units
    digest: str
    usage: Usage = field(default_factory=Usage)
    terminating: bool = False
    # REFUND_ACCOUNT: the token of the debit to refund.
    refund_information: bytes = b""


@dataclass(frozen=True)
class EventAnswer:
    result_code: int
    granted: Units | None = None
    cost_micros: int = 0
    # For CHECK_BALANCE: whether the available balance covers the requested units.
    enough_credit: bool | None = None
    balance_micros: int | None = None
    failed_field: str = ""
    replayed: bool = False
    # A direct debit that took something: the token a refund of it presents.
    refund_information: bytes = b""


Where = tuple[str, str, str, bool]


def price_event(
    catalog: Catalog, plan: Plan, req: EventRequest, at_s: int
) -> tuple[Rate, int, int, Where] | EventAnswer:
    """(rate, units, price, where) of the event, or the answer that ends it early."""
    where = catalog.where(plan, req.rating_group, req.usage, at_s, req.service_identifier)
    rate = catalog.rate(plan, req.rating_group, req.usage, at_s, where)
    if rate is None:
        return EventAnswer(ResultCode.RATING_FAILED, failed_field="rating_group")
    units = req.requested.count(rate.unit)
    if rate.free:
        if req.action != "D":
            return EventAnswer(ResultCode.CREDIT_CONTROL_NOT_APPLICABLE)  # nothing to check or price
        if not 0 <= units <= MAX_UNITS:
            return EventAnswer(ResultCode.INVALID_AVP_VALUE, failed_field=f"requested.{UNIT_FIELD[rate.unit]}")
        return rate, units, 0, where  # recorded with the units it states (none stated: 0)
    if units <= 0:
        code = ResultCode.MISSING_AVP if units == 0 else ResultCode.INVALID_AVP_VALUE
        return EventAnswer(code, failed_field=f"requested.{UNIT_FIELD[rate.unit]}")
    if units > MAX_UNITS or worst_case_cost(rate, units) > MAX_AMOUNT:
        try:
            check_units(rate, units, f"requested.{UNIT_FIELD[rate.unit]}")
        except InvalidRequest as exc:
            return EventAnswer(ResultCode.INVALID_AVP_VALUE, failed_field=exc.field)
    return rate, units, cost(rate, units), where


REFUND_UNITS = (
    (UnitKind.TIME, ("time_s",)),
    (UnitKind.VOLUME, ("total_octets", "input_octets", "output_octets")),
    (UnitKind.SERVICE_SPECIFIC, ("service_specific_units",)),
    (UnitKind.MONEY, ("money_micros",)),
)


def refund_request(req: EventRequest) -> tuple[RefundRef, UnitKind, int] | EventAnswer:
    """The debit a refund names and the units it gives back (in the one unit the request
    states), or the answer refusing it."""
    if not req.refund_information:
        return EventAnswer(ResultCode.MISSING_AVP, failed_field="refund_information")
    ref = parse_token(req.refund_information)
    if ref is None:
        return EventAnswer(ResultCode.INVALID_AVP_VALUE, failed_field="refund_information")
    stated = [unit for unit, names in REFUND_UNITS if any(getattr(req.requested, n) for n in names)]
    if not stated:
        return EventAnswer(ResultCode.MISSING_AVP, failed_field="requested")
    if len(stated) > 1:
        return EventAnswer(ResultCode.INVALID_AVP_VALUE, failed_field="requested")
    unit = stated[0]
    units = req.requested.count(unit)
    if not 0 < units <= MAX_UNITS:
        return EventAnswer(ResultCode.INVALID_AVP_VALUE, failed_field=f"requested.{UNIT_FIELD[unit]}")
    return ref, unit, units


class EventCharging:
    def __init__(self, ctx: Context, *, idempotency_ttl_s: int) -> None:
        self.ctx = ctx
        self.idempotency_ttl_s = idempotency_ttl_s

    async def charge(self, req: EventRequest) -> EventAnswer:
        units, amount = 0, 0
        unit: UnitKind | None = None
        refund_of: RefundRef | None = None
        if req.action == "R":
            checked = refund_request(req)
            if isinstance(checked, EventAnswer):
                return checked
            refund_of, unit, units = checked

        async def attempt(target: Target) -> Reply | EventAnswer:
            nonlocal units, amount, unit
            now = self.ctx.clock.now_ms()
            where: Where = ("", "", "", False)
            rate: Rate | None = None
            if target.plan is not None and refund_of is None:
                priced = price_event(target.catalog, target.plan, req, now // 1000)
                if isinstance(priced, EventAnswer):
                    return priced
                rate, units, amount, where = priced
                unit = rate.unit
            service, zone, band, roaming = where
            args = EventArgs(
                action="F" if rate is not None and rate.free else req.action,
                digest=req.digest,
                identity_field=req.identity.kind,
                identity_value=req.identity.value,
                plan_id=target.plan_id,
                rating_group=req.rating_group,
                units=units,
                answer_ttl_s=self.idempotency_ttl_s,
                max_balance=MAX_BALANCE,
                rate=rate.packed if rate is not None else NO_RATE,
                unit=int(unit) if unit is not None else 0,
                service=service,
                zone=zone,
                band=band,
                now_ms=now,
                low_balance_micros=self.ctx.low_balance_micros,
                terminating=req.terminating,
                roaming=roaming,
                destination=req.usage.destination,
                event_id=req.event_id,
                refund_field=refund_of.field if refund_of is not None else "",
                visited_network=req.usage.visited_network,
                actor=caller_name(),
                records=self.ctx.usage_records,
                catalog_version=target.catalog.version if rate is not None else "",
            )
            return await self.ctx.ledger.event(target.account, args, refund_of)

        routed = await route(
            self.ctx.directory,
            self.ctx.catalogs,
            req.identity,
            attempt,
            unknown_user=EventAnswer(ResultCode.USER_UNKNOWN),
            unknown_plan=EventAnswer(ResultCode.RATING_FAILED),
        )
        if isinstance(routed, EventAnswer):
            return routed
        target, reply = routed
        if reply.outbox:
            self.ctx.wake_relay(target.account)
        if reply.kind == "CONFLICT":
            raise Conflict(f"event_id {req.event_id!r} was already used with another payload")
        if reply.kind == "LIMIT":
            raise LimitExceeded(f"the refund would take the balance past {MAX_BALANCE} micros")
        assert unit is not None
        return _answer(req, unit, units, amount, reply.body, reply.kind == "REPLAY")


def _answer(req: EventRequest, unit: UnitKind, units: int, amount: int, body: str, replayed: bool) -> EventAnswer:
    """``amount`` is the list price; what money a debit took (after bundles) or a refund
    gave back is in the body, and for a refused refund the field at fault."""
    rc, balance, _available, charged, *failed = body.split(" ")
    code = int(rc)
    if code == ResultCode.CREDIT_CONTROL_NOT_APPLICABLE:
        return EventAnswer(code, replayed=replayed)  # a free debit: recorded, nothing taken
    if req.action == "P":
        return EventAnswer(code, cost_micros=amount)
    if req.action == "C":
        if code == ResultCode.END_USER_SERVICE_DENIED:
            return EventAnswer(code)
        return EventAnswer(ResultCode.SUCCESS, cost_micros=int(charged), enough_credit=code == ResultCode.SUCCESS)
    refund = req.action == "R"
    if code != ResultCode.SUCCESS:
        field = failed[0] if failed else ""
        if field == "requested":
            field = f"requested.{UNIT_FIELD[unit]}"
        return EventAnswer(
            code,
            cost_micros=0 if refund else int(charged),
            balance_micros=int(balance),
            failed_field=field,
            replayed=replayed,
        )
    return EventAnswer(
        code,
        granted=Units.of(unit, units),
        cost_micros=-int(charged) if refund else int(charged),
        balance_micros=int(balance),
        replayed=replayed,
        refund_information=b"" if refund else event_token(req.event_id),
    )
