"""Money is an integer count of micro-units of the account's currency.

One unit of currency (1 EUR, 1 USD, 1 KES) is 1,000,000 micros. Prices per second or
per kilobyte are fractions of a cent, so minor units alone are too coarse; micros keep
every price and balance exact as an integer. Redis Lua numbers are IEEE doubles, exact
for integers below 2**53 (about 9.007e15 micros): the bounds below keep every amount the
scripts see well inside that range.
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
