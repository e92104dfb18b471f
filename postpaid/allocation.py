"""How money on a billing account meets its open invoices. Pure: no Redis, no clock.

Amounts are minor units (cents). An account's standing is its open invoices, oldest
first, with what is still open of each; its credit (money received and not yet
allocated); and its balance, what it owes: invoices issued, less payments and credit
notes, plus refunds (so ``balance == sum(open) - credit`` whenever it held before).

- A payment pays the open invoices oldest first; a partial payment leaves the rest of an
  invoice open; what is left over becomes credit.
- A credit note settles its own invoice's open amount first, then pays the other open
  invoices oldest first like a payment; the rest becomes credit.
- A refund pays back credit, never more than there is.
- An invoice issued is paid from the credit first; a negative invoice adds to the credit,
  which then pays the oldest open invoices.

``pay.lua`` (payments, credit notes, refunds) and ``settle.lua`` apply these rules
atomically in Redis; the tests hold both scripts to the functions here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Amounts = tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Standing:
    open: Amounts = ()  # (invoice number, amount still open > 0), oldest first
    credit: int = 0
    balance: int = 0

    def open_of(self, number: str) -> int:
        return dict(self.open).get(number, 0)


@dataclass(frozen=True)
class Allocated:
    """A movement's result: the standing after it and what it paid of which invoice, in
    the order paid."""

    standing: Standing
    allocations: Amounts


def _settle(open_: Amounts, numbers: Sequence[str], amount: int) -> tuple[Amounts, Amounts, int]:
    """Pay up to ``amount`` of the invoices named, in that order: (open after, what each
    got, the rest)."""
    left = dict(open_)
    paid: list[tuple[str, int]] = []
    rest = amount
    for number in numbers:
        if rest <= 0:
            break
        t = min(left.get(number, 0), rest)
        if t > 0:
            left[number] -= t
            rest -= t
            paid.append((number, t))
    return tuple((n, left[n]) for n, _ in open_ if left[n] > 0), tuple(paid), rest


def pay(s: Standing, amount: int) -> Allocated:
    """A payment of ``amount`` > 0."""
    open_, paid, rest = _settle(s.open, [n for n, _ in s.open], amount)
    return Allocated(Standing(open_, s.credit + rest, s.balance - amount), paid)


def credit_note(s: Standing, invoice: str, amount: int) -> Allocated:
    """A credit note of ``amount`` > 0 against ``invoice`` (which may be paid already);
    that it is at most what the invoice can still be credited is checked before."""
    order = [invoice] + [n for n, _ in s.open if n != invoice]
    open_, paid, rest = _settle(s.open, order, amount)
    return Allocated(Standing(open_, s.credit + rest, s.balance - amount), paid)


def refund(s: Standing, amount: int) -> Standing:
    """Pay back ``amount`` of credit; more than the credit is refused (ValueError)."""
    if amount > s.credit:
        raise ValueError("a refund is at most the account's credit")
    return Standing(s.open, s.credit - amount, s.balance + amount)


def issue(s: Standing, number: str, total: int) -> Standing:
    """A new invoice of ``total`` (negative: a credit), paid from the credit first."""
    if total >= 0:
        applied = min(s.credit, total)
        opened = ((number, total - applied),) if total > applied else ()
        return Standing(s.open + opened, s.credit - applied, s.balance + total)
    open_, _paid, rest = _settle(s.open, [n for n, _ in s.open], s.credit - total)
    return Standing(open_, rest, s.balance + total)
