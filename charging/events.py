"""Event-based charging (RFC 8506 CCR-E): debit, refund, check balance, price enquiry.

A direct debit is all or nothing. Debits and refunds are applied once per event id;
balance checks and price enquiries change nothing and are not remembered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from charging.catalog import Catalog, Plan, Usage
from charging.codes import ResultCode
from charging.context import Context
from charging.errors import Conflict, InvalidRequest, LimitExceeded
from charging.ledger import Reply
from charging.money import MAX_BALANCE
from charging.rating import NO_RATE, UNIT_FIELD, Rate, Units, check_units, cost
from charging.routing import Target, route
from charging.script_args import EventArgs
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


Where = tuple[str, str, str, bool]


def price_event(
    catalog: Catalog, plan: Plan, req: EventRequest, at_s: int
) -> tuple[Rate, int, int, Where] | EventAnswer:
    """(rate, units, price, where) of the event, or the answer that ends it early."""
    where = catalog.where(plan, req.rating_group, req.usage, at_s, req.service_identifier)
    rate = catalog.rate(plan, req.rating_group, req.usage, at_s, where)
    if rate is None:
        return EventAnswer(ResultCode.RATING_FAILED, failed_field="rating_group")
    if rate.free:
        return EventAnswer(ResultCode.CREDIT_CONTROL_NOT_APPLICABLE)
    field = f"requested.{UNIT_FIELD[rate.unit]}"
    units = req.requested.count(rate.unit)
    if units <= 0:
        code = ResultCode.MISSING_AVP if units == 0 else ResultCode.INVALID_AVP_VALUE
        return EventAnswer(code, failed_field=field)
    try:
        check_units(rate, units, field)
    except InvalidRequest as exc:
        return EventAnswer(ResultCode.INVALID_AVP_VALUE, failed_field=exc.field)
    return rate, units, cost(rate, units), where


class EventCharging:
    def __init__(self, ctx: Context, *, idempotency_ttl_s: int) -> None:
        self.ctx = ctx
        self.idempotency_ttl_s = idempotency_ttl_s

    async def charge(self, req: EventRequest) -> EventAnswer:
        units, amount = 0, 0
        rate: Rate | None = None

        async def attempt(target: Target) -> Reply | EventAnswer:
            nonlocal units, amount, rate
            now = self.ctx.clock.now_ms()
            where: Where = ("", "", "", False)
            if target.plan is not None:
                priced = price_event(target.catalog, target.plan, req, now // 1000)
                if isinstance(priced, EventAnswer):
                    return priced
                rate, units, amount, where = priced
            service, zone, band, roaming = where
            args = EventArgs(
                action=req.action,
                digest=req.digest,
                identity_field=req.identity.kind,
                identity_value=req.identity.value,
                plan_id=target.plan_id,
                units=units,
                answer_ttl_s=self.idempotency_ttl_s,
                max_balance=MAX_BALANCE,
                rate=rate.packed if rate is not None else NO_RATE,
                unit=int(rate.unit) if rate is not None else 0,
                service=service,
                zone=zone,
                band=band,
                now_ms=now,
                low_balance_micros=self.ctx.low_balance_micros,
                amount=amount,
                terminating=req.terminating,
                roaming=roaming,
                destination=req.usage.destination,
                event_id=req.event_id,
            )
            return await self.ctx.ledger.event(target.account, args)

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
        assert rate is not None
        return _answer(req, rate, units, amount, reply.body, reply.kind == "REPLAY")


def _answer(req: EventRequest, rate: Rate, units: int, amount: int, body: str, replayed: bool) -> EventAnswer:
    """``amount`` is the list price; what money a debit took (after bundles) is in the body."""
    rc, balance, _available, charged = (int(x) for x in body.split(" "))
    if req.action == "P":
        return EventAnswer(rc, cost_micros=amount)
    if req.action == "C":
        if rc == ResultCode.END_USER_SERVICE_DENIED:
            return EventAnswer(rc)
        return EventAnswer(ResultCode.SUCCESS, cost_micros=charged, enough_credit=rc == ResultCode.SUCCESS)
    granted = Units.of(rate.unit, units) if rc == ResultCode.SUCCESS else None
    cost = amount if req.action == "R" else charged
    return EventAnswer(rc, granted=granted, cost_micros=cost, balance_micros=balance, replayed=replayed)
