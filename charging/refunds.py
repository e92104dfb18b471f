"""Refund tokens (3GPP TS 32.299 Refund-Information): what a debit answer hands out and a
refund presents to get back what that debit took.

The token names the debit's refund record, which the debiting script wrote in the
account's hash slot with what each bucket and the money gave (an event's with its
answer, ``keys.event``; a session's in ``keys.session_refunds``); ``ledger_lib.lua``
``take_refund`` consumes it. An event debit's token names its event id; a session
request's names the session id and the request number, and covers the usage of every
rating group that request reported (the refund names the rating group). Tokens are
opaque bytes to clients (a versioned reference; JSON tools such as grpcurl and the
bundled client show them in base64, as the protobuf JSON mapping does for bytes). They
grant nothing by themselves: a record is found only under the account of the subscriber
asking, and gives back at most what its debit took.

``give_back`` is the reference of what a refund gives back (``ledger_lib.lua``
``take_refund`` applies it inside Redis; the tests hold the script to it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from charging.rating import Rate, billable_units, session_cost

VERSION = "1"
# The ids a record can be under: event and session ids as the API accepts them.
ID = re.compile(r"^[\x21-\x7e]{1,256}$")
MAX_REQUEST_NUMBER = 2**32 - 1
MAX_TOKEN_BYTES = 400


@dataclass(frozen=True)
class RefundRef:
    """The debit a token names: an event (``request_number`` 0), or one session request."""

    kind: Literal["e", "s"]
    debit_id: str
    request_number: int = 0

    @property
    def token(self) -> bytes:
        if self.kind == "e":
            text = f"{VERSION}:e:{self.debit_id}"
        else:
            text = f"{VERSION}:s:{self.request_number}:{self.debit_id}"
        return text.encode()

    @property
    def field(self) -> str:
        """The record's field in a session's refund hash; "" for an event's record."""
        return str(self.request_number) if self.kind == "s" else ""


def event_token(event_id: str) -> bytes:
    return RefundRef("e", event_id).token


def session_token(session_id: str, request_number: int) -> bytes:
    return RefundRef("s", session_id, request_number).token


def parse_token(token: bytes) -> RefundRef | None:
    """The debit a token names, or None when it is not a token this system hands out."""
    if not token or len(token) > MAX_TOKEN_BYTES:
        return None
    try:
        text = token.decode("ascii")
    except UnicodeDecodeError:
        return None
    version, _, rest = text.partition(":")
    kind, _, rest = rest.partition(":")
    ref: RefundRef | None = None
    if version != VERSION:
        return None
    if kind == "e" and ID.match(rest):
        ref = RefundRef("e", rest)
    elif kind == "s":
        number, _, session_id = rest.partition(":")
        if number.isdigit() and int(number) <= MAX_REQUEST_NUMBER and ID.match(session_id):
            ref = RefundRef("s", session_id, int(number))
    # One spelling per token (no leading zeros in a request number).
    return ref if ref is not None and ref.token == token else None


@dataclass(frozen=True)
class Part:
    """What a debit took for its units at one rate (a session's usage across a tariff
    change has two parts, the later last), and what of it is not refunded yet."""

    rate: Rate
    # The rating group's units used and billable units paid with money in the session
    # before this debit (0 for an event): the debit was priced from there.
    used_before: int
    money_units_before: int
    # Units of the debit not refunded yet, and the billable units of them still paid with
    # money and still held from each bucket (in the order the buckets were drawn on);
    # together at most the billable units of ``left`` (less when usage went unbilled).
    left: int
    money_units: int
    taken: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class GiveBack:
    """A refund's effect: the money back, the units back per bucket id, and the parts after."""

    money: int
    buckets: tuple[tuple[str, int], ...]
    parts: tuple[Part, ...]


def give_back(parts: Sequence[Part], units: int) -> GiveBack | None:
    """What refunding ``units`` of a debit gives back; None when fewer are left.

    The debit is re-rated as if it had been ``units`` smaller: the billable units from the
    same start, the later part first. What it then took too much goes back last taken
    first: money first (a debit draws on buckets before money), priced at the top of what
    the money paid, then bucket units, last bucket first. A bucket that has expired keeps
    nothing of it: the caller's rule (``take_refund``), not this function's.
    """
    if not 0 < units <= sum(p.left for p in parts):
        return None
    out = list(parts)
    money, back, rest = 0, [], units
    for i in reversed(range(len(out))):
        p = out[i]
        t = min(rest, p.left)
        if t <= 0:
            continue
        r = p.rate
        held = p.money_units + sum(n for _, n in p.taken)
        # Usage past a session's overrun floor is held for less than its billable units
        # (not all of it was billed): refunding that part first gives nothing back.
        give = max(held - (billable_units(r, p.used_before + p.left - t) - billable_units(r, p.used_before)), 0)
        from_money = min(give, p.money_units)
        top = p.money_units_before + p.money_units
        money += session_cost(r, top) - session_cost(r, top - from_money)
        give -= from_money
        taken = list(p.taken)
        for j in reversed(range(len(taken))):
            bucket, n = taken[j]
            g = min(n, give)
            if g > 0:
                taken[j] = (bucket, n - g)
                back.append((bucket, g))
                give -= g
        out[i] = replace(
            p, left=p.left - t, money_units=p.money_units - from_money, taken=tuple(x for x in taken if x[1])
        )
        rest -= t
    return GiveBack(money, tuple(back), tuple(out))
