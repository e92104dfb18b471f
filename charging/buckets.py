"""Unit buckets (bundles of seconds, events or bytes): their stored form and how a
bundle from the catalog becomes buckets. Pure: the time is a parameter.

A bucket is stored in the account's ``{a:ID}:bk`` hash as
``unit,amount,reserved,start,expiry,priority,initial,notified,services,zones,bands``
(``ledger_lib.lua`` reads and writes the same form). Restriction lists are names joined
by ``|``; an empty list matches anything. Consumption order: matching buckets by
priority (lower first), then earliest expiry; money comes last.
"""

from __future__ import annotations

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
