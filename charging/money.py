"""Money: every amount the system holds, and the one place its rounding and display live.

Money is an integer count of micro-units of the account's currency: one unit of currency
(1 EUR, 1 USD, 1 KES) is 1,000,000 micros. Prices per second or per kilobyte are
fractions of a cent, so minor units alone are too coarse; micros keep every price and
balance exact as an integer. Redis Lua numbers are IEEE doubles, exact for integers below
2**53 (about 9.007e15 micros): the bounds below keep every amount the scripts see well
inside that range.

An invoice counts in minor units (cents; two-decimal currencies, 1 cent = 10,000
micros), reached from micros by ``to_minor``, or by ``exact_minor`` where nothing may be
rounded. Each rounding the product uses has a name below and its rule in its docstring
(half away from zero unless it says otherwise); all are integer arithmetic, no floats.

    parse_amount       "10.5" -> micros, exact or an error
    to_minor           micros -> minor units, half away from zero
    exact_minor        micros -> minor units, exact or an error
    share              amount * n / d, half away from zero (prorations, basis points)
    share_floor        amount * n / d, rounded down (a cap that must not be exceeded)
    split_evenly       an amount in integer parts differing by at most one
    format_micros      micros shown exactly, at least two decimals      "2.50 EUR"
    format_micros_4dp  micros shown to 4 decimals, half away from zero   "0.1876"
    format_minor       minor units shown with separators and currency   "1,234.56 EUR"

Every counter the ledger scripts change, and what bounds it (F = the overrun floor of a
request, at most MAX_AMOUNT; a day, 1 TB, 10,000 units, 10**9 micros are the default
ceilings of one report, settings at most MAX_UNITS; catalog increments are at most 10**12,
bundle amounts at most MAX_UNITS, prices, fees, minimums and caps at most MAX_AMOUNT):

Account ``{a:ID}`` (charging/*.lua)
  balance     -MAX_AMOUNT <= balance <= MAX_BALANCE on a prepaid account. Usage is billed
              only while available money (balance - reserved) stays >= -F (session.lua),
              so balance >= reserved - F >= -MAX_AMOUNT; debits and purchases need the
              available money (event.lua, buy.lua); top-ups and refunds stop at
              MAX_BALANCE (topup.lua, event.lua). A postpaid account's balance is
              headroom: credit limit (at most 500 units of currency, provisioning/credit.py)
              plus any money it held, less unbilled usage (the same floor) and overdue
              invoices (credit.lua, set from the open invoices); close.lua gives the closed
              usage back, never more than was taken.
  reserved    0 <= reserved <= the largest balance the account had (MAX_BALANCE, plus
              the credit limit on a postpaid account): a grant holds at most the
              available money of the moment; releases (session.lua, sweep.lua) give back
              what was held.
  unbilled_<unit>, expired_<unit>
              running totals no script computes with (units of overrun past the floor,
              units of expired buckets); each step adds at most about MAX_UNITS, and the
              total stops at 2**53 - 1 (ledger_lib.lua add_total).
  bucket_seq  +1 per bucket bought: a count of requests.
Session ``{a:ID}:s:SESSION``, per rating group (session.lua)
  u, m        the grant: at most the unit's ceiling rounded up to an increment, and at
              most the available money of the moment.
  c, k        usage in the session, and the part of it paid in money (in increments),
              each <= MAX_UNITS: usage past it is unbilled and the session ends.
  cost        session_cost(rate, k) <= MAX_AMOUNT for every rate it is priced at (a
              capped rate always; else the worst case, rating.py worst_case_cost, is
              checked before pricing, and usage past it is unbilled); so one request
              costs at most 2 * MAX_AMOUNT per rating group (two rates around a tariff
              change).
  n, dl       request number (< 2**32), deadline (ms).
Buckets ``{a:ID}:bk``
  0 <= reserved <= amount <= initial <= MAX_UNITS: created from the catalog, only
  consumed or held after; the 80 % level is compared without a product (ledger_lib.lua).
Postpaid usage ``{a:ID}:u`` (record_usage)
  per record: units <= the ceiling, cost <= 2 * MAX_AMOUNT. A period's aggregate cost is
  at most what the headroom lets it bill (the headroom above, plus F), plus what was
  refunded in the period (event.lua refunds give headroom back); its units, which
  usage free of charge or covered by bundles can pile up, stop at 2**53 - 1 (the
  itemised records keep every unit); n is +1 per record.
Billing ``{bill.<n>}`` (postpaid/*.lua, minor units)
  invoice open <= total, disputed <= open, credited <= total; payments, credit notes and
  refunds are each at most 10**13 (postpaid/payments.py MAX_MINOR); a payment or credit
  note that would leave more than that as the account's credit is refused (pay.lua
  LIMIT), but a negative invoice adds its amount to it (settle.lua); an account's balance
  is its open invoices less its credit; paid_since and credited_since sum payments and
  credit notes since the last invoice; counts (moves, epoch, sequences) are +1 per
  request.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

MICROS_PER_UNIT = 1_000_000
MICROS_PER_MINOR = 10_000  # two-decimal currencies: 1 cent = 10,000 micros
# Largest amount one request may move (1e9 units of currency).
MAX_AMOUNT = 10**15
# Largest balance an account may hold (1e9 units of currency).
MAX_BALANCE = 10**15
# Largest unit count (seconds, bytes, events) one request may carry.
MAX_UNITS = 10**15


PLAIN_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def parse_amount(text: str) -> int:
    """Parse a decimal amount of currency ("10", "10.5", "0.000001") into micros.

    Only plain decimals: "1e3" (1,000), "NaN", "Infinity" and "1_000" are errors, not
    amounts. More than six decimals is an error rather than a silent rounding.
    """
    if not PLAIN_DECIMAL.fullmatch(text.strip()):
        raise ValueError(f"not a plain decimal amount: {text!r}")
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"not a decimal amount: {text!r}") from None
    micros = value * MICROS_PER_UNIT
    if micros != micros.to_integral_value():
        raise ValueError(f"more than 6 decimals: {text!r}")
    return int(micros)


def share(amount: int, numerator: int, denominator: int) -> int:
    """``amount * numerator / denominator`` rounded half away from zero (prorations,
    percentages in basis points)."""
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    q, r = divmod(abs(amount) * numerator, denominator)
    if 2 * r >= denominator:
        q += 1
    return q if amount >= 0 else -q


def share_floor(amount: int, numerator: int, denominator: int) -> int:
    """``amount * numerator / denominator`` rounded down (toward minus infinity), for a cap
    that must never be exceeded: a credit limit of at most 40 % of the income."""
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    return amount * numerator // denominator


def to_minor(micros: int) -> int:
    """Micros to minor units, half away from zero: 12_345 -> 1, 15_000 -> 2, -15_000 -> -2."""
    return share(micros, 1, MICROS_PER_MINOR)


def exact_minor(micros: int) -> int:
    """Micros to minor units when they are a whole number of them; ValueError otherwise
    (an amount a customer pays is never rounded)."""
    minor, rest = divmod(micros, MICROS_PER_MINOR)
    if rest:
        raise ValueError(f"{micros} micros is not a whole number of minor units")
    return minor


def split_evenly(amount: int, parts: int) -> list[int]:
    """``amount`` in ``parts`` integer shares differing by at most one, larger first; they
    add up to ``amount`` exactly. No parts, no shares."""
    if parts <= 0:
        return []
    q, r = divmod(amount, parts)
    return [q + 1 if i < r else q for i in range(parts)]


def format_micros(micros: int, currency: str = "") -> str:
    """Micros as a decimal amount, at least two decimals, never rounded: 2_500_000 ->
    "2.50", 1 -> "0.000001"; with a currency, "2.50 EUR"."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_UNIT)
    digits = f"{frac:06d}".rstrip("0")
    digits = digits.ljust(2, "0")
    text = f"{sign}{whole}.{digits}"
    return f"{text} {currency}" if currency else text


def format_micros_4dp(micros: int) -> str:
    """Micros to 4 decimals, rounded half away from zero, thousands separated (the cost of
    an itemised record): 187_550 -> "0.1876", -50 -> "-0.0001", -49 -> "0.0000"."""
    ten_thousandths = share(micros, 1, MICROS_PER_UNIT // 10_000)
    units, fraction = divmod(abs(ten_thousandths), 10_000)
    return f"{'-' if ten_thousandths < 0 else ''}{units:,}.{fraction:04d}"


def format_minor(minor: int, currency: str) -> str:
    """Minor units (cents) as "1,234.56 EUR"; a negative amount starts with a minus."""
    units, cents = divmod(abs(minor), 100)
    return f"{'-' if minor < 0 else ''}{units:,}.{cents:02d} {currency}"
