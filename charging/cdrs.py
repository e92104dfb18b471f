"""Usage records (CDRs) and money movements: from the scripts' record outbox to table rows.

The ledger scripts append one JSON array per rated use or money movement to the
account's record outbox ``{a:ID}:cdr`` (``ledger_lib.lua`` ``push_record``), in the script
that makes the change: the change and its record happen together or not at all, in one
round trip. ``cdr_relay.py`` moves them into ``usage_records`` and ``audit``. This module
is the pure part: the layouts, the rows they become and their ids.

Every value in an entry is a string; the first names the layout of the rest:

  ``s`` usage a session request reported, per rating group: time (ms), msisdn, imsi, plan,
        catalog version, session id, request number, rating group, service, called party,
        zone, band, visited network, roaming ('R' or ''), unit, units, cost (micros),
        paid by ("<bucket id>:<units>|...", pool buckets marked '^')
  ``f`` usage of a rating group that is not credit-controlled (answered 4011: emergency,
        toll-free) a session request reported: the first 17 values of ``s`` (no cost, no
        paid by); the row's cause is ``credit_control_not_applicable``
  ``w`` a session released by the supervision sweeper (no report came in time): time,
        msisdn, imsi, plan, session id, its last request number, the money and the units
        ("<rating group>:<units>|...") of the reservations released; a usage row with no
        units and the cause ``supervision_timeout``, and an audit entry with the amounts
  ``d`` an event debit, ``r`` a refund: time, msisdn, imsi, plan, event id, rating group,
        service, called party, zone, band, visited network, roaming, unit, units, money
        (micros; a refund's is negative), paid by (a refund: the units it gave back to each
        bucket; those of an expired one are counted expired as well), actor (refunds), the
        record the refund drew on ("e:<debit event>" or "rf:s:<session>#<request number>"),
        the catalog version a debit was priced with ('' a refund; absent from entries
        written before the version was recorded)
  ``n`` an event debit the plan rates free (answered 4011: toll-free, emergency): time,
        msisdn, imsi, plan, event id, rating group, service, called party, zone, band,
        visited network, roaming, unit, units, catalog version (no money, no paid by); the
        row's cost is 0 and its cause ``credit_control_not_applicable``
  ``t`` a top-up: time, actor, channel, idempotency key, amount, balance after
  ``b`` a bundle sale: time, msisdn, imsi, plan, actor, channel, idempotency key, bundle id,
        price, balance after, bucket ids ('|'-separated)
  ``x`` another audited change of the account (a line's status, ``Directory.set_status``):
        time, actor, action, a unique reference, details (a JSON object)
  ``c`` an audited change of something else, in the record outbox of what changed (a
        catalog or coverage table loaded, ``documents.py``): time, actor, action, subject,
        a unique reference, details (a JSON object)

A record's id is derived from what made its change unique in Redis (the account with the
session, request number and rating group; the event id; the idempotency key), so a record
relayed twice is the same row twice, and the tables' primary keys
(``record_id``/``entry_id`` with ``occurred_at``, which comes from the record too) keep one.
A refund and a bundle sale are both a usage row (the customer's itemised charges) and an
audit entry naming the actor; a top-up is an audit entry only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from charging.rating import UnitKind


class BadRecord(ValueError):
    """An outbox entry that is not one of the layouts (never written by a script of this
    version): the relay logs and skips it rather than stop every later record."""


@dataclass(frozen=True, slots=True)
class UsageRow:
    record_id: str
    occurred_at: datetime
    account: str
    msisdn: str
    imsi: str
    plan_id: str
    catalog_version: str | None  # the catalog version it was rated with (None: not rated by one)
    session_id: str
    request_number: int | None
    event_id: str
    rating_group: int | None
    service: str
    called_party: str
    zone: str
    band: str
    visited_network: str
    roaming: bool
    unit: str
    units: int
    cost_micros: int
    money_micros: int
    bucket_units: dict[str, int]  # units paid from buckets, by bucket id (a jsonb column)
    # Why the record is not an ordinary rated use ('' when it is): CAUSES.
    cause: str = ""


@dataclass(frozen=True, slots=True)
class AuditRow:
    entry_id: str
    occurred_at: datetime
    actor: str
    action: str
    subject: str
    reason: str
    details: dict[str, object]  # a jsonb column


USAGE_COLUMNS = tuple(UsageRow.__dataclass_fields__)
AUDIT_COLUMNS = tuple(AuditRow.__dataclass_fields__)
LAYOUTS = {"s": 19, "f": 17, "w": 9, "d": 20, "r": 20, "n": 16, "t": 7, "b": 12, "x": 6, "c": 7}
# Shorter layouts written by earlier versions, still read (an outbox may hold them at an upgrade).
EARLIER = {("d", 19), ("r", 19)}
NOT_RATED = "credit_control_not_applicable"  # RFC 8506 4011
SUPERVISION = "supervision_timeout"
CAUSES = ("", NOT_RATED, SUPERVISION)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
UNIT_NAMES = {str(int(u)): u.name.lower() for u in UnitKind}


def at(ms: str) -> datetime:
    """A time in ms as an exact UTC datetime (no float on the way)."""
    return EPOCH + timedelta(milliseconds=int(ms))


def unit_name(code: str) -> str:
    return UNIT_NAMES.get(code, code)


def paid_by(items: str) -> dict[str, int]:
    """ "id:n|id:n" (an id may hold ':': split at the last) as {"id": n}, summed."""
    units: dict[str, int] = {}
    for item in items.split("|") if items else ():
        bucket, _, n = item.rpartition(":")
        units[bucket] = units.get(bucket, 0) + int(n)
    return units


def change_entry(at_ms: int, actor: str, action: str, ref: str, details: dict[str, str]) -> str:
    """An outbox entry for a change made outside the charging scripts (a line's status),
    pushed in the same transaction as the change: it becomes an audit entry only."""
    return json.dumps(["x", str(at_ms), actor, action, ref, json.dumps(details, sort_keys=True)])


def subject_change_entry(at_ms: int, actor: str, action: str, subject: str, ref: str, details: dict[str, str]) -> str:
    """An outbox entry for an audited change of ``subject`` (not an account), pushed in
    the same atomic step as the change: it becomes an audit entry only."""
    return json.dumps(["c", str(at_ms), actor, action, subject, ref, json.dumps(details, sort_keys=True)])


def optional_int(text: str) -> int | None:
    return int(text) if text.lstrip("-").isdigit() else None


def subject(account: str) -> str:
    """An audit entry's subject for a charging account."""
    return "account:" + account


def rows(account: str, entry: str) -> tuple[UsageRow | None, AuditRow | None]:
    """The usage row and audit entry one outbox entry of ``account`` stands for."""
    try:
        v = json.loads(entry)
    except ValueError:
        raise BadRecord("not JSON") from None
    if not isinstance(v, list) or not v or set(map(type, v)) != {str}:
        raise BadRecord("unknown layout")
    if LAYOUTS.get(v[0]) != len(v) and (v[0], len(v)) not in EARLIER:
        raise BadRecord("unknown layout")
    try:
        return _rows(account, v)
    except (ValueError, TypeError, AttributeError) as exc:  # a value that is not a string of its kind
        raise BadRecord(str(exc)) from None


def _rows(account: str, v: list[str]) -> tuple[UsageRow | None, AuditRow | None]:
    kind, when = v[0], at(v[1])
    if kind == "s":
        _k, _t, msisdn, imsi, plan, cv, session, n, rg, service, called, zone, band, visited, roaming = v[:15]
        unit, units, cost, taken = v[15:]
        rid = f"{account}:s:{session}:{n}:{rg}"
        usage = UsageRow(
            rid, when, account, msisdn, imsi, plan, cv or None, session, int(n), "", int(rg), service, called,
            zone, band, visited, roaming == "R", unit_name(unit), int(units), int(cost), int(cost), paid_by(taken),
        )  # fmt: skip
        return usage, None
    if kind == "f":
        _k, _t, msisdn, imsi, plan, cv, session, n, rg, service, called, zone, band, visited, roaming = v[:15]
        unit, units = v[15:]
        rid = f"{account}:s:{session}:{n}:{rg}"
        usage = UsageRow(
            rid, when, account, msisdn, imsi, plan, cv or None, session, int(n), "", int(rg), service, called,
            zone, band, visited, roaming == "R", unit_name(unit), int(units), 0, 0, {}, NOT_RATED,
        )  # fmt: skip
        return usage, None
    if kind == "w":
        _k, _t, msisdn, imsi, plan, session, n, money, released = v
        rid = f"{account}:w:{session}:{n}"
        usage = UsageRow(
            rid, when, account, msisdn, imsi, plan, None, session, optional_int(n), "", None, "session", "", "", "",
            "", False, "", 0, 0, 0, {}, SUPERVISION,
        )  # fmt: skip
        details: dict[str, object] = {"session_id": session, "request_number": optional_int(n)}
        details["released_micros"] = int(money)
        details["released_units"] = paid_by(released)
        return usage, AuditRow(rid, when, "supervision", "session_released", subject(account), SUPERVISION, details)
    if kind in ("d", "r"):
        _k, _t, msisdn, imsi, plan, event, rg, service, called, zone, band, visited, roaming = v[:13]
        unit, units, money, taken, actor, refund_of = v[13:19]
        cv = v[19] if len(v) > 19 else ""
        rid = f"{account}:e:{event}"
        usage = UsageRow(
            rid, when, account, msisdn, imsi, plan, cv or None, "", None, event, int(rg), service, called, zone, band,
            visited, roaming == "R", unit_name(unit), int(units), int(money), int(money), paid_by(taken),
        )  # fmt: skip
        if kind == "d":
            return usage, None
        details = {"event_id": event, "refund_of": refund_of, "rating_group": int(rg), "unit": unit_name(unit)}
        details |= {"units": int(units), "money_micros": -int(money)}
        return usage, AuditRow(rid, when, actor, "refund", subject(account), "", details)
    if kind == "n":
        _k, _t, msisdn, imsi, plan, event, rg, service, called, zone, band, visited, roaming, unit, units, cv = v
        usage = UsageRow(
            f"{account}:e:{event}", when, account, msisdn, imsi, plan, cv or None, "", None, event, int(rg), service,
            called, zone, band, visited, roaming == "R", unit_name(unit), int(units), 0, 0, {}, NOT_RATED,
        )  # fmt: skip
        return usage, None
    if kind == "x":
        _k, _t, actor, action, ref, text = v
        changed = dict(json.loads(text))
        return None, AuditRow(f"{account}:x:{ref}", when, actor, action, subject(account), "", changed)
    if kind == "c":
        _k, _t, actor, action, about, ref, text = v
        return None, AuditRow(f"{about}:c:{ref}", when, actor, action, about, "", dict(json.loads(text)))
    if kind == "t":
        _k, _t, actor, channel, key, amount, balance = v
        details = {"channel": channel, "idempotency_key": key, "amount_micros": int(amount)}
        details["balance_micros"] = int(balance)
        return None, AuditRow(f"{account}:t:{key}", when, actor, "topup", subject(account), "", details)
    _k, _t, msisdn, imsi, plan, actor, channel, key, bundle, price, balance, ids = v
    rid = f"{account}:b:{key}"
    details = {"channel": channel, "idempotency_key": key, "bundle_id": bundle, "price_micros": int(price)}
    details |= {"balance_micros": int(balance), "bucket_ids": [] if ids == "-" else ids.split("|")}
    audit = AuditRow(rid, when, actor, "bundle_sale", subject(account), "", details)
    if int(price) == 0:
        return None, audit  # given with the plan, not sold: nothing the customer paid
    usage = UsageRow(
        rid, when, account, msisdn, imsi, plan, None, "", None, "", None, "bundle", "", bundle, "", "", False,
        "bundle", 1, int(price), int(price), {},
    )  # fmt: skip
    return usage, audit


# The CSV export's columns: the 3GPP name (TS 32.298 charging data records, TS 32.299
# AVPs) where one exists for the value, else a plain name.
EXPORT_FIELDS: tuple[tuple[str, str], ...] = (
    ("recordId", "record_id"),
    ("recordOpeningTime", "occurred_at"),
    ("servedMSISDN", "msisdn"),
    ("servedIMSI", "imsi"),
    ("subscriberAccount", "account"),
    ("tariffPlan", "plan_id"),
    ("catalogVersion", "catalog_version"),  # its prices: `charging catalog show <version>`
    ("chargingSessionId", "session_id"),
    ("cCRequestNumber", "request_number"),
    ("eventId", "event_id"),
    ("ratingGroup", "rating_group"),
    ("serviceIdentifier", "service"),
    ("calledPartyAddress", "called_party"),
    ("zone", "zone"),
    ("timeBand", "band"),
    ("servingPLMNIdentifier", "visited_network"),
    ("roaming", "roaming"),
    ("unit", "unit"),
    ("usedUnits", "units"),
    ("chargedAmountMicros", "cost_micros"),
    ("moneyMicros", "money_micros"),
    ("bucketUnits", "bucket_units"),
    ("causeForRecClosing", "cause"),
)
