"""Reading and checking a catalog document: every bad field is reported at once, with its
path (``plans[2].versions[0].rates[5].increment``), and a catalog with any problem is
rejected whole. See ``catalog.py`` for what a catalog is.

``catalog.schema.json`` is the document's shape, checked first at run time (exact types,
no unknown field, ranges, patterns); nothing here repeats it. What a schema cannot say
is checked here, on the document without the values the schema refused (a missing
value reads as its default, and a problem it causes is already named): references (a
rate's service, zones and bands, a recurring bundle), duplicates, version order, band
calendars, quotas against their units, fixed-line plans naming their access, and the
migrations against the plans and services they name.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from charging.bands import BandCalendar, calendar_from_doc
from charging.buckets import BucketTemplate, Bundle
from charging.catalog import (
    DEFAULT_QUOTA,
    Catalog,
    CustomerType,
    Plan,
    PlanLimits,
    PlanVersion,
    RateRule,
    RecurringBundle,
    Service,
)
from charging.errors import InvalidRequest
from charging.rating import FinalUnitAction, Rate, UnitKind, check_units
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

    def names(self, doc: Mapping[str, Any], key: str, where: str, known: set[str]) -> frozenset[str]:
        """The names listed under ``key``, each of which must be ``known``."""
        out = set()
        for i, name in _items(doc, key, str):
            if name not in known:
                self.fail(f"{where}.{key}[{i}]", f"unknown: {name}")
            out.add(name)
        return frozenset(out)


def _items(doc: Mapping[str, Any], key: str, kind: type[Any] = Mapping) -> list[tuple[int, Any]]:
    """(index, item) of the list under ``key``, without the items the schema refused."""
    value = doc.get(key)
    items = enumerate(value) if isinstance(value, list) else iter(())
    return [(i, item) for i, item in items if isinstance(item, kind) and not isinstance(item, bool)]


def catalog_from_doc(doc: Any, *, strict: bool = True) -> Catalog:
    """Check a whole catalog document; raise ``CatalogInvalid`` listing every problem.

    ``strict=False`` skips the schema: for catalogs already stored, which were accepted
    by the rules of their day (a session may still be rated with one)."""
    shape, doc = SCHEMA.validate(doc) if strict else ([], doc)
    check = _Check()
    if not isinstance(doc, Mapping):
        raise CatalogInvalid(shape or [("catalog", "must be a JSON object")])
    home = frozenset(n for _, n in _items(doc, "home_networks", str))

    services: dict[str, Service] = {}
    service_of_group: dict[int, str] = {}
    service_of_id: dict[int, str] = {}
    for i, raw in _items(doc, "services"):
        where = f"services[{i}]"
        name = str(raw.get("name", ""))
        groups = []
        for j, rg in _items(raw, "rating_groups", int):
            if rg in service_of_group:
                check.fail(
                    f"{where}.rating_groups[{j}]", f"rating group {rg} already belongs to {service_of_group[rg]}"
                )
            else:
                service_of_group[rg] = name
                groups.append(rg)
        ids = []
        for j, sid in _items(raw, "service_ids", int):
            if sid in service_of_id:
                check.fail(
                    f"{where}.service_ids[{j}]", f"service identifier {sid} already belongs to {service_of_id[sid]}"
                )
            else:
                service_of_id[sid] = name
                ids.append(sid)
        if name in services:
            check.fail(f"{where}.name", "appears twice")
        if name:
            # A refused unit is named once; the rates that use the service are still checked.
            unit = UnitKind.__members__.get(str(raw.get("unit")), UnitKind.TIME)
            services[name] = Service(name, unit, tuple(groups), tuple(ids))

    prefixes: dict[str, str] = {}
    for i, raw in _items(doc, "zones"):
        prefix, zone = raw.get("prefix"), raw.get("zone")
        if isinstance(prefix, str) and isinstance(zone, str):
            if prefix in prefixes:
                check.fail(f"zones[{i}].prefix", "appears twice")
            prefixes[prefix] = zone
    zone_names = set(prefixes.values()) | {""}

    plans: dict[str, Plan] = {}
    for i, raw in _items(doc, "plans"):
        plan = _plan(check, raw, f"plans[{i}]", services, zone_names)
        if plan is not None:
            if plan.id in plans:
                check.fail(f"plans[{i}].id", "appears twice")
            plans[plan.id] = plan

    all_bands = {b for p in plans.values() if p.bands for b in _band_names(p.bands)}
    bundles: dict[str, Bundle] = {}
    for i, raw in _items(doc, "bundles"):
        bundle = _bundle(check, raw, f"bundles[{i}]", services, zone_names, all_bands)
        if bundle.id in bundles:
            check.fail(f"bundles[{i}].id", "appears twice")
        bundles[bundle.id] = bundle
    for field_name, bundle_id in check.bundle_refs:
        if bundle_id not in bundles:
            check.fail(field_name, f"no bundle {bundle_id!r} in the catalog")

    migrations = doc.get("migrations")
    moved_plans, moved_services = _migrations(
        check, migrations if isinstance(migrations, Mapping) else {}, plans, services
    )
    problems = merge(shape, check.problems)
    if problems:
        raise CatalogInvalid(problems)
    return Catalog(
        str(doc["version"]),
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


def _band_names(calendar: BandCalendar) -> set[str]:
    names = {r.band for r in calendar.rules} | {calendar.default_band}
    if calendar.holiday_band:
        names.add(calendar.holiday_band)
    return names


def _bundle(
    check: _Check, raw: Mapping[str, Any], where: str, services: Mapping[str, Service], zones: set[str], bands: set[str]
) -> Bundle:
    templates = []
    for j, rb in _items(raw, "buckets"):
        bw = f"{where}.buckets[{j}]"
        names = {
            key: tuple(sorted(check.names(rb, key, bw, known)))
            for key, known in (("services", set(services)), ("zones", zones), ("bands", bands))
        }
        unit = UnitKind.__members__.get(str(rb.get("unit")), UnitKind.SERVICE_SPECIFIC)
        templates.append(BucketTemplate(unit, rb.get("amount", 1), names["services"], names["zones"], names["bands"]))
    return Bundle(
        str(raw.get("id", "")),
        str(raw.get("name", "")),
        str(raw.get("currency", "")),
        raw.get("price_micros", 0),
        raw.get("validity_days", 1),
        raw.get("priority", 10),
        tuple(templates),
    )


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


def _plan(
    check: _Check, raw: Mapping[str, Any], where: str, services: Mapping[str, Service], zones: set[str]
) -> Plan | None:
    bands = None
    band_names: set[str] = set()
    if raw.get("time_bands") is not None:
        try:
            bands = calendar_from_doc(raw["time_bands"], f"{where}.time_bands")
            band_names = _band_names(bands)
        except InvalidRequest as exc:
            check.fail(exc.field, exc.message)
    versions = []
    last = None
    for j, rv in _items(raw, "versions"):
        vw = f"{where}.versions[{j}]"
        active = _instant(check, rv.get("active_from"), f"{vw}.active_from")
        if last is not None and active <= last:
            check.fail(f"{vw}.active_from", "must be later than the previous version's")
        last = active
        rules = tuple(
            r
            for k, rr in _items(rv, "rates")
            if (r := _rule(check, rr, f"{vw}.rates[{k}]", services, zones, band_names)) is not None
        )
        recurring = None
        rr = rv.get("recurring_bundle")
        if isinstance(rr, Mapping) and isinstance(rr.get("bundle"), str):
            recurring = RecurringBundle(rr["bundle"], rr.get("period_days", 1))
            check.bundle_refs.append((f"{vw}.recurring_bundle.bundle", rr["bundle"]))
        versions.append(PlanVersion(active, rules, rv.get("rental_micros", 0), recurring))
    kind = CustomerType.__members__.get(str(raw.get("customer_type")))
    access = tuple(a for _, a in _items(raw, "access", str))
    if kind is not None and kind.name.startswith("FIXED") and not access:
        check.fail(f"{where}.access", "a fixed-line plan must name its access technologies")
    plan_id = raw.get("id")
    if kind is None or not isinstance(plan_id, str):
        return None
    limits = _limits(raw.get("usage_limits"))
    return Plan(
        plan_id, str(raw.get("name", "")), kind, str(raw.get("currency", "")), bands, tuple(versions), access, limits
    )


# A plan's usage_limits fields and the unit each bounds.
LIMIT_FIELDS: tuple[tuple[str, UnitKind], ...] = (
    ("max_used_time_s", UnitKind.TIME),
    ("max_used_octets", UnitKind.VOLUME),
    ("max_used_units", UnitKind.SERVICE_SPECIFIC),
    ("max_used_money_micros", UnitKind.MONEY),
)


def _limits(raw: Any) -> PlanLimits:
    """A plan's own usage limits (the schema has checked their types and ranges)."""
    if not isinstance(raw, Mapping):
        return PlanLimits()
    ceilings = tuple((unit, raw[name]) for name, unit in LIMIT_FIELDS if isinstance(raw.get(name), int))
    floor = raw.get("overrun_floor_micros")
    return PlanLimits(ceilings, floor if isinstance(floor, int) else None)


def _rule(
    check: _Check, raw: Mapping[str, Any], where: str, services: Mapping[str, Service], zones: set[str], bands: set[str]
) -> RateRule | None:
    before = len(check.problems)
    service = services.get(str(raw.get("service")))
    if service is None and "service" in raw:
        check.fail(f"{where}.service", "must name a service of the catalog")
    rule_zones = check.names(raw, "zones", where, zones)
    rule_bands = check.names(raw, "bands", where, bands)
    unit = service.unit if service is not None else UnitKind.TIME
    money = unit is UnitKind.MONEY
    action = FinalUnitAction.__members__.get(str(raw.get("final_unit_action", "TERMINATE")), FinalUnitAction.TERMINATE)
    price = Rate(
        rating_group=0,
        unit=unit,
        name=str(raw.get("name", "")),
        increment=1 if money else raw.get("increment", 1),
        price_micros=1 if money else raw.get("price_micros", 0),
        default_quota=raw.get("default_quota", DEFAULT_QUOTA[unit]),
        validity_time_s=raw.get("validity_time_s", 3600),
        free=bool(raw.get("free", False)),  # as a catalog stored before the schema read it
        final_unit_action=action,
        redirect_address=str(raw.get("redirect_address", "")),
        restriction_filter_rules=tuple(r for _, r in _items(raw, "restriction_filter_rules", str)),
        connect_fee=raw.get("connect_fee_micros", 0),
        first_increment=raw.get("first_increment", 0),
        first_price=raw.get("first_price_micros", 0),
        min_charge=raw.get("min_charge_micros", 0),
        max_session_cost=raw.get("max_session_cost_micros", 0),
    )
    if action is FinalUnitAction.REDIRECT and not price.redirect_address:
        check.fail(f"{where}.redirect_address", "is required for REDIRECT")
    try:
        check_units(price, price.default_quota, f"{where}.default_quota")
    except InvalidRequest as exc:
        check.fail(exc.field, exc.message)
    if len(check.problems) > before or service is None:
        return None
    roaming = raw.get("roaming")
    return RateRule(service.name, rule_zones, rule_bands, roaming if isinstance(roaming, bool) else None, price)


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
