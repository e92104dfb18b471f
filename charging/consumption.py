"""What usage, grants and events take from unit buckets and from money. Pure: no Redis,
no clock; the instant is a parameter.

The rules (``ledger_lib.lua``, ``session.lua`` and ``event.lua`` apply them inside Redis;
the tests hold the scripts to the functions here):

- Buckets give up *billable* units: the usage rounded up to the rate's increments
  (``rating.billable_units``), continued over the session like the price is.
- A usage draws on the matching buckets in consumption order (``buckets.usable``: started,
  not expired, unit and restrictions matching; a member's own before its pool's, then
  priority, then earliest expiry, then id),
  each up to its unreserved amount; what they do not cover is money at the rate's price,
  priced on the units paid with money so far in the session.
- A grant holds bucket units first (only of buckets not expired at that instant), then as
  many units as the free money buys (``rating.affordable_units``); it may span buckets
  and money. The unused rest of an increment already billed is granted for nothing.
- An event takes from the buckets first, the rest is money, all or nothing.
- A pool member also draws on its pool's buckets, after all of its own; they are named
  ``POOL_MARK + id`` in the member's view.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from charging.buckets import Bucket, usable
from charging.rating import Rate, UnitKind, affordable_units, billable_units, session_cost

POOL_MARK = "^"
Pot = Mapping[str, Bucket]


@dataclass(frozen=True)
class Where:
    """What a bucket's restrictions are checked against."""

    unit: UnitKind
    service: str = ""
    zone: str = ""
    band: str = ""


@dataclass(frozen=True)
class Reservation:
    """What a rating group holds until its next report: the units granted, the money
    held for them and the bucket units held, by bucket id."""

    units: int = 0
    money: int = 0
    buckets: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class GroupState:
    """A rating group within a session: its usage so far, the billable units of it paid
    with money so far, and its reservation."""

    used: int = 0
    money_units: int = 0
    reservation: Reservation = field(default_factory=Reservation)


@dataclass(frozen=True)
class Charged:
    """A session report's effect: the buckets after it, the group's new state, the money
    charged for the usage and the units granted."""

    pot: dict[str, Bucket]
    state: GroupState
    cost: int
    granted: int


@dataclass(frozen=True)
class Debit:
    """An event's draw: units taken per bucket id and the money for the rest."""

    taken: dict[str, int]
    cost: int


def member_pot(own: Iterable[Bucket], pool: Iterable[Bucket] = ()) -> dict[str, Bucket]:
    """The buckets an account draws on, by id: its own, and its pool's as ``^id``."""
    pot = {b.id: b for b in own}
    pot.update({POOL_MARK + b.id: replace(b, id=POOL_MARK + b.id) for b in pool})
    return pot


def _order(pot: Pot, where: Where, at_s: int, held: frozenset[str] = frozenset()) -> list[Bucket]:
    return usable(pot.values(), at_s, where.unit, where.service, where.zone, where.band, held)


def take(order: Sequence[Bucket], need: int) -> dict[str, int]:
    """Up to ``need`` units out of the buckets' unreserved amounts, in order."""
    taken: dict[str, int] = {}
    covered = 0
    for b in order:
        if need <= covered:
            break
        t = min(b.available, need - covered)
        if t > 0:
            taken[b.id] = t
            covered += t
    return taken


def hold(order: Sequence[Bucket], need: int, at_s: int) -> dict[str, int]:
    """Up to ``need`` units to reserve, in order, of buckets not expired at ``at_s``."""
    return take([b for b in order if at_s < b.expiry_s], need)


def after_taking(pot: Pot, taken: Mapping[str, int]) -> dict[str, Bucket]:
    return {i: replace(b, amount=b.amount - taken[i]) if i in taken else b for i, b in pot.items()}


def after_holding(pot: Pot, held: Mapping[str, int]) -> dict[str, Bucket]:
    return {i: replace(b, reserved=b.reserved + held[i]) if i in held else b for i, b in pot.items()}


def after_releasing(pot: Pot, held: Iterable[tuple[str, int]]) -> dict[str, Bucket]:
    """Give back held units (never below zero held: a bucket may have been refilled or
    replaced since)."""
    out = dict(pot)
    for i, n in held:
        if i in out:
            out[i] = replace(out[i], reserved=max(out[i].reserved - n, 0))
    return out


def debit(rate: Rate, pot: Pot, where: Where, at_s: int, units: int) -> Debit:
    """An event of ``units``: the matching buckets first, the rest in money. Whether the
    money is there is the caller's all-or-nothing decision."""
    need = billable_units(rate, units)
    taken = take(_order(pot, where, at_s), need)
    return Debit(taken, session_cost(rate, need - sum(taken.values())))


def charge_group(
    pot: Pot,
    where: Where,
    at_s: int,
    state: GroupState,
    parts: Sequence[tuple[int, Rate]],
    grant_rate: Rate,
    want: int,
    free_money: int,
) -> Charged:
    """One rating group of the newest request of a session (UPDATE or TERMINATE; INITIAL
    with a fresh state): release its reservation, charge each part of the usage at its
    rate (two parts around a tariff change), then grant up to ``want`` units.

    ``free_money`` is the money not held by any other reservation, before this usage is
    charged. ``want`` is 0 when no new grant is asked for (a final report, or usage beyond
    the last grant, which is charged but granted nothing).
    """
    held_ids = frozenset(i for i, _ in state.reservation.buckets)
    pot = after_releasing(pot, state.reservation.buckets)
    used, money_units, cost = state.used, state.money_units, 0
    for n, (units, rate) in enumerate(parts):
        if units <= 0:
            continue
        if n > 0 and rate.packed != parts[0][1].packed and money_units == billable_units(parts[0][1], used):
            # At the tariff change, when money has paid all of the usage so far (no bucket
            # gave any), the money counter moves onto the new rate's increments, as
            # rating.incremental_cost prices it; after buckets gave units it stays.
            money_units = billable_units(rate, used)
        need = billable_units(rate, used + units) - billable_units(rate, used)
        taken = take(_order(pot, where, at_s, held_ids), need)
        pot = after_taking(pot, taken)
        paid = need - sum(taken.values())
        cost += session_cost(rate, money_units + paid) - session_cost(rate, money_units)
        money_units += paid
        used += units
    state = GroupState(used, money_units)
    if want <= 0:
        return Charged(pot, state, cost, 0)
    paid_rest = billable_units(grant_rate, used) - used
    need = billable_units(grant_rate, used + want) - billable_units(grant_rate, used)
    held = hold(_order(pot, where, at_s, held_ids), need, at_s)
    covered = sum(held.values())
    money_for = affordable_units(grant_rate, money_units, free_money - cost, need - covered)
    granted = min(want, paid_rest + covered + money_for)
    if granted <= 0:
        return Charged(pot, state, cost, 0)
    money = session_cost(grant_rate, money_units + money_for) - session_cost(grant_rate, money_units)
    reservation = Reservation(granted, money, tuple(held.items()))
    return Charged(after_holding(pot, held), replace(state, reservation=reservation), cost, granted)
