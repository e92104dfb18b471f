"""Nchf_ConvergedCharging to the charging core and back (pure: no I/O, no clock).

    create  (POST .../chargingdata)               -> an INITIAL session request
    update  (POST .../chargingdata/{ref}/update)  -> an UPDATE
    release (POST .../chargingdata/{ref}/release) -> a TERMINATE

The ChargingDataRef is derived from the create's body and its caller (a digest), so a
retransmitted create names the same charging data resource and the core answers it from
its stored answer; the core's session id is ``nchf:<ref>``. The core's request number is
the invocationSequenceNumber, so a retransmission (same number, same body) is answered
once, from the stored answer, in the request's one Redis round trip.

free5GC's SMF numbers none of its requests: every one carries invocationSequenceNumber
0. An update or release numbered 0 (a number its create already used) is therefore
numbered by its invocationTimeStamp in microseconds: later requests get larger numbers,
as the core expects, and a retransmission of the same body gets the same number.

Grants follow free5GC too: a volume grant is at most 2^31 - 1 octets (it reads them
into an int32), each multipleUnitInformation echoes the uPFID its multipleUnitUsage
named, and each credit-controlled rating group carries the triggers free5GC acts on
(QUOTA_EXHAUSTED: it installs the grant, or zero when none; VALIDITY_TIME: it arms the
validity timer).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from charging.catalog import Usage
from charging.codes import ResultCode
from charging.nchf.requests import Amounts, ChargingData, RequestInvalid, UnitUsage
from charging.rating import FinalUnitAction, UnitKind, Units
from charging.sessions import RatingGroupAnswer, RatingGroupRequest, SessionAnswer, SessionRequest

Operation = Literal["create", "update", "release"]
KINDS: dict[Operation, Literal["I", "U", "T"]] = {"create": "I", "update": "U", "release": "T"}
INT32_MAX = 2**31 - 1
REF = re.compile(r"^[0-9a-f]{32}$")

# TS 32.291 ResultCode of a rating group, by the core's RFC 8506 result code.
RESULT_CODES: dict[int, str] = {
    ResultCode.SUCCESS: "SUCCESS",
    ResultCode.END_USER_SERVICE_DENIED: "END_USER_SERVICE_DENIED",
    ResultCode.CREDIT_CONTROL_NOT_APPLICABLE: "QUOTA_MANAGEMENT_NOT_APPLICABLE",
    ResultCode.CREDIT_LIMIT_REACHED: "QUOTA_LIMIT_REACHED",
    ResultCode.USER_UNKNOWN: "USER_UNKNOWN",
    ResultCode.RATING_FAILED: "RATING_FAILED",
}
# A request the core refused as a whole: HTTP status and ProblemDetails cause (TS 32.291
# table 6.1.7.3-1 application errors; CONTEXT_NOT_FOUND from TS 29.500).
FAILURES: dict[int, tuple[int, str]] = {
    ResultCode.END_USER_SERVICE_DENIED: (403, "END_USER_REQUEST_DENIED"),
    ResultCode.CREDIT_CONTROL_NOT_APPLICABLE: (403, "CHARGING_NOT_APPLICABLE"),
    ResultCode.CREDIT_LIMIT_REACHED: (403, "QUOTA_LIMIT_REACHED"),
    ResultCode.USER_UNKNOWN: (404, "USER_UNKNOWN"),
    ResultCode.RATING_FAILED: (400, "CHARGING_FAILED"),
    ResultCode.UNKNOWN_SESSION_ID: (404, "CONTEXT_NOT_FOUND"),
    ResultCode.UNABLE_TO_COMPLY: (400, "CHARGING_FAILED"),
}
FINAL_UNIT_ACTIONS = {
    FinalUnitAction.TERMINATE: "TERMINATE",
    FinalUnitAction.REDIRECT: "REDIRECT",
    FinalUnitAction.RESTRICT_ACCESS: "RESTRICT_ACCESS",
}
# The units of the core's names in failed fields, as TS 32.291 names them.
UNIT_NAMES = {
    "time_s": "time",
    "total_octets": "totalVolume",
    "input_octets": "uplinkVolume",
    "output_octets": "downlinkVolume",
    "service_specific_units": "serviceSpecificUnits",
}


@dataclass(frozen=True)
class Reply:
    """What the HTTP edge sends: status, JSON body (None: none) and whether it is a
    problem (application/problem+json); ``result`` labels the metrics."""

    status: int
    body: dict[str, Any] | None
    result: str
    problem: bool = False
    headers: tuple[tuple[str, str], ...] = field(default=())


def new_ref(caller: str, data: ChargingData) -> str:
    """The ChargingDataRef of a create: the same for the same caller and body."""
    return hashlib.blake2b(f"{caller}|{data.fingerprint}".encode(), digest_size=16).hexdigest()


def session_id(ref: str) -> str:
    return "nchf:" + ref


def request_number(op: Operation, data: ChargingData) -> int:
    """The core's request number (see the module docstring for free5GC's 0)."""
    if op != "create" and data.sequence_number == 0:
        return max(data.timestamp_us, 1)
    return data.sequence_number


def session_request(op: Operation, ref: str, data: ChargingData, ceilings: Mapping[UnitKind, int]) -> SessionRequest:
    """The core's request; ``RequestInvalid`` when a report passes the server's ceilings
    (``CHARGING_MAX_USED_*``), so that nothing is charged for a request refused in part."""
    groups = tuple(_group(i, u, ceilings) for i, u in enumerate(data.units))
    digest = hashlib.blake2b(f"{op}|{data.fingerprint}".encode(), digest_size=16).hexdigest()
    return SessionRequest(
        session_id(ref),
        KINDS[op],
        request_number(op, data),
        data.identity,
        groups,
        Usage("", data.visited_network),
        digest,
    )


def _group(i: int, u: UnitUsage, ceilings: Mapping[UnitKind, int]) -> RatingGroupRequest:
    _check_ceilings(i, u, ceilings)
    total = Amounts()
    for c in u.used:
        total = total.plus(c.amounts)
    # Usage reported only as offline charging asks for no quota (free5GC sends an empty
    # requestedUnit with it).
    offline = bool(u.used) and all(c.offline for c in u.used)
    requested = None
    if u.requested is not None and not offline:
        r = u.requested
        requested = Units(
            time_s=r.time, total_octets=min(r.volume(), INT32_MAX), service_specific_units=r.service_specific_units
        )
    return RatingGroupRequest(
        rating_group=u.rating_group,
        service_identifier=next((c.service_id for c in u.used if c.service_id), 0),
        requested=requested,
        used=Units(
            time_s=total.time,
            total_octets=total.volume(),
            input_octets=total.uplink_volume,
            output_octets=total.downlink_volume,
            service_specific_units=total.service_specific_units,
        )
        if u.used
        else None,
        final=any(c.final for c in u.used),
    )


def _check_ceilings(i: int, u: UnitUsage, ceilings: Mapping[UnitKind, int]) -> None:
    sums = {"time": 0, "totalVolume": 0, "serviceSpecificUnits": 0}
    limits = {
        "time": ceilings[UnitKind.TIME],
        "totalVolume": ceilings[UnitKind.VOLUME],
        "serviceSpecificUnits": ceilings[UnitKind.SERVICE_SPECIFIC],
    }
    for j, c in enumerate(u.used):
        for name, amount in (
            ("time", c.amounts.time),
            ("totalVolume", c.amounts.volume()),
            ("serviceSpecificUnits", c.amounts.service_specific_units),
        ):
            sums[name] += amount
            if sums[name] > limits[name]:
                where = f"/multipleUnitUsage/{i}/usedUnitContainer/{j}/{name}"
                raise RequestInvalid([(where, f"more than {limits[name]} in one report")])


def iso(at_s: float) -> str:
    return datetime.fromtimestamp(at_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def problem(status: int, cause: str, title: str, params: list[tuple[str, str]] | None = None) -> Reply:
    """A ProblemDetails (TS 29.571) answer; ``params`` its invalidParams."""
    body: dict[str, Any] = {"title": title, "status": status, "cause": cause}
    if params:
        body["invalidParams"] = [{"param": p, "reason": r} for p, r in params]
    return Reply(status, body, cause, problem=True)


def invalid(problems: list[tuple[str, str]]) -> Reply:
    return problem(400, "INVALID_MSG_FORMAT", "invalid ChargingDataRequest", problems)


def core_field(name: str) -> str:
    """A field the core named (``rating_groups[1].used.total_octets``) as a JSON Pointer
    into the request (``/multipleUnitUsage/1/usedUnitContainer``)."""
    found = re.match(r"^rating_groups\[(\d+)\]\.(requested|used|used_after_tariff_change)(?:\.(\w+))?$", name)
    if found is None:
        return "/subscriberIdentifier" if name.startswith("subscriber") else "/"
    i, part, unit = found.groups()
    where = "requestedUnit" if part == "requested" else "usedUnitContainer"
    return f"/multipleUnitUsage/{i}/{where}" + (f"/{UNIT_NAMES[unit]}" if part == "requested" and unit else "")


def reply(op: Operation, data: ChargingData, answer: SessionAnswer, now_s: float, location: str = "") -> Reply:
    """The HTTP answer to the core's answer."""
    code = answer.result_code
    if answer.failed_field:
        return invalid([(core_field(answer.failed_field), "is not a valid value")])
    if code in (ResultCode.INVALID_AVP_VALUE, ResultCode.MISSING_AVP):
        return invalid([("/", "is not a valid request")])
    if code == ResultCode.UNKNOWN_SESSION_ID:
        return problem(404, "CONTEXT_NOT_FOUND", "no such charging data resource")
    entries = [_entry(g, u) for g, u in zip(answer.rating_groups, data.units, strict=False)]
    if code == ResultCode.USER_UNKNOWN:
        entries = [{"resultCode": "USER_UNKNOWN", "ratingGroup": u.rating_group, **_upf(u)} for u in data.units]
    if op == "release" and code != ResultCode.USER_UNKNOWN:
        # The resource is gone whatever its last usage cost (TS 32.291: 204).
        return Reply(204, None, RESULT_CODES.get(code, "SUCCESS"))
    body: dict[str, Any] = {"invocationTimeStamp": iso(now_s), "invocationSequenceNumber": data.sequence_number}
    if entries:
        body["multipleUnitInformation"] = entries
    if code == ResultCode.SUCCESS:
        headers = (("location", location),) if op == "create" else ()
        return Reply(201 if op == "create" else 200, body, "SUCCESS", headers=headers)
    status, cause = FAILURES.get(code, (500, "SYSTEM_FAILURE"))
    body["invocationResult"] = {
        "error": {"title": cause.replace("_", " ").lower(), "status": status, "cause": cause},
        "failureHandling": "TERMINATE",
    }
    return Reply(status, body, cause, problem=True)


def _upf(u: UnitUsage) -> dict[str, str]:
    return {"uPFID": u.upf_id} if u.upf_id else {}


def _entry(g: RatingGroupAnswer, u: UnitUsage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resultCode": RESULT_CODES.get(g.result_code, "RATING_FAILED"),
        "ratingGroup": g.rating_group,
    }
    if g.granted is not None:
        out["grantedUnit"] = granted_unit(g.granted, g.tariff_change_time)
    if g.validity_time_s:
        out["validityTime"] = g.validity_time_s
    if g.final_unit is not None:
        fui: dict[str, Any] = {"finalUnitAction": FINAL_UNIT_ACTIONS[g.final_unit.action]}
        if g.final_unit.redirect_address:
            fui["redirectServer"] = {
                "redirectAddressType": "URL",
                "redirectServerAddress": g.final_unit.redirect_address,
            }
        if g.final_unit.restriction_filter_rules:
            fui["restrictionFilterRuleList"] = list(g.final_unit.restriction_filter_rules)
        out["finalUnitIndication"] = fui
    if g.result_code != ResultCode.CREDIT_CONTROL_NOT_APPLICABLE:
        # Quota-managed: report when the grant is used up (no grant: zero quota) and when
        # its validity time ends.
        triggers = [{"triggerType": "QUOTA_EXHAUSTED", "triggerCategory": "IMMEDIATE_REPORT"}]
        if g.validity_time_s:
            triggers.append({"triggerType": "VALIDITY_TIME", "triggerCategory": "IMMEDIATE_REPORT"})
        out["triggers"] = triggers
    return {**out, **_upf(u)}


def granted_unit(units: Units, tariff_change_s: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if units.time_s:
        out["time"] = min(units.time_s, INT32_MAX)
    if units.total_octets:
        out["totalVolume"] = min(units.total_octets, INT32_MAX)
    if units.service_specific_units:
        out["serviceSpecificUnits"] = min(units.service_specific_units, INT32_MAX)
    if tariff_change_s:
        out["tariffTimeChange"] = iso(tariff_change_s)
    return out
