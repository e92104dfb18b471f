"""Unit buckets (bundles of seconds, events or bytes): their stored form and how a
bundle from the catalog becomes buckets. Pure: the time is a parameter.

A bucket is stored in the account's ``{a:ID}:bk`` hash as
``unit,amount,reserved,start,expiry,priority,initial,notified,services,zones,bands``
(``ledger_lib.lua`` reads and writes the same form). Restriction lists are names joined
by ``|``; an empty list matches anything. Consumption order: matching buckets by
priority (lower first), then earliest expiry; money comes last (``usable`` here, what is
taken and held in ``consumption.py``; ``ledger_lib.lua`` ``matching`` is held to them).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from charging.rating import UnitKind

DAY_S = 86_400


@dataclass(frozen=True)
class BucketTemplate:
    unit: UnitKind
    amount: int
    services: tuple[str, ...] = ()
    zones: tuple[str, ...] = ()
    bands: tuple[str, ...] = ()


@dataclass(frozen=True)
class Bundle:
    id: str
    name: str
    currency: str
    price_micros: int
    validity_days: int
    priority: int
    buckets: tuple[BucketTemplate, ...]


@dataclass(frozen=True)
class Bucket:
    id: str
    unit: UnitKind
    amount: int
    reserved: int
    start_s: int
    expiry_s: int
    priority: int
    initial: int
    notified: int = 0
    services: tuple[str, ...] = ()
    zones: tuple[str, ...] = ()
    bands: tuple[str, ...] = ()

    @property
    def available(self) -> int:
        return self.amount - self.reserved

    def usable_at(self, at_s: int) -> bool:
        return self.start_s <= at_s < self.expiry_s

    def matches(self, unit: UnitKind, service: str, zone: str, band: str) -> bool:
        """Same unit, and each restriction list empty or naming the usage's value."""
        return (
            self.unit is unit
            and (not self.services or service in self.services)
            and (not self.zones or zone in self.zones)
            and (not self.bands or band in self.bands)
        )

    def dropped_at(self, at_s: int) -> bool:
        """Past its expiry with nothing held on it: a script that writes the account's
        buckets deletes it and records what was left as expired."""
        return self.expiry_s <= at_s and self.reserved == 0


def consumption_order(b: Bucket) -> tuple[bool, int, int, str]:
    """Sort key: a pool member's own buckets before its pool's (ids ``^`` + id), then
    priority (lower first), then earliest expiry, then id (ids are ASCII, so Python's
    order is the byte order Lua compares strings in)."""
    return (b.id.startswith("^"), b.priority, b.expiry_s, b.id)


def usable(
    buckets: Iterable[Bucket],
    at_s: int,
    unit: UnitKind,
    service: str,
    zone: str,
    band: str,
    held: frozenset[str] = frozenset(),
) -> list[Bucket]:
    """The buckets a usage may draw on at ``at_s``, in consumption order: started, not
    expired, matching. ``held`` names buckets the rating group holds a reservation on:
    usage within that grant may still draw on them after they expired."""
    return sorted(
        (
            b
            for b in buckets
            if b.start_s <= at_s and (at_s < b.expiry_s or b.id in held) and b.matches(unit, service, zone, band)
        ),
        key=consumption_order,
    )


def pack(b: Bucket) -> str:
    """The stored form, without the id (the hash field)."""
    return ",".join(
        [
            str(int(b.unit)),
            str(b.amount),
            str(b.reserved),
            str(b.start_s),
            str(b.expiry_s),
            str(b.priority),
            str(b.initial),
            str(b.notified),
            "|".join(b.services),
            "|".join(b.zones),
            "|".join(b.bands),
        ]
    )


def unpack(bucket_id: str, text: str) -> Bucket:
    v = text.split(",")
    names = [tuple(x for x in part.split("|") if x) for part in v[8:11]]
    return Bucket(
        bucket_id,
        UnitKind(int(v[0])),
        int(v[1]),
        int(v[2]),
        int(v[3]),
        int(v[4]),
        int(v[5]),
        int(v[6]),
        int(v[7]),
        *names,
    )


def buckets_of(bundle: Bundle, now_s: int) -> list[Bucket]:
    """Fresh buckets for one purchase of ``bundle``, valid from now for its days. Ids are
    given by the purchase script (they must be unique within the account)."""
    expiry = now_s + bundle.validity_days * DAY_S
    return [
        Bucket(
            id="",
            unit=t.unit,
            amount=t.amount,
            reserved=0,
            start_s=now_s,
            expiry_s=expiry,
            priority=bundle.priority,
            initial=t.amount,
            services=t.services,
            zones=t.zones,
            bands=t.bands,
        )
        for t in bundle.buckets
    ]
