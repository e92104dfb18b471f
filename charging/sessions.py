"""Session-based charging (RFC 8506 CCR-I/U/T): rate a request, apply it atomically.

Python rates: which rate of the plan applies (service, destination zone, time band,
roaming), which rates were in force before and after a tariff change, how many units to
ask for, what is malformed. The ledger's ``session.lua`` applies usage and reservations
against the balance in one atomic step and stores the answer for retransmissions. The
parse of that answer is shared by first executions and replays, so both produce the
same reply.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from charging import metrics
from charging.catalog import Catalog, Plan, Usage
from charging.codes import ResultCode
from charging.context import Context
from charging.errors import Conflict, InvalidRequest
from charging.ledger import Reply
from charging.money import MAX_AMOUNT, MAX_UNITS
from charging.rating import (
    UNIT_FIELD,
    FinalUnitAction,
    Rate,
    UnitKind,
    Units,
    check_units,
    quota,
    session_cost,
    worst_case_cost,
)
from charging.refunds import session_token
from charging.routing import Target, route
from charging.script_args import RatingGroupArgs, SessionArgs
from charging.subscribers import Identity

RequestKind = Literal["I", "U", "T"]

# What one request may report per rating group, by unit: a day of time, a terabyte, ten
# thousand service units, 1,000 units of currency.
DEFAULT_CEILINGS: Mapping[UnitKind, int] = {
    UnitKind.TIME: 86_400,
    UnitKind.VOLUME: 10**12,
    UnitKind.SERVICE_SPECIFIC: 10_000,
    UnitKind.MONEY: 10**9,
}


@dataclass(frozen=True)
class UsageLimits:
    """How much one request may report and be granted per rating group, and how far
    below zero usage beyond its grants may take an account's available money."""

    ceilings: Mapping[UnitKind, int] = field(default_factory=lambda: DEFAULT_CEILINGS)
    # Micros; -1: the largest single grant the plan allows (``largest_grant``).
    overrun_floor: int = -1

    def ceiling(self, rate: Rate, plan: Plan | None = None) -> int:
        """Units one request may report or be granted on ``rate``: the unit's ceiling (the
        plan's where it sets a lower one), rounded up to the rate's increments (so that a
        full grant may be reported)."""
        server = self.ceilings[rate.unit]
        return quota(rate, plan.limits.ceiling(rate.unit, server) if plan is not None else server)

    def floor(self, plan: Plan) -> int:
        """The overrun floor of ``plan`` (micros, at most MAX_AMOUNT): the plan's own, else
        the server's setting, else the largest single grant the plan allows."""
        if plan.limits.overrun_floor is not None:
            return min(plan.limits.overrun_floor, MAX_AMOUNT)
        if self.overrun_floor >= 0:
            return min(self.overrun_floor, MAX_AMOUNT)
        return self.largest_grant(plan)

    def largest_grant(self, plan: Plan) -> int:
        """The most money one grant of ``plan`` can hold: a grant of the ceiling from the
        start of a session, at the dearest of its rates (at most MAX_AMOUNT)."""
        rates = (rule.price for version in plan.versions for rule in version.rules if not rule.price.free)
        return min(max((session_cost(r, self.ceiling(r, plan)) for r in rates), default=0), MAX_AMOUNT)


@dataclass(frozen=True)
class Outcome:
    """The command-level result of a request and whether the session ends with it."""

    code: int
    ends: bool


def command_result(kind: RequestKind, codes: Sequence[int], *, held_after: bool, limit_reached: bool) -> Outcome:
    """The command-level result code of a session request, from its rating groups' codes.

    A Diameter Gy client takes a command-level failure as the end of the whole session
    (RFC 8506 section 7), so an UPDATE fails at command level only when the session
    cannot go on: 4010 (a rating group was denied: the line is barred), or 4012 when a
    rating group was refused for credit and afterwards no rating group of the session
    holds a reservation, or 4012 when usage went past the overrun floor
    (``limit_reached``). The server then ends the session and releases every
    reservation. Otherwise it is 2001, whatever single rating groups answered.

    An INITIAL or TERMINATE is 4011 when every rating group is free (not credit
    controlled), 2001 when one succeeded, else its first rating group's failure; only an
    INITIAL answered 2001 opens the session, and a TERMINATE always ends it.
    ``session.lua`` computes the same in Lua; 5002 (unknown session) and 5030 (unknown
    user) are decided before any rating group is looked at.
    """
    if limit_reached:
        return Outcome(ResultCode.CREDIT_LIMIT_REACHED, True)
    if kind == "U":
        if ResultCode.END_USER_SERVICE_DENIED in codes:
            return Outcome(ResultCode.END_USER_SERVICE_DENIED, True)
        if ResultCode.CREDIT_LIMIT_REACHED in codes and not held_after:
            return Outcome(ResultCode.CREDIT_LIMIT_REACHED, True)
        return Outcome(ResultCode.SUCCESS, False)
    ok = (ResultCode.SUCCESS, ResultCode.CREDIT_CONTROL_NOT_APPLICABLE)
    code: int = ResultCode.SUCCESS
    if not any(c in ok for c in codes):
        code = next((c for c in codes), ResultCode.SUCCESS)
    elif codes and all(c == ResultCode.CREDIT_CONTROL_NOT_APPLICABLE for c in codes):
        code = ResultCode.CREDIT_CONTROL_NOT_APPLICABLE
    return Outcome(code, kind == "T" or code != ResultCode.SUCCESS)


@dataclass(frozen=True)
class RatingGroupRequest:
    rating_group: int
    service_identifier: int = 0
    requested: Units | None = None
    used: Units | None = None
    final: bool = False
    # Units used after the tariff change time of the previous answer.
    used_after_change: Units | None = None


@dataclass(frozen=True)
class SessionRequest:
    session_id: str
    kind: RequestKind
    request_number: int
    identity: Identity
    rating_groups: tuple[RatingGroupRequest, ...]
    usage: Usage
    # Fingerprint of the whole request payload: a reused request number with another
    # payload is refused.
    digest: str
    # Incoming usage (calls and SMS received): allowed on barred-outgoing lines.
    terminating: bool = False


@dataclass(frozen=True)
class FinalUnit:
    action: FinalUnitAction
    redirect_address: str = ""
    restriction_filter_rules: tuple[str, ...] = ()


@dataclass(frozen=True)
class RatingGroupAnswer:
    rating_group: int
    service_identifier: int
    result_code: int
    granted: Units | None = None
    validity_time_s: int = 0
    final_unit: FinalUnit | None = None
    cost_micros: int = 0
    tariff_change_time: int = 0


@dataclass(frozen=True)
class SessionAnswer:
    result_code: int
    rating_groups: tuple[RatingGroupAnswer, ...] = ()
    failed_field: str = ""
    replayed: bool = False
    # Changes this request made (zero for replays), for metrics.
    reserved_delta: int = 0
    session_delta: int = 0
    # The request debited reported usage: the token a refund of it presents.
    refund_information: bytes = b""


def previous_change(plan: Plan, at_s: int, lookback_s: int) -> int | None:
    """The last tariff change (band or plan version) at or before ``at_s``."""
    last, t = None, at_s - lookback_s
    while (change := plan.next_change(t, at_s - t)) is not None and change <= at_s:
        last, t = change, change
    return last


def split_change(plan: Plan, now_s: int, validity_s: int, announced: int | None = None) -> int | None:
    """The tariff change a report's usage is split at: the change the session announced
    with its grant (``announced``, as session.lua named it), else the last change before
    now within twice the validity time.

    The second is a guess from the clock at report time, right unless the clock moved
    across another change since the grant or the report came late: session.lua holds it
    to the announcement it stored and refuses (TARIFF) a guess that differs, naming the
    announced change (``announced_changes``). A grant that announced none keeps the guess.
    """
    if announced is not None:
        return announced
    return previous_change(plan, now_s, 2 * validity_s)


def announced_changes(body: str) -> dict[int, int]:
    """The tariff changes a TARIFF refusal of session.lua names, by rating group."""
    pairs = (item.split(":") for item in body.split(" ") if item)
    return {int(rg): int(at_s) for rg, at_s in pairs}


def rating_args(
    catalog: Catalog,
    plan: Plan,
    groups: tuple[RatingGroupRequest, ...],
    usage: Usage,
    now_s: int,
    limits: UsageLimits = UsageLimits(),
    announced: Mapping[int, int] | None = None,
) -> tuple[tuple[RatingGroupArgs, ...], str, dict[int, Rate]]:
    """Script arguments for each rating group, the first malformed field if any, and the
    rate of each rating group now.

    A rating group the plan cannot rate is 5031, a free one (emergency, toll-free) 4011,
    one with an out-of-range unit count or usage above the ceiling of its unit 5004:
    decided here, recorded by the script in the answer. A grant is at most the ceiling.
    When the tariff changes within the grant's validity, the grant is sized at the
    dearer of the two rates and the change time goes to the client; units it reports as
    used after a change are priced at the rate in force at it, the rest at the rate just
    before it. The change is the one the session announced where ``announced`` names it
    (rating group -> change s), else ``split_change``'s guess.
    """
    args: list[RatingGroupArgs] = []
    failed = ""
    rates: dict[int, Rate] = {}
    for i, g in enumerate(groups):
        where = catalog.where(plan, g.rating_group, usage, now_s, g.service_identifier)
        rate = catalog.rate(plan, g.rating_group, usage, now_s, where)
        preset, want, used, used_after, change = 0, 0, 0, 0, 0
        before = after = sizing = rate
        split = None
        if rate is None:
            preset = ResultCode.RATING_FAILED
        else:
            rates[g.rating_group] = rate
            if rate.free:
                preset = ResultCode.CREDIT_CONTROL_NOT_APPLICABLE
        if rate is not None and not preset:
            try:
                ceiling = limits.ceiling(rate, plan)
                if g.requested is not None:
                    want = min(quota(rate, _count(g.requested, rate, i, "requested")), ceiling)
                if g.used is not None:
                    used = _count(g.used, rate, i, "used")
                    _within(used, ceiling, rate, i, "used")
                if g.used_after_change is not None:
                    used_after = _count(g.used_after_change, rate, i, "used_after_tariff_change")
                    _within(used + used_after, ceiling, rate, i, "used_after_tariff_change")
            except InvalidRequest as exc:
                preset, want, used, used_after = ResultCode.INVALID_AVP_VALUE, 0, 0, 0
                failed = failed or exc.field
            if used_after:
                split = split_change(plan, now_s, rate.validity_time_s, (announced or {}).get(g.rating_group))
                if split is not None:
                    before = _rate_at(catalog, plan, g.rating_group, usage, where, split - 1) or rate
                    after = _rate_at(catalog, plan, g.rating_group, usage, where, split) or rate
            if want:
                change = plan.next_change(now_s, rate.validity_time_s) or 0
                later = _rate_at(catalog, plan, g.rating_group, usage, where, change) if change else None
                if later is not None and session_cost(later, want) > session_cost(rate, want):
                    sizing = later
        if rate is not None and preset == ResultCode.CREDIT_CONTROL_NOT_APPLICABLE:
            used = _free_used(g, rate, limits)
            args.append(RatingGroupArgs.free(g.rating_group, g.final, used, int(rate.unit), where))
        elif rate is None or preset:
            args.append(RatingGroupArgs.unrated(g.rating_group, int(preset), g.final))
        else:
            assert before is not None and after is not None and sizing is not None
            service, zone, band, roaming = where
            args.append(
                RatingGroupArgs(
                    rating_group=g.rating_group,
                    preset_code=int(preset),
                    want=want,
                    final=g.final,
                    validity_s=rate.validity_time_s,
                    tariff_change_s=change,
                    used_before=used,
                    rate_before=before.packed,
                    used_after=used_after,
                    rate_after=after.packed,
                    sizing_rate=sizing.packed,
                    unit=int(rate.unit),
                    service=service,
                    zone=zone,
                    band=band,
                    roaming=roaming,
                    split_at_s=split or 0,
                )
            )
    return tuple(args), failed, rates


def _rate_at(
    catalog: Catalog, plan: Plan, rating_group: int, usage: Usage, where: tuple[str, str, str, bool], at_s: int
) -> Rate | None:
    """The rate of the same usage at another instant: only the band can differ."""
    service, zone, _band, roaming = where
    return catalog.rate(plan, rating_group, usage, at_s, (service, zone, plan.band_at(at_s), roaming))


def _count(units: Units, rate: Rate, index: int, name: str) -> int:
    """The units in the rate's unit, checked against the ledger's exact range; a field at
    fault is ``rating_groups[index].<name>.<unit field>`` (``index`` -1: ``<name>.<unit field>``)."""
    amount = units.count(rate.unit)
    if amount < 0:
        raise InvalidRequest(_field(index, name, rate), "must not be negative")
    if amount > MAX_UNITS or worst_case_cost(rate, amount) > MAX_AMOUNT:
        check_units(rate, amount, _field(index, name, rate))  # raises, naming the field
    return amount


def _field(index: int, name: str, rate: Rate) -> str:
    where = f"rating_groups[{index}].{name}" if index >= 0 else name
    return f"{where}.{UNIT_FIELD[rate.unit]}"


def _free_used(g: RatingGroupRequest, rate: Rate, limits: UsageLimits) -> int:
    """What a rating group that is not credit-controlled (emergency, toll-free) reports as
    used, for its usage record; 0 when it cannot be counted (never a refusal: such usage
    is answered 4011 whatever it reports)."""
    try:
        used = sum(_count(u, rate, -1, "used") for u in (g.used, g.used_after_change) if u is not None)
        _within(used, limits.ceiling(rate), rate, -1, "used")
    except InvalidRequest:
        return 0
    return used


def _within(units: int, ceiling: int, rate: Rate, index: int, name: str) -> None:
    """Usage reported in one request must not pass the ceiling of its unit."""
    if units > ceiling:
        raise InvalidRequest(_field(index, name, rate), f"more than {ceiling} per report")


def parse_answer(body: str, rates: dict[int, Rate], groups: tuple[RatingGroupRequest, ...]) -> SessionAnswer:
    """Turn a stored answer body into the answer, rating group by rating group."""
    return SessionAnswer(*parse_reply_body(body, rates, groups))


def parse_reply_body(
    body: str, rates: dict[int, Rate], groups: tuple[RatingGroupRequest, ...]
) -> tuple[int, tuple[RatingGroupAnswer, ...]]:
    """``parse_answer``'s result code and rating group answers."""
    head, *parts = body.split(" ")
    answers = []
    for g, part in zip(groups, parts[1:], strict=False):
        rc, granted, cost_micros, vt, fui, change = map(int, part.split(","))
        rate = rates.get(g.rating_group)
        final_unit = None
        if fui and rate is not None:
            final_unit = FinalUnit(rate.final_unit_action, rate.redirect_address, rate.restriction_filter_rules)
        answers.append(
            RatingGroupAnswer(
                g.rating_group,
                g.service_identifier,
                rc,
                Units.of(rate.unit, granted) if rate is not None and granted else None,
                vt,
                final_unit,
                cost_micros,
                change,
            )
        )
    return int(head), tuple(answers)


class SessionCharging:
    def __init__(
        self,
        ctx: Context,
        *,
        supervision_factor: int,
        answer_ttl_s: int,
        refund_ttl_s: int,
        limits: UsageLimits = UsageLimits(),
    ) -> None:
        self.ctx = ctx
        self.supervision_factor = supervision_factor
        self.answer_ttl_s = answer_ttl_s
        self.refund_ttl_s = refund_ttl_s
        self.limits = limits
        # Overrun floor by (catalog version, plan id): worked out once per plan.
        self._floors: dict[tuple[str, str], int] = {}

    async def charge(self, req: SessionRequest) -> SessionAnswer:
        """Rate and apply one request."""
        failed = ""
        rates: dict[int, Rate] = {}
        debits = False
        # Tariff changes the session announced, by rating group, once a TARIFF refusal named them.
        announced: dict[int, int] = {}

        async def attempt(target: Target) -> Reply:
            nonlocal failed, rates, debits
            now = self.ctx.clock.now_ms()
            groups: tuple[RatingGroupArgs, ...] = ()
            if target.plan is not None:
                groups, failed, rates = rating_args(
                    target.catalog, target.plan, req.rating_groups, req.usage, now // 1000, self.limits, announced
                )
            # The script writes a refund record for exactly these rating groups.
            debits = any(not g.preset_code and g.used_before + g.used_after > 0 for g in groups)
            reply = await self._run(target, req, groups, now)
            if reply.kind == "TARIFF":
                # route tries again, with each split around the change its grant announced.
                announced.update(announced_changes(reply.body))
            return reply

        routed = await route(
            self.ctx.directory,
            self.ctx.catalogs,
            req.identity,
            attempt,
            unknown_user=SessionAnswer(ResultCode.USER_UNKNOWN),
            unknown_plan=SessionAnswer(ResultCode.RATING_FAILED),
        )
        if isinstance(routed, SessionAnswer):
            return routed
        target, reply = routed
        if reply.outbox:
            self.ctx.wake_relay(target.account)
        if reply.kind == "CONFLICT":
            raise Conflict(f"request_number {req.request_number} was already used in this session with another payload")
        code, answers = parse_reply_body(reply.body, rates, req.rating_groups)
        for unit, units in reply.unbilled:
            metrics.UNBILLED_OVERRUN.labels(UnitKind(unit).name.lower()).inc(units)
        return SessionAnswer(
            code,
            answers,
            failed_field=failed,
            replayed=reply.kind == "REPLAY",
            reserved_delta=reply.reserved_delta,
            session_delta=reply.session_delta,
            # No rating group answered: the script stopped before any usage (5002, 5012).
            refund_information=session_token(req.session_id, req.request_number) if debits and answers else b"",
        )

    async def _run(self, target: Target, req: SessionRequest, groups: tuple[RatingGroupArgs, ...], now: int) -> Reply:
        plan = target.plan
        supervision_ms = self.supervision_factor * plan.longest_validity_s * 1000 if plan else 0
        args = SessionArgs(
            now_ms=now,
            kind=req.kind,
            session_id=req.session_id,
            request_number=req.request_number,
            digest=req.digest,
            identity_field=req.identity.kind,
            identity_value=req.identity.value,
            plan_id=target.plan_id,
            answer_ttl_s=self.answer_ttl_s,
            supervision_ms=supervision_ms,
            catalog_version=target.catalog.version,
            low_balance_micros=self.ctx.low_balance_micros,
            terminating=req.terminating,
            destination=req.usage.destination,
            overrun_floor=self._floor(target),
            refund_ttl_s=self.refund_ttl_s,
            visited_network=req.usage.visited_network,
            records=self.ctx.usage_records,
            groups=groups,
        )
        hint = now + supervision_ms if req.kind == "I" and plan is not None else 0
        return await self.ctx.ledger.session(target.account, args, hint_deadline_ms=hint)

    def _floor(self, target: Target) -> int:
        if target.plan is None:
            return 0
        key = (target.catalog.version, target.plan_id)
        floor = self._floors.get(key)
        if floor is None:
            if len(self._floors) > 10_000:
                self._floors.clear()
            floor = self._floors[key] = self.limits.floor(target.plan)
        return floor
