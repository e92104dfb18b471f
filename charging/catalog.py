"""The product catalog: services, destinations, plans with dated versions, and rate lookup.

A catalog is one versioned JSON document (``charging/catalog.json`` is the sample that
``make run`` loads; ``catalog.schema.json`` describes it), read and checked by
``catalog_doc.py``. Everything here is pure: the time of a lookup is a parameter.

Rating a rating group for a request: the rating group maps to a service (voice, sms,
mms, data, ...); the called number maps to a zone (``zones.py``); the instant maps to
a time band in the plan's time zone (``bands.py``); a visited network outside the home
networks means roaming. The plan version in force at that instant is searched for the
first rate rule that matches service, zone, band and roaming; its prices become a
``Rate`` (``rating.py``).
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from functools import cached_property
from importlib import resources
from typing import Any

from charging.bands import BandCalendar
from charging.buckets import Bundle
from charging.rating import Rate, UnitKind
from charging.zones import ZoneTable

# The schema states the document's names and codes once; code that checks a name from
# elsewhere (a plan id in an order, a bundle id in a purchase) uses the same patterns.
_DEFS = json.loads(resources.files("charging").joinpath("catalog.schema.json").read_text())["$defs"]
NAME = re.compile(_DEFS["name"]["pattern"])
PLAN_ID = re.compile(_DEFS["plan_id"]["pattern"])
# Bucket ids are "<bundle id>.<n>" inside records separated by ':', '|' and ','.
BUNDLE_ID = re.compile(_DEFS["bundle_id"]["pattern"])
DIGITS = re.compile(_DEFS["digits"]["pattern"])
MCC_MNC = re.compile(_DEFS["mcc_mnc"]["pattern"])
ACCESS: tuple[str, ...] = tuple(_DEFS["access"]["enum"])
DEFAULT_QUOTA = {UnitKind.TIME: 300, UnitKind.VOLUME: 10 * 2**20, UnitKind.SERVICE_SPECIFIC: 1, UnitKind.MONEY: 10**6}


class CustomerType(Enum):
    MOBILE_PREPAID = "MOBILE_PREPAID"
    MOBILE_POSTPAID = "MOBILE_POSTPAID"
    FIXED_PREPAID = "FIXED_PREPAID"
    FIXED_POSTPAID = "FIXED_POSTPAID"


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
class PlanLimits:
    """A plan's own bounds on usage: the most one request may report per unit (each
    applies within the server's ceiling for that unit) and how far below zero usage
    beyond its grants may take an account's money (micros; replaces the server's)."""

    ceilings: tuple[tuple[UnitKind, int], ...] = ()
    overrun_floor: int | None = None

    def ceiling(self, unit: UnitKind, server: int) -> int:
        """The most one request may report in ``unit``: the plan's bound within the server's."""
        for u, c in self.ceilings:
            if u is unit and c < server:
                server = c
        return server


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
    limits: PlanLimits = PlanLimits()

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
        last = at_s + within_s
        first: int | None = None
        for v in self.versions:
            if at_s < v.active_from_s <= last and (first is None or v.active_from_s < first):
                first = v.active_from_s
        if self.timeline is not None:
            band_change = self.timeline.at(at_s)[1]
            if band_change is not None and band_change <= last and (first is None or band_change < first):
                first = band_change
        return first


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
    # Plans and services of earlier catalogs this one replaces (old -> new, the
    # document's "migrations"): an account still naming an old plan is rated on its
    # successor while the load moves the accounts over.
    moved_plans: Mapping[str, str] = field(default_factory=dict)
    moved_services: Mapping[str, str] = field(default_factory=dict)
    _cache: dict[tuple[Any, ...], Rate | None] = field(default_factory=dict, compare=False, repr=False)

    def plan_of(self, plan_id: str) -> Plan | None:
        """The plan an account naming ``plan_id`` is rated on (its successor when this
        catalog migrated it), or None."""
        return self.plans.get(plan_id) or self.plans.get(self.moved_plans.get(plan_id, ""))

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
