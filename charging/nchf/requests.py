"""A ChargingDataRequest body: checked against ``chargingdata.schema.json``, read into
typed records.

Every problem is named by its JSON Pointer (``/multipleUnitUsage/0/ratingGroup``), the
form TS 29.571 InvalidParam.param asks for, so one 400 lists every invalid field. What a
schema cannot say is checked here too: a rating group listed twice, an imsi of other
than 15 digits. Attributes this door does not read are left alone (TS 29.501: a receiver
ignores unknown attributes).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import orjson

from charging.errors import InvalidRequest
from charging.schemas import DocumentInvalid, Problems, Schema, parse_json
from charging.subscribers import Identity, parse_identity

# A body larger than this is refused (413) before it is parsed.
MAX_BODY_BYTES = 64 * 1024


class RequestInvalid(DocumentInvalid):
    """Every invalid parameter of a request body, each by its JSON Pointer."""


class _Inlined(Schema):
    """The schema with its ``$ref``s replaced by their definitions before validating:
    jsonschema resolves a reference on every use, which took three quarters of the time
    of checking a body (about 110 of 150 us), on every charging request."""

    def __init__(self) -> None:
        super().__init__("charging.nchf", "chargingdata.schema.json", "ChargingDataRequest", RequestInvalid)
        self._validator = jsonschema.Draft202012Validator(_inline(self.doc, self.doc["$defs"]))


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if set(node) == {"$ref"}:
            return _inline(defs[node["$ref"].rsplit("/", 1)[1]], defs)
        return {k: _inline(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


_SCHEMA: Schema | None = None


def _schema() -> Schema:
    global _SCHEMA
    if _SCHEMA is None:
        _SCHEMA = _Inlined()
    return _SCHEMA


@dataclass(frozen=True)
class Amounts:
    """Units as TS 32.291 RequestedUnit / UsedUnitContainer carry them."""

    time: int = 0
    total_volume: int = 0
    uplink_volume: int = 0
    downlink_volume: int = 0
    service_specific_units: int = 0

    def volume(self) -> int:
        """The total volume; uplink + downlink when no total is given."""
        return self.total_volume or self.uplink_volume + self.downlink_volume

    def plus(self, other: Amounts) -> Amounts:
        return Amounts(
            self.time + other.time,
            self.volume() + other.volume(),
            self.uplink_volume + other.uplink_volume,
            self.downlink_volume + other.downlink_volume,
            self.service_specific_units + other.service_specific_units,
        )


@dataclass(frozen=True)
class Container:
    """One usedUnitContainer."""

    amounts: Amounts
    service_id: int = 0
    offline: bool = False
    final: bool = False


@dataclass(frozen=True)
class UnitUsage:
    """One multipleUnitUsage entry."""

    rating_group: int
    requested: Amounts | None
    used: tuple[Container, ...]
    upf_id: str = ""


@dataclass(frozen=True)
class ChargingData:
    """A checked ChargingDataRequest."""

    identity: Identity
    sequence_number: int
    # invocationTimeStamp, microseconds since the epoch.
    timestamp_us: int
    units: tuple[UnitUsage, ...]
    visited_network: str = ""
    retransmission: bool = False
    # Where the consumer takes ChargingNotify requests (empty: it gave none).
    notify_uri: str = ""
    # Fingerprint of the body (retransmissionIndicator left out): a retransmission of the
    # same request has the same one.
    fingerprint: str = ""


def pointer(field: str) -> str:
    """``multipleUnitUsage[0].ratingGroup`` -> ``/multipleUnitUsage/0/ratingGroup``."""
    if field.startswith("/"):
        return field
    if field == "ChargingDataRequest":
        return "/"
    return "/" + "/".join(re.findall(r"[^.\[\]]+", field))


_TIMESTAMP = re.compile(r"^(.{19})(?:\.([0-9]{1,9}))?(Z|[+-][0-9]{2}:[0-9]{2})$")


def microseconds(text: str) -> int:
    """An RFC 3339 date-time (fractions up to nanoseconds, as Go writes them) in
    microseconds since the epoch; ``ValueError`` when it is no valid instant."""
    found = _TIMESTAMP.match(text)
    if found is None:
        raise ValueError(text)
    whole, fraction, zone = found.groups()
    at = datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone))
    return int(at.timestamp()) * 1_000_000 + int((fraction or "0")[:6].ljust(6, "0"))


def fingerprint(doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "retransmissionIndicator"}
    return hashlib.blake2b(orjson.dumps(body, option=orjson.OPT_SORT_KEYS), digest_size=16).hexdigest()


def parse(body: bytes) -> ChargingData:
    """Check and read a body; ``RequestInvalid`` names every invalid parameter."""
    doc = parse_json(body, "ChargingDataRequest", RequestInvalid)
    problems, doc = _schema().validate(doc)
    own: Problems = []
    identity = _identity(doc.get("subscriberIdentifier") if isinstance(doc, dict) else None, own)
    timestamp = 0
    if isinstance(doc, dict) and isinstance(doc.get("invocationTimeStamp"), str):
        try:
            timestamp = microseconds(doc["invocationTimeStamp"])
        except ValueError:
            own.append(("invocationTimeStamp", "is not a valid date-time"))
    units = _units(doc.get("multipleUnitUsage", []) if isinstance(doc, dict) else [], own)
    notify_uri = doc.get("notifyUri", "") if isinstance(doc, dict) else ""
    if isinstance(notify_uri, str) and notify_uri and (bad := uri_problem(notify_uri)):
        own.append(("notifyUri", bad))
    problems = problems + [(f, m) for f, m in own if not any(f == p or f.startswith(p + ".") for p, _ in problems)]
    if problems:
        raise RequestInvalid([(pointer(f), m) for f, m in problems])
    assert identity is not None and isinstance(doc, dict)
    plmn = doc.get("pDUSessionChargingInformation", {}).get("pduSessionInformation", {}).get("servingCNPlmnId")
    return ChargingData(
        identity=identity,
        sequence_number=doc["invocationSequenceNumber"],
        timestamp_us=timestamp,
        units=units,
        visited_network=plmn["mcc"] + plmn["mnc"] if plmn else "",
        retransmission=bool(doc.get("retransmissionIndicator", False)),
        notify_uri=notify_uri,
        fingerprint=fingerprint(doc),
    )


def uri_problem(uri: str) -> str | None:
    """Why ``uri`` cannot be a notifyUri (None: it can): an absolute http or https URI."""
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        return "is not a valid URI"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "is not an absolute http or https URI"
    return None


def _identity(value: Any, own: Problems) -> Identity | None:
    if not isinstance(value, str):
        return None
    kind, _, digits = value.partition("-")
    try:
        return parse_identity("imsi" if kind == "imsi" else "msisdn", digits, "subscriberIdentifier")
    except InvalidRequest as exc:
        own.append((exc.field, exc.message))
        return None


def _amounts(doc: dict[str, Any]) -> Amounts:
    return Amounts(
        doc.get("time", 0),
        doc.get("totalVolume", 0),
        doc.get("uplinkVolume", 0),
        doc.get("downlinkVolume", 0),
        doc.get("serviceSpecificUnits", 0),
    )


def _units(entries: Any, own: Problems) -> tuple[UnitUsage, ...]:
    out: list[UnitUsage] = []
    seen: set[int] = set()
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        if not isinstance(entry, dict) or "ratingGroup" not in entry:
            continue  # the schema named it
        rg = entry["ratingGroup"]
        if rg in seen:
            own.append((f"multipleUnitUsage[{i}].ratingGroup", f"rating group {rg} is listed twice"))
        seen.add(rg)
        containers = tuple(
            Container(
                _amounts(c),
                c.get("serviceId", 0),
                c.get("quotaManagementIndicator") == "OFFLINE_CHARGING",
                any(isinstance(t, dict) and t.get("triggerType") == "FINAL" for t in c.get("triggers", [])),
            )
            for c in entry.get("usedUnitContainer", [])
            if isinstance(c, dict)
        )
        requested = entry.get("requestedUnit")
        out.append(
            UnitUsage(
                rg, _amounts(requested) if isinstance(requested, dict) else None, containers, entry.get("uPFID", "")
            )
        )
    return tuple(out)
