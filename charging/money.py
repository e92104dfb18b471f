"""Money is an integer count of micro-units of the account's currency.

One unit of currency (1 EUR, 1 USD, 1 KES) is 1,000,000 micros. Prices per second or
per kilobyte are fractions of a cent, so minor units alone are too coarse; micros keep
every price and balance exact as an integer. Redis Lua numbers are IEEE doubles, exact
for integers below 2**53 (about 9.007e15 micros): the bounds below keep every amount the
scripts see well inside that range.

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
Billing ``{bill}`` (postpaid/*.lua, minor units)
  invoice open <= total, disputed <= open, credited <= total; payments, credit notes and
  refunds are each at most 10**13 (postpaid/payments.py MAX_MINOR); a payment or credit
  note that would leave more than that as the account's credit is refused (pay.lua
  LIMIT), but a negative invoice adds its amount to it (issue.lua); an account's balance
  is its open invoices less its credit; paid_since and credited_since sum payments and
  credit notes since the last invoice; counts (moves, epoch, sequences) are +1 per
  request.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

MICROS_PER_UNIT = 1_000_000
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


def format_micros(micros: int, currency: str = "") -> str:
    """Render micros as a decimal amount, at least two decimals, never rounded."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_UNIT)
    digits = f"{frac:06d}".rstrip("0")
    digits = digits.ljust(2, "0")
    text = f"{sign}{whole}.{digits}"
    return f"{text} {currency}" if currency else text
