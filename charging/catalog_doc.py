"""Reading and checking a catalog document: every bad field is reported at once, with its
path (``plans[2].versions[0].rates[5].increment``), and a catalog with any problem is
rejected whole. See ``catalog.py`` for what a catalog is.

``catalog.schema.json`` is the document's shape, checked first at run time (exact types,
no unknown field, ranges, patterns). What a schema cannot say is checked here on the
values the schema accepted: references (a rate's service and zones, a recurring
bundle), duplicates, version order, band calendars, quotas against their units, and
the migrations against the plans and services they name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from charging.bands import BandCalendar, calendar_from_doc
from charging.buckets import BucketTemplate, Bundle
from charging.catalog import (
    ACCESS,
    BUNDLE_ID,
    DEFAULT_QUOTA,
    DIGITS,
    MCC_MNC,
    NAME,
    PLAN_ID,
    Catalog,
    CustomerType,
    Plan,
    PlanVersion,
    RateRule,
    RecurringBundle,
    Service,
)
from charging.errors import InvalidRequest
from charging.money import MAX_AMOUNT, MAX_UNITS
from charging.rating import CURRENCY, FinalUnitAction, Rate, UnitKind, check_units
from charging.schemas import DocumentInvalid, Schema, merge
from charging.zones import ZoneTable


class CatalogInvalid(DocumentInvalid):
    """Every problem of a rejected catalog, each naming its field."""


SCHEMA = Schema("charging", "catalog.schema.json", "catalog", CatalogInvalid)


class _Check:
    """Collects problems instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []
        # (field, bundle id) references to check once the bundles are read
        self.bundle_refs: list[tuple[str, str]] = []

    def fail(self, field: str, message: str) -> None:
        self.problems.append((field, message))

    def int(self, doc: Mapping[str, Any], key: str, where: str, low: int, high: int, default: int | None = None) -> int:
        value = doc.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(f"{where}.{key}", "must be an integer")
            return low
        if not low <= value <= high:
            self.fail(f"{where}.{key}", f"must be between {low} and {high}")
            return low
        return value

    def name(self, value: Any, field: str, pattern: re.Pattern[str] = NAME) -> str:
        if not isinstance(value, str) or not pattern.match(value):
            self.fail(field, f"must match {pattern.pattern}")
            return ""
        return value

    def names(self, doc: Mapping[str, Any], key: str, where: str, known: set[str] | None = None) -> frozenset[str]:
        value = doc.get(key, [])
        if not isinstance(value, list):
            self.fail(f"{where}.{key}", "must be a list")
            return frozenset()
        out = set()
        for i, item in enumerate(value):
            name = self.name(item, f"{where}.{key}[{i}]")
            if name and known is not None and name not in known:
                self.fail(f"{where}.{key}[{i}]", f"unknown: {name}")
            out.add(name)
        return frozenset(out)

    def list(self, doc: Mapping[str, Any], key: str, where: str, required: bool = True) -> list[Any]:
        value = doc.get(key, None if required else [])
        if not isinstance(value, list) or (required and not value):
            self.fail(f"{where}{key}" if not where else f"{where}.{key}", "must be a non-empty list")
            return []
        return value


def catalog_from_doc(doc: Any, *, strict: bool = True) -> Catalog:
    """Check a whole catalog document; raise ``CatalogInvalid`` listing every problem.

    ``strict=False`` skips the schema: for catalogs already stored, which were accepted
    by the rules of their day (a session may still be rated with one)."""
    shape, doc = SCHEMA.validate(doc) if strict else ([], doc)
    check = _Check()
    if not isinstance(doc, Mapping):
        raise CatalogInvalid(shape or [("catalog", "must be a JSON object")])
    version = doc.get("version")
    if not isinstance(version, str) or not PLAN_ID.match(version):
        check.fail("version", "must be 1-64 characters of A-Z a-z 0-9 _ . : -")
    home = frozenset(
        check.name(n, f"home_networks[{i}]", MCC_MNC) for i, n in enumerate(check.list(doc, "home_networks", ""))
    )

    services: dict[str, Service] = {}
    service_of_group: dict[int, str] = {}
    service_of_id: dict[int, str] = {}
    for i, raw in enumerate(check.list(doc, "services", "")):
        where = f"services[{i}]"
        if not isinstance(raw, Mapping):
            check.fail(where, "must be an object")
            continue
        name = check.name(raw.get("name"), f"{where}.name")
        unit = _unit(check, raw.get("unit"), f"{where}.unit")
        groups = []
        for j, rg in enumerate(check.list(raw, "rating_groups", where)):
            if isinstance(rg, bool) or not isinstance(rg, int) or not 0 <= rg < 2**32:
                check.fail(f"{where}.rating_groups[{j}]", "must be an integer rating group")
            elif rg in service_of_group:
                check.fail(
                    f"{where}.rating_groups[{j}]", f"rating group {rg} already belongs to {service_of_group[rg]}"
                )
            else:
                service_of_group[rg] = name
                groups.append(rg)
        ids = []
        for j, sid in enumerate(raw.get("service_ids", [])):
            if isinstance(sid, bool) or not isinstance(sid, int) or not 0 <= sid < 2**32:
                check.fail(f"{where}.service_ids[{j}]", "must be an integer service identifier")
            elif sid in service_of_id:
                check.fail(
                    f"{where}.service_ids[{j}]", f"service identifier {sid} already belongs to {service_of_id[sid]}"
                )
            else:
                service_of_id[sid] = name
                ids.append(sid)
        if name in services:
            check.fail(f"{where}.name", "appears twice")
        if name:
            # A bad unit is reported once; the rates that use the service are still checked.
            services[name] = Service(name, unit or UnitKind.TIME, tuple(groups), tuple(ids))

    prefixes: dict[str, str] = {}
    for i, raw in enumerate(check.list(doc, "zones", "")):
        where = f"zones[{i}]"
        if not isinstance(raw, Mapping):
            check.fail(where, "must be an object")
            continue
        prefix = raw.get("prefix")
        if not isinstance(prefix, str) or not DIGITS.match(prefix):
            check.fail(f"{where}.prefix", "must be 0-15 digits")
            continue
        if prefix in prefixes:
            check.fail(f"{where}.prefix", "appears twice")
        zone = check.name(raw.get("zone"), f"{where}.zone")
        prefixes[prefix] = zone
    zone_names = set(prefixes.values()) | {""}

    plans: dict[str, Plan] = {}
    for i, raw in enumerate(check.list(doc, "plans", "")):
        plan = _plan(check, raw, f"plans[{i}]", services, zone_names)
        if plan is not None:
            if plan.id in plans:
                check.fail(f"plans[{i}].id", "appears twice")
            plans[plan.id] = plan

    all_bands = {b for p in plans.values() if p.bands for b in _band_names(p.bands)}
    bundles: dict[str, Bundle] = {}
    for i, raw in enumerate(check.list(doc, "bundles", "", required=False)):
        bundle = _bundle(check, raw, f"bundles[{i}]", services, zone_names, all_bands)
        if bundle is not None:
            if bundle.id in bundles:
                check.fail(f"bundles[{i}].id", "appears twice")
            bundles[bundle.id] = bundle
    for field_name, bundle_id in check.bundle_refs:
        if bundle_id and bundle_id not in bundles:
            check.fail(field_name, f"no bundle {bundle_id!r} in the catalog")

    migrations = doc.get("migrations")
    moved_plans, moved_services = _migrations(
        check, migrations if isinstance(migrations, Mapping) else {}, plans, services
    )
    problems = merge(shape, check.problems)
    if problems:
        raise CatalogInvalid(problems)
    assert isinstance(version, str)
    return Catalog(
        version,
        home,
        services,
        service_of_group,
        service_of_id,
        ZoneTable.build(prefixes),
        plans,
        bundles,
        moved_plans,
        moved_services,
    )


def _migrations(
    check: _Check, raw: Mapping[str, Any], plans: Mapping[str, Plan], services: Mapping[str, Service]
) -> tuple[dict[str, str], dict[str, str]]:
    """Old plan -> successor and old service -> successor, each in this catalog. Whether
    a successor can take over is checked against the running catalog on load
    (``plan_index.py``)."""
    moved: dict[str, dict[str, str]] = {"plans": {}, "services": {}}
    for part, known, what in (("plans", plans, "plan"), ("services", services, "service")):
        entries = raw.get(part)
        for old, new in (entries if isinstance(entries, Mapping) else {}).items():
            if old in known:
                check.fail(f"migrations.{part}.{old}", f"is a {what} of this catalog; only a dropped one can migrate")
            elif new not in known:
                check.fail(f"migrations.{part}.{old}", f"no {what} {new!r} in this catalog")
            else:
                moved[part][old] = new
    return moved["plans"], moved["services"]


def _band_names(calendar: BandCalendar) -> set[str]:
    names = {r.band for r in calendar.rules} | {calendar.default_band}
    if calendar.holiday_band:
        names.add(calendar.holiday_band)
    return names


def _bundle(
    check: _Check, raw: Any, where: str, services: Mapping[str, Service], zones: set[str], bands: set[str]
) -> Bundle | None:
    if not isinstance(raw, Mapping):
        check.fail(where, "must be an object")
        return None
    before = len(check.problems)
    bundle_id = check.name(raw.get("id"), f"{where}.id", BUNDLE_ID)
    currency = raw.get("currency")
    if not isinstance(currency, str) or not CURRENCY.match(currency):
        check.fail(f"{where}.currency", "must be an ISO 4217 code such as EUR")
    price = check.int(raw, "price_micros", where, 0, MAX_AMOUNT)
    days = check.int(raw, "validity_days", where, 1, 3660)
    priority = check.int(raw, "priority", where, 0, 1000, default=10)
    templates = []
    for j, rb in enumerate(check.list(raw, "buckets", where)):
        bw = f"{where}.buckets[{j}]"
        if not isinstance(rb, Mapping):
            check.fail(bw, "must be an object")
            continue
        unit = _unit(check, rb.get("unit"), f"{bw}.unit")
        if unit is UnitKind.MONEY:
            check.fail(f"{bw}.unit", "money is the account balance, not a bundle bucket")
        amount = check.int(rb, "amount", bw, 1, MAX_UNITS)
        names = {
            key: tuple(sorted(check.names(rb, key, bw, known)))
            for key, known in (("services", set(services)), ("zones", zones), ("bands", bands))
        }
        if unit is not None:
            templates.append(BucketTemplate(unit, amount, names["services"], names["zones"], names["bands"]))
    if len(check.problems) > before:
        return None
    return Bundle(bundle_id, str(raw.get("name", "")), str(currency), price, days, priority, tuple(templates))


def _unit(check: _Check, value: Any, field: str) -> UnitKind | None:
    if value not in UnitKind.__members__:
        check.fail(field, "must be one of " + ", ".join(UnitKind.__members__))
        return None
    return UnitKind[value]


def _instant(check: _Check, value: Any, field: str) -> int:
    try:
        if not isinstance(value, str):
            raise ValueError
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            raise ValueError
        return int(moment.timestamp())
    except ValueError:
        check.fail(field, "must be an ISO 8601 time with offset, e.g. 2026-01-01T00:00:00Z")
        return 0


def _plan(check: _Check, raw: Any, where: str, services: Mapping[str, Service], zones: set[str]) -> Plan | None:
    if not isinstance(raw, Mapping):
        check.fail(where, "must be an object")
        return None
    plan_id = check.name(raw.get("id"), f"{where}.id", PLAN_ID)
    kind = raw.get("customer_type")
    if kind not in CustomerType.__members__:
        check.fail(f"{where}.customer_type", "must be one of " + ", ".join(CustomerType.__members__))
    currency = raw.get("currency")
    if not isinstance(currency, str) or not CURRENCY.match(currency):
        check.fail(f"{where}.currency", "must be an ISO 4217 code such as EUR")
    bands = None
    band_names: set[str] = set()
    if "time_bands" in raw:
        try:
            bands = calendar_from_doc(raw["time_bands"], f"{where}.time_bands")
            band_names = _band_names(bands)
        except InvalidRequest as exc:
            check.fail(exc.field, exc.message)
    versions = []
    last = None
    for j, rv in enumerate(check.list(raw, "versions", where)):
        vw = f"{where}.versions[{j}]"
        if not isinstance(rv, Mapping):
            check.fail(vw, "must be an object")
            continue
        active = _instant(check, rv.get("active_from"), f"{vw}.active_from")
        if last is not None and active <= last:
            check.fail(f"{vw}.active_from", "must be later than the previous version's")
        last = active
        rules = tuple(
            r
            for k, rr in enumerate(check.list(rv, "rates", vw))
            if (r := _rule(check, rr, f"{vw}.rates[{k}]", services, zones, band_names)) is not None
        )
        rental = check.int(rv, "rental_micros", vw, 0, MAX_AMOUNT, default=0)
        recurring = None
        if rv.get("recurring_bundle") is not None:
            rr = rv["recurring_bundle"]
            rw = f"{vw}.recurring_bundle"
            if not isinstance(rr, Mapping):
                check.fail(rw, "must be an object")
            else:
                bundle_id = check.name(rr.get("bundle"), f"{rw}.bundle", BUNDLE_ID)
                recurring = RecurringBundle(bundle_id, check.int(rr, "period_days", rw, 1, 366))
                check.bundle_refs.append((f"{rw}.bundle", bundle_id))
        versions.append(PlanVersion(active, rules, rental, recurring))
    access = raw.get("access", [])
    if not isinstance(access, list) or any(a not in ACCESS for a in access):
        check.fail(f"{where}.access", "must list access technologies of " + ", ".join(ACCESS))
        access = []
    if str(kind).startswith("FIXED") and not access:
        check.fail(f"{where}.access", "a fixed-line plan must name its access technologies")
    if kind not in CustomerType.__members__ or not plan_id or not isinstance(currency, str):
        return None
    return Plan(
        plan_id, str(raw.get("name", "")), CustomerType[str(kind)], currency, bands, tuple(versions), tuple(access)
    )


def _rule(
    check: _Check, raw: Any, where: str, services: Mapping[str, Service], zones: set[str], bands: set[str]
) -> RateRule | None:
    if not isinstance(raw, Mapping):
        check.fail(where, "must be an object")
        return None
    before = len(check.problems)
    service = services.get(str(raw.get("service")))
    if service is None:
        check.fail(f"{where}.service", "must name a service of the catalog")
    rule_zones = check.names(raw, "zones", where, zones)
    rule_bands = check.names(raw, "bands", where, bands)
    roaming = raw.get("roaming")
    if roaming is not None and not isinstance(roaming, bool):
        check.fail(f"{where}.roaming", "must be true, false or absent")
    unit = service.unit if service is not None else UnitKind.TIME
    money = unit is UnitKind.MONEY
    action = raw.get("final_unit_action", "TERMINATE")
    if action not in FinalUnitAction.__members__:
        check.fail(f"{where}.final_unit_action", "must be one of " + ", ".join(FinalUnitAction.__members__))
        action = "TERMINATE"
    price = Rate(
        rating_group=0,
        unit=unit,
        name=str(raw.get("name", "")),
        increment=1 if money else check.int(raw, "increment", where, 1, 10**12, default=1),
        price_micros=1 if money else check.int(raw, "price_micros", where, 0, MAX_AMOUNT, default=0),
        default_quota=check.int(raw, "default_quota", where, 1, MAX_UNITS, default=DEFAULT_QUOTA[unit]),
        validity_time_s=check.int(raw, "validity_time_s", where, 1, 7 * 86_400, default=3600),
        free=bool(raw.get("free", False)),
        final_unit_action=FinalUnitAction[str(action)],
        redirect_address=str(raw.get("redirect_address", "")),
        restriction_filter_rules=tuple(str(r) for r in raw.get("restriction_filter_rules", ())),
        connect_fee=check.int(raw, "connect_fee_micros", where, 0, MAX_AMOUNT, default=0),
        first_increment=check.int(raw, "first_increment", where, 0, 10**12, default=0),
        first_price=check.int(raw, "first_price_micros", where, 0, MAX_AMOUNT, default=0),
        min_charge=check.int(raw, "min_charge_micros", where, 0, MAX_AMOUNT, default=0),
        max_session_cost=check.int(raw, "max_session_cost_micros", where, 0, MAX_AMOUNT, default=0),
    )
    if price.final_unit_action is FinalUnitAction.REDIRECT and not price.redirect_address:
        check.fail(f"{where}.redirect_address", "is required for REDIRECT")
    try:
        check_units(price, price.default_quota, f"{where}.default_quota")
    except InvalidRequest as exc:
        check.fail(exc.field, exc.message)
    if len(check.problems) > before or service is None:
        return None
    return RateRule(service.name, rule_zones, rule_bands, roaming, price)
