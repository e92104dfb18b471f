"""The product catalog: services, destinations, plans with dated versions, and rate lookup.

A catalog is one versioned JSON document (``charging/catalog.json`` is the sample that
``make run`` loads; ``catalog.schema.json`` describes it). ``catalog_from_doc`` checks
the whole document and reports *every* bad field at once; a catalog with any problem
is rejected whole. Everything here is pure: the time of a lookup is a parameter.

Rating a rating group for a request: the rating group maps to a service (voice, sms,
mms, data, ...); the called number maps to a zone (``zones.py``); the instant maps to
a time band in the plan's time zone (``bands.py``); a visited network outside the home
networks means roaming. The plan version in force at that instant is searched for the
first rate rule that matches service, zone, band and roaming; its prices become a
``Rate`` (``rating.py``).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import Enum
from functools import cached_property
from typing import Any

from charging.bands import BandCalendar, calendar_from_doc
from charging.buckets import BucketTemplate, Bundle
from charging.errors import InvalidRequest
from charging.money import MAX_AMOUNT, MAX_UNITS
from charging.rating import CURRENCY, FinalUnitAction, Rate, UnitKind, check_units
from charging.zones import ZoneTable

NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
PLAN_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
# Bucket ids are "<bundle id>.<n>" inside records separated by ':', '|' and ','.
BUNDLE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DIGITS = re.compile(r"^[0-9]{0,15}$")
MCC_MNC = re.compile(r"^[0-9]{5,6}$")
ACCESS = ("PSTN", "WIMAX", "FIBER")
DEFAULT_QUOTA = {UnitKind.TIME: 300, UnitKind.VOLUME: 10 * 2**20, UnitKind.SERVICE_SPECIFIC: 1, UnitKind.MONEY: 10**6}


class CustomerType(Enum):
    MOBILE_PREPAID = "MOBILE_PREPAID"
    MOBILE_POSTPAID = "MOBILE_POSTPAID"
    FIXED_PREPAID = "FIXED_PREPAID"
    FIXED_POSTPAID = "FIXED_POSTPAID"


class CatalogInvalid(InvalidRequest):
    """Every problem of a rejected catalog, each naming its field."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__(problems[0][0], "; ".join(f"{f}: {m}" for f, m in problems))
        self.problems = problems

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Service:
    name: str
    unit: UnitKind
    rating_groups: tuple[int, ...]
    # Service-Identifier values that name this service when the rating group does not.
    service_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class RateRule:
    """Prices of one service, for some zones, bands and roaming state (empty: any)."""

    service: str
    zones: frozenset[str]
    bands: frozenset[str]
    roaming: bool | None
    price: Rate

    def matches(self, service: str, zone: str, band: str, roaming: bool) -> bool:
        return (
            self.service == service
            and (not self.zones or zone in self.zones)
            and (not self.bands or band in self.bands)
            and (self.roaming is None or self.roaming == roaming)
        )


@dataclass(frozen=True)
class RecurringBundle:
    """A bundle a prepaid plan buys for the subscriber every period, when the money
    balance covers it."""

    bundle_id: str
    period_days: int


@dataclass(frozen=True)
class PlanVersion:
    active_from_s: int
    rules: tuple[RateRule, ...]
    rental_micros: int = 0
    recurring: RecurringBundle | None = None


class BandTimeline:
    """Memo of a plan's band calendar: the band of each instant and when it next changes.

    Each computed stretch ``[start, change)`` has one band and ends at a real change, so
    stretches never overlap and a lookup is a binary search. Working out a band and its
    next change from the calendar costs tens of microseconds (time zone arithmetic);
    every request of the same stretch (hours, usually) then reuses it.
    """

    HORIZON_S = 8 * 86_400
    LIMIT = 10_000

    def __init__(self, calendar: BandCalendar) -> None:
        self.calendar = calendar
        self._ends: list[int] = []
        self._stretch: dict[int, tuple[int, str]] = {}

    def at(self, t: int) -> tuple[str, int | None]:
        """The band at ``t`` and the next change after it (None: none within 8 days)."""
        i = bisect.bisect_right(self._ends, t)
        if i < len(self._ends):
            end = self._ends[i]
            start, band = self._stretch[end]
            if start <= t:
                return band, end
        band = self.calendar.band_at(t)
        change = self.calendar.next_change(t, self.HORIZON_S)
        if change is not None:
            if len(self._ends) >= self.LIMIT:
                self._ends.clear()
                self._stretch.clear()
            known = self._stretch.get(change)
            if known is None:
                bisect.insort(self._ends, change)
                self._stretch[change] = (t, band)
            else:
                self._stretch[change] = (min(known[0], t), band)
        return band, change


@dataclass(frozen=True)
class Plan:
    id: str
    name: str
    customer_type: CustomerType
    currency: str
    bands: BandCalendar | None
    versions: tuple[PlanVersion, ...]
    # Fixed lines: the access technologies the plan is sold on (PSTN, WIMAX, FIBER).
    access: tuple[str, ...] = ()

    @cached_property
    def longest_validity_s(self) -> int:
        """Longest validity time any rate of the plan grants (sizes the supervision time)."""
        return max((r.price.validity_time_s for v in self.versions for r in v.rules), default=0)

    def version_at(self, at_s: int) -> PlanVersion | None:
        """The version in force at ``at_s``: the latest one already active."""
        current = None
        for v in self.versions:
            if v.active_from_s <= at_s:
                current = v
        return current

    @cached_property
    def timeline(self) -> BandTimeline | None:
        return BandTimeline(self.bands) if self.bands else None

    def band_at(self, at_s: int) -> str:
        return self.timeline.at(at_s)[0] if self.timeline else ""

    def next_change(self, at_s: int, within_s: int) -> int | None:
        """The first instant within ``within_s`` where the band or the plan version changes."""
        candidates = [v.active_from_s for v in self.versions if at_s < v.active_from_s <= at_s + within_s]
        if self.timeline is not None:
            band_change = self.timeline.at(at_s)[1]
            if band_change is not None and band_change <= at_s + within_s:
                candidates.append(band_change)
        return min(candidates, default=None)


@dataclass(frozen=True)
class Usage:
    """What a request says about where and how a service is used."""

    destination: str = ""
    visited_network: str = ""


@dataclass(frozen=True)
class Catalog:
    version: str
    home_networks: frozenset[str]
    services: Mapping[str, Service]
    service_of_group: Mapping[int, str]
    service_of_id: Mapping[int, str]
    zones: ZoneTable
    plans: Mapping[str, Plan]
    bundles: Mapping[str, Bundle] = field(default_factory=dict)
    _cache: dict[tuple[Any, ...], Rate | None] = field(default_factory=dict, compare=False, repr=False)

    def where(
        self, plan: Plan, rating_group: int, usage: Usage, at_s: int, service_id: int = 0
    ) -> tuple[str, str, str, bool]:
        """Service (by rating group, else by service identifier), destination zone, time
        band and roaming of a usage: what selects a rate and what a bucket's
        restrictions are checked against."""
        service = self.service_of_group.get(rating_group) or self.service_of_id.get(service_id, "")
        zone = (self.zones.zone_of(usage.destination) or "") if usage.destination else ""
        roaming = bool(usage.visited_network) and usage.visited_network not in self.home_networks
        return service, zone, plan.band_at(at_s), roaming

    def rate(
        self, plan: Plan, rating_group: int, usage: Usage, at_s: int, where: tuple[str, str, str, bool] | None = None
    ) -> Rate | None:
        """The rate of ``rating_group`` for this usage at ``at_s``, or None if the plan
        has no rate for it (RFC 8506 5031, rating failed). ``where`` may be passed when
        already known for this instant."""
        service, zone, band, roaming = where or self.where(plan, rating_group, usage, at_s)
        version = plan.version_at(at_s)
        if not service or version is None:
            return None
        key = (plan.id, version.active_from_s, rating_group, service, zone, band, roaming)
        if key in self._cache:
            return self._cache[key]
        rate = None
        for rule in version.rules:
            if rule.matches(service, zone, band, roaming):
                rate = _with_group(rule.price, rating_group)
                break
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[key] = rate
        return rate


def _with_group(price: Rate, rating_group: int) -> Rate:
    return replace(price, rating_group=rating_group)


# --- reading and checking a catalog document ----------------------------------------


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


def catalog_from_doc(doc: Any) -> Catalog:
    """Check a whole catalog document; raise ``CatalogInvalid`` listing every problem."""
    check = _Check()
    if not isinstance(doc, Mapping):
        raise CatalogInvalid([("catalog", "must be a JSON object")])
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

    if check.problems:
        raise CatalogInvalid(check.problems)
    assert isinstance(version, str)
    return Catalog(version, home, services, service_of_group, service_of_id, ZoneTable.build(prefixes), plans, bundles)


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
