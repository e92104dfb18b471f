"""A Credit-Control-Request, read into the charging core's requests (pure).

RFC 8506 and TS 32.299 Gy/Ro, with what Open5GS's SMF/PGW sends as it is (its
``src/smf/gy-path.c``) accepted unchanged:

* A Multiple-Services-Credit-Control without Rating-Group and Service-Identifier is
  charged under the default rating group of the request's Service-Context-Id
  (``CHARGING_DIAMETER_DEFAULT_RATING_GROUPS``), and answered without them.
* Multiple-Services-Indicator NOT_SUPPORTED with MSCCs present: the MSCCs are read.
  Without any MSCC, command-level Requested/Used-Service-Unit are one service
  (RFC 8506 single-service mode) and the grant goes back at command level.
* Requested-Action on INITIAL/UPDATE/TERMINATE is ignored; only an EVENT request acts on it.
* Subscription-Id: every E.164 and IMSI is kept in the order sent; the first one a
  subscriber has is charged (Open5GS sends the IMSI first, then the MSISDN).
* Used-Service-Unit with CC-Input-Octets and CC-Output-Octets and no CC-Total-Octets: the
  sum is the volume used (``Units.count``). Several Used-Service-Units split by
  Tariff-Change-Usage: units after the change are priced at the new rate.
* Reporting-Reason (3GPP, code 872) FINAL either inside Used-Service-Unit or in the MSCC.

Bad input raises ``Refused`` with the RFC 8506 result code and the AVP at fault.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from diameter.message.avp import Avp

from charging.catalog import Usage
from charging.codes import ResultCode
from charging.diameter import dictionary as d
from charging.diameter import service_information, service_units
from charging.diameter.base import text
from charging.diameter.codec import Refused, placeholder, value
from charging.events import Action, EventRequest
from charging.rating import Units
from charging.sessions import RatingGroupRequest, RequestKind, SessionRequest
from charging.subscribers import IMSI, MSISDN, Identity

INITIAL, UPDATE, TERMINATE, EVENT = 1, 2, 3, 4
KINDS: dict[int, RequestKind] = {INITIAL: "I", UPDATE: "U", TERMINATE: "T"}
ACTIONS: dict[int, Action] = {0: "D", 1: "R", 2: "C", 3: "P"}  # RFC 8506 8.41
E164, IMSI_TYPE = 0, 1
FINAL = 2  # Reporting-Reason FINAL (TS 32.299 7.2.175)
AFTER_TARIFF_CHANGE = 1  # Tariff-Change-Usage UNIT_AFTER_TARIFF_CHANGE
MAX_SERVICES = 64
MAX_EVENT_ID = 256


@dataclass(frozen=True)
class Head:
    """What every CCA repeats from its CCR."""

    session_id: str
    request_type: int
    request_number: int
    service_context: str = ""


@dataclass(frozen=True)
class Service:
    """One service of a request: an MSCC, or the command level in single-service mode."""

    rating_group: int
    service_identifier: int
    has_rating_group: bool
    has_service_identifier: bool
    in_mscc: bool
    # The request's AVPs, to name in Failed-AVP.
    mscc: Avp | None = field(default=None, compare=False)
    requested: Avp | None = field(default=None, compare=False)
    used: tuple[Avp, ...] = field(default=(), compare=False)
    # Reporting-Reason at MSCC level (-1: none).
    reason: int = -1


@dataclass(frozen=True)
class SessionCall:
    request: SessionRequest
    services: tuple[Service, ...]
    # Every identity of the request in its order; ``request.identity`` is the first.
    identities: tuple[Identity, ...]


@dataclass(frozen=True)
class EventCall:
    request: EventRequest
    service: Service
    identities: tuple[Identity, ...]
    refund_avp: Avp | None = field(default=None, compare=False)


def head_of(avps: list[Avp]) -> Head:
    """Session-Id, CC-Request-Type and -Number; ``Refused`` when one is missing or bad."""
    sid = d.find(avps, d.SESSION_ID)
    kind = d.find(avps, d.CC_REQUEST_TYPE)
    number = d.find(avps, d.CC_REQUEST_NUMBER)
    context = d.find(avps, d.SERVICE_CONTEXT_ID)
    head = Head(
        text(sid) if sid is not None else "",
        int(value(kind)) if kind is not None else 0,
        int(value(number)) if number is not None else 0,
        text(context) if context is not None else "",
    )
    for key, avp in ((d.SESSION_ID, sid), (d.CC_REQUEST_TYPE, kind), (d.CC_REQUEST_NUMBER, number)):
        if avp is None:
            raise Refused(d.Code.MISSING_AVP, placeholder(key))
    assert kind is not None
    if not 1 <= head.request_type <= 4:
        raise Refused(d.Code.INVALID_AVP_VALUE, kind)
    if not head.session_id or len(head.session_id) > 1024:
        raise Refused(d.Code.INVALID_AVP_VALUE, sid)
    if context is None:
        raise Refused(d.Code.MISSING_AVP, placeholder(d.SERVICE_CONTEXT_ID))
    return head


def partial_head(avps: list[Avp]) -> Head:
    """What can be read of the head of a request refused before ``head_of`` passed."""
    out = []
    for key in (d.CC_REQUEST_TYPE, d.CC_REQUEST_NUMBER):
        avp = d.find(avps, key)
        try:
            out.append(int(value(avp)) if avp is not None else 0)
        except Refused:
            out.append(0)
    sid = d.find(avps, d.SESSION_ID)
    try:
        session_id = text(sid) if sid is not None else ""
    except Refused:
        session_id = ""
    return Head(session_id, out[0], out[1])


def read(head: Head, avps: list[Avp], defaults: Mapping[str, int]) -> SessionCall | EventCall:
    """The core request of a CCR whose head was read."""
    unsupported = d.unsupported_mandatory(avps)
    if unsupported is not None:
        raise Refused(d.Code.AVP_UNSUPPORTED, unsupported)
    identities = identities_of(avps)
    usage, terminating = service_information.usage_of(avps)
    if head.request_type == EVENT:
        action = action_of(avps)
        return event_of(head, avps, action, identities, usage, terminating, services_of(head, avps, defaults))
    services = services_of(head, avps, defaults)
    groups = []
    seen: dict[int, Service] = {}
    for s in services:
        if s.rating_group in seen:
            raise Refused(d.Code.INVALID_AVP_VALUE, s.mscc)
        seen[s.rating_group] = s
        groups.append(group_of(s))
    request = SessionRequest(
        head.session_id,
        KINDS[head.request_type],
        head.request_number,
        identities[0],
        tuple(groups),
        usage,
        "",
        terminating=terminating,
    )
    return SessionCall(replace(request, digest=digest(request, identities)), tuple(services), identities)


def identities_of(avps: list[Avp]) -> tuple[Identity, ...]:
    """E.164 and IMSI Subscription-Ids in their order; other types are read past."""
    found: list[Identity] = []
    first_bad: Avp | None = None
    subscriptions = d.find_all(avps, d.SUBSCRIPTION_ID)
    for sub in subscriptions:
        members = value(sub)
        kind, data = d.find(members, d.SUBSCRIPTION_ID_TYPE), d.find(members, d.SUBSCRIPTION_ID_DATA)
        if kind is None or data is None:
            missing = d.SUBSCRIPTION_ID_TYPE if kind is None else d.SUBSCRIPTION_ID_DATA
            raise Refused(d.Code.MISSING_AVP, placeholder(missing))
        number = int(value(kind))
        digits = text(data)
        if number == E164:
            digits = digits.removeprefix("+")
            if MSISDN.match(digits):
                found.append(Identity("msisdn", digits))
            else:
                first_bad = first_bad or data
        elif number == IMSI_TYPE:
            if IMSI.match(digits):
                found.append(Identity("imsi", digits))
            else:
                first_bad = first_bad or data
    if found:
        return tuple(found)
    if first_bad is not None:
        raise Refused(d.Code.INVALID_AVP_VALUE, first_bad)
    if subscriptions:
        raise Refused(ResultCode.USER_UNKNOWN, subscriptions[0])
    raise Refused(d.Code.MISSING_AVP, placeholder(d.SUBSCRIPTION_ID))


def services_of(head: Head, avps: list[Avp], defaults: Mapping[str, int]) -> list[Service]:
    msccs = d.find_all(avps, d.MSCC)
    if len(msccs) > MAX_SERVICES:
        raise Refused(d.Code.INVALID_AVP_VALUE, msccs[MAX_SERVICES])
    if msccs:
        return [service_of(head, value(m), defaults, m) for m in msccs]
    if d.find(avps, d.REQUESTED_SERVICE_UNIT) or d.find(avps, d.USED_SERVICE_UNIT) or head.request_type == EVENT:
        return [service_of(head, avps, defaults, None)]
    return []


def service_of(head: Head, members: list[Avp], defaults: Mapping[str, int], mscc: Avp | None) -> Service:
    rg, sid = d.find(members, d.RATING_GROUP), d.find(members, d.SERVICE_IDENTIFIER)
    if rg is not None:
        rating_group = int(value(rg))
    elif sid is not None:
        rating_group = 0
    elif head.service_context in defaults:
        rating_group = defaults[head.service_context]
    else:
        raise Refused(d.Code.MISSING_AVP, placeholder(d.RATING_GROUP))
    return Service(
        rating_group=rating_group,
        service_identifier=int(value(sid)) if sid is not None else 0,
        has_rating_group=rg is not None,
        has_service_identifier=sid is not None,
        in_mscc=mscc is not None,
        mscc=mscc,
        requested=d.find(members, d.REQUESTED_SERVICE_UNIT),
        used=tuple(d.find_all(members, d.USED_SERVICE_UNIT)),
        reason=_reason(members),
    )


def group_of(s: Service) -> RatingGroupRequest:
    """The core's view of one service: requested units, used units before and after a
    tariff change, and whether this is its final report."""
    final = s.reason == FINAL
    used: Units | None = None
    after: Units | None = None
    for usu in s.used:
        usu_members = value(usu)
        units = service_units.units_of(usu_members)
        final = final or _reason(usu_members) == FINAL
        change = d.find(usu_members, d.TARIFF_CHANGE_USAGE)
        if change is not None and value(change) == AFTER_TARIFF_CHANGE:
            after = units if after is None else service_units.add(after, units)
        else:
            used = units if used is None else service_units.add(used, units)
    return RatingGroupRequest(
        rating_group=s.rating_group,
        service_identifier=s.service_identifier,
        requested=service_units.units_of(value(s.requested)) if s.requested is not None else None,
        used=used,
        final=final,
        used_after_change=after,
    )


def _reason(members: list[Avp]) -> int:
    reason = d.find(members, d.REPORTING_REASON)
    return int(value(reason)) if reason is not None else -1


def action_of(avps: list[Avp]) -> Action:
    """An EVENT request's Requested-Action (RFC 8506 8.41): it must be there."""
    action_avp = d.find(avps, d.REQUESTED_ACTION)
    if action_avp is None:
        raise Refused(d.Code.MISSING_AVP, placeholder(d.REQUESTED_ACTION))
    action = ACTIONS.get(int(value(action_avp)))
    if action is None:
        raise Refused(d.Code.INVALID_AVP_VALUE, action_avp)
    return action


def event_of(
    head: Head,
    avps: list[Avp],
    action: Action,
    identities: tuple[Identity, ...],
    usage: Usage,
    terminating: bool,
    services: list[Service],
) -> EventCall:
    if len(services) != 1:
        raise Refused(d.Code.INVALID_AVP_VALUE, services[1].mscc if services else None)
    service = services[0]
    requested = value(service.requested) if service.requested is not None else []
    # TS 32.299 carries Refund-Information in the MSCC; older clients at command level.
    refund = d.find(value(service.mscc), d.REFUND_INFORMATION) if service.mscc is not None else None
    refund = refund or d.find(avps, d.REFUND_INFORMATION)
    request = EventRequest(
        event_id=event_id(head),
        action=action,
        identity=identities[0],
        rating_group=service.rating_group,
        service_identifier=service.service_identifier,
        requested=service_units.units_of(requested),
        digest="",
        usage=usage,
        terminating=terminating,
        refund_information=bytes(value(refund)) if refund is not None else b"",
    )
    if action in ("D", "R"):
        request = replace(request, digest=digest(request, identities))
    return EventCall(request, service, identities, refund)


def event_id(head: Head) -> str:
    """An event request is its own Diameter session: Session-Id and CC-Request-Number
    name it (a long Session-Id by its hash)."""
    name = f"{head.session_id}/{head.request_number}"
    if len(name) > MAX_EVENT_ID or not name.isprintable() or " " in name:
        return "dia-" + hashlib.blake2b(name.encode(), digest_size=16).hexdigest()
    return name


def digest(request: SessionRequest | EventRequest, identities: tuple[Identity, ...]) -> str:
    """Fingerprint of what the request asks, whatever identity it is charged to: the same
    request number with another payload is refused by the core."""
    who = ",".join(f"{i.kind}:{i.value}" for i in identities)
    what = replace(request, digest="", identity=identities[0])
    return hashlib.blake2b(f"{who}|{what!r}".encode(), digest_size=16).hexdigest()
