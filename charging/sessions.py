"""Session-based charging (RFC 8506 CCR-I/U/T): rate a request, apply it atomically.

Python rates (which rate applies, how many units to ask for, what is malformed); the
ledger's ``session.lua`` applies usage and reservations against the balance in one
atomic step and stores the answer for retransmissions. The parse of that answer is
shared by first executions and replays, so both produce the same reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from charging.clock import Clock
from charging.codes import ResultCode
from charging.errors import Conflict, InvalidRequest
from charging.ledger import Arg, Ledger, Reply
from charging.rating import UNIT_FIELD, FinalUnitAction, Rate, Tariff, Units, check_units, quota
from charging.routing import Target, route
from charging.subscribers import Directory, Identity
from charging.tariffs import TariffBook

RequestKind = Literal["I", "U", "T"]


@dataclass(frozen=True)
class RatingGroupRequest:
    rating_group: int
    service_identifier: int = 0
    requested: Units | None = None
    used: Units | None = None
    final: bool = False


@dataclass(frozen=True)
class SessionRequest:
    session_id: str
    kind: RequestKind
    request_number: int
    identity: Identity
    rating_groups: tuple[RatingGroupRequest, ...]
    # Fingerprint of the whole request payload: a reused request number with another
    # payload is refused.
    digest: str


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


@dataclass(frozen=True)
class SessionAnswer:
    result_code: int
    rating_groups: tuple[RatingGroupAnswer, ...] = ()
    failed_field: str = ""
    replayed: bool = False
    # Changes this request made (zero for replays), for metrics.
    reserved_delta: int = 0
    session_delta: int = 0


def rating_args(tariff: Tariff, groups: tuple[RatingGroupRequest, ...]) -> tuple[list[Arg], str]:
    """Script arguments for each rating group, and the first malformed field if any.

    A rating group the tariff does not know is 5031, a free one 4011, one with an
    out-of-range unit count 5004: decided here, recorded by the script in the answer.
    """
    args: list[Arg] = [len(groups)]
    failed = ""
    for i, g in enumerate(groups):
        rate = tariff.rates.get(g.rating_group)
        preset, want, used = 0, 0, 0
        if rate is None:
            preset = ResultCode.RATING_FAILED
        elif rate.free:
            preset = ResultCode.CREDIT_CONTROL_NOT_APPLICABLE
        else:
            try:
                if g.requested is not None:
                    want = quota(rate, _count(g.requested, rate, f"rating_groups[{i}].requested"))
                if g.used is not None:
                    used = _count(g.used, rate, f"rating_groups[{i}].used")
            except InvalidRequest as exc:
                preset, want, used = ResultCode.INVALID_AVP_VALUE, 0, 0
                failed = failed or exc.field
        args += [g.rating_group, int(preset), want, used]
        if rate is None:
            args += [1, 0, 0, 1 if g.final else 0, 0, 1, 0, 0, 0]
        else:
            args += [rate.increment, rate.price_micros, rate.validity_time_s, 1 if g.final else 0]
            args += [rate.connect_fee, rate.first, rate.first_cost, rate.min_charge, rate.max_session_cost]
    return args, failed


def _count(units: Units, rate: Rate, where: str) -> int:
    """The units in the rate's unit, checked against the ledger's exact range."""
    amount = units.count(rate.unit)
    field = f"{where}.{UNIT_FIELD[rate.unit]}"
    if amount < 0:
        raise InvalidRequest(field, "must not be negative")
    check_units(rate, amount, field)
    return amount


def parse_answer(body: str, tariff: Tariff | None, groups: tuple[RatingGroupRequest, ...]) -> SessionAnswer:
    """Turn a stored answer body into the answer, rating group by rating group."""
    head, *parts = body.split(" ")
    code = int(head)
    answers = []
    for g, part in zip(groups, parts[1:], strict=False):
        rc, granted, cost_micros, vt, fui = (int(x) for x in part.split(","))
        rate = tariff.rates.get(g.rating_group) if tariff else None
        final_unit = None
        if fui and rate is not None:
            final_unit = FinalUnit(rate.final_unit_action, rate.redirect_address, rate.restriction_filter_rules)
        answers.append(
            RatingGroupAnswer(
                rating_group=g.rating_group,
                service_identifier=g.service_identifier,
                result_code=rc,
                granted=Units.of(rate.unit, granted) if rate is not None and granted else None,
                validity_time_s=vt,
                final_unit=final_unit,
                cost_micros=cost_micros,
            )
        )
    return SessionAnswer(code, tuple(answers))


def answer_tariff_id(body: str) -> str:
    parts = body.split(" ", 2)
    return parts[1] if len(parts) > 1 else ""


class SessionCharging:
    def __init__(
        self,
        ledger: Ledger,
        directory: Directory,
        tariffs: TariffBook,
        clock: Clock,
        *,
        supervision_factor: int,
        answer_ttl_s: int,
    ) -> None:
        self.ledger = ledger
        self.directory = directory
        self.tariffs = tariffs
        self.clock = clock
        self.supervision_factor = supervision_factor
        self.answer_ttl_s = answer_ttl_s

    async def charge(self, req: SessionRequest) -> SessionAnswer:
        """Rate and apply one request."""
        failed = ""

        async def attempt(target: Target) -> Reply:
            nonlocal failed
            args: list[Arg] = [0]
            if target.tariff is not None:
                args, failed = rating_args(target.tariff, req.rating_groups)
            return await self._run(target, req, args)

        routed = await route(
            self.directory,
            self.tariffs,
            req.identity,
            attempt,
            unknown_user=SessionAnswer(ResultCode.USER_UNKNOWN),
            unknown_tariff=SessionAnswer(ResultCode.RATING_FAILED),
        )
        if isinstance(routed, SessionAnswer):
            return routed
        target, reply = routed
        if reply.kind == "CONFLICT":
            raise Conflict(f"request_number {req.request_number} was already used in this session with another payload")
        tariff = target.tariff
        answer_tariff = answer_tariff_id(reply.body)
        if answer_tariff != target.tariff_id:
            tariff = await self.tariffs.get(answer_tariff)
        answer = parse_answer(reply.body, tariff, req.rating_groups)
        return SessionAnswer(
            answer.result_code,
            answer.rating_groups,
            failed_field=failed,
            replayed=reply.kind == "REPLAY",
            reserved_delta=reply.reserved_delta,
            session_delta=reply.session_delta,
        )

    async def _run(self, target: Target, req: SessionRequest, rg_args: list[Arg]) -> Reply:
        now = self.clock.now_ms()
        tariff = target.tariff
        supervision_ms = self.supervision_factor * tariff.longest_validity_s * 1000 if tariff else 0
        args: list[Arg] = [
            now,
            req.kind,
            req.session_id,
            req.request_number,
            req.digest,
            req.identity.kind,
            req.identity.value,
            target.tariff_id,
            self.answer_ttl_s,
            supervision_ms,
            *rg_args,
        ]
        hint = now + supervision_ms if req.kind == "I" and tariff is not None else 0
        return await self.ledger.session(
            target.account, req.session_id, req.request_number, args, hint_deadline_ms=hint
        )
