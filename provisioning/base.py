"""Customer base and churn: lines by customer type, gross additions, disconnections.

Each activation the network acknowledges for a new line is a gross addition, each
acknowledged termination a disconnection (with its reason), counted per day and
customer type in Redis (``crm:stats:adds:<day>``, ``crm:stats:disc:<day>``). The active
base at the end of any day is the running total up to it; churn over a period is the
disconnections divided by the base at its start, in basis points (1/100 %), rounded
down, so no float comes near the figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge

from provisioning import keys

ADDS = Counter("crm_gross_additions_total", "Lines activated for the first time, by customer type.", ["customer_type"])
DISCONNECTIONS = Counter(
    "crm_disconnections_total", "Lines terminated, by customer type and reason.", ["customer_type", "reason"]
)
ACTIVE = Gauge(
    "crm_active_lines",
    "Lines in service (activated and not terminated), by customer type.",
    ["customer_type"],
    multiprocess_mode="livemostrecent",  # set by the census's lease holder (supervisor.py)
)
CUSTOMER_TYPES = ("MOBILE_PREPAID", "MOBILE_POSTPAID", "FIXED_PREPAID", "FIXED_POSTPAID")
EPOCH = date(2020, 1, 1)


def churn_basis_points(disconnections: int, base_at_start: int) -> int:
    """Disconnections per 10,000 lines of the base at the start of the period (floor)."""
    return disconnections * 10_000 // base_at_start if base_at_start > 0 else 0


@dataclass(frozen=True)
class BaseFigures:
    customer_type: str
    active_at_start: int
    active_at_end: int
    gross_additions: int
    disconnections: int
    churn_bp: int


def day_of(epoch_s: int) -> date:
    return datetime.fromtimestamp(epoch_s, UTC).date()


class CustomerBase:
    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    async def added(self, customer_type: str, at_s: int) -> None:
        await self.client.hincrby(keys.additions(str(day_of(at_s))), customer_type, 1)
        await self.client.hincrby(keys.ACTIVE_LINES, customer_type, 1)
        ADDS.labels(customer_type).inc()
        await self._refresh_gauge(customer_type)

    async def disconnected(self, customer_type: str, reason: str, at_s: int) -> None:
        await self.client.hincrby(keys.disconnections(str(day_of(at_s))), customer_type, 1)
        await self.client.hincrby(keys.ACTIVE_LINES, customer_type, -1)
        DISCONNECTIONS.labels(customer_type, reason).inc()
        await self._refresh_gauge(customer_type)

    async def _refresh_gauge(self, customer_type: str) -> None:
        total = await self.client.hincrby(keys.ACTIVE_LINES, customer_type, 0)
        ACTIVE.labels(customer_type).set(total)

    async def record_gauges(self) -> None:
        """Set ``crm_active_lines`` for every customer type from Redis: at start (the gauge
        was empty after a restart until a line changed) and with each census pass (lines
        activated by another process, such as ``charging worker``, show here too)."""
        counts = await self.client.hmget(keys.ACTIVE_LINES, list(CUSTOMER_TYPES))
        for customer_type, count in zip(CUSTOMER_TYPES, counts, strict=True):
            ACTIVE.labels(customer_type).set(int(count or 0))

    async def figures(self, first: date, last: date) -> list[BaseFigures]:
        """The base at the start and end of [first, last], and the movements within."""
        days = [EPOCH + timedelta(days=n) for n in range((last - EPOCH).days + 1)]
        pipe = self.client.pipeline(transaction=False)
        for d in days:
            pipe.hgetall(keys.additions(str(d)))
            pipe.hgetall(keys.disconnections(str(d)))
        raw = await pipe.execute()
        out = []
        for kind in CUSTOMER_TYPES:
            before = within_adds = within_disc = 0
            for d, adds, disc in zip(days, raw[::2], raw[1::2], strict=True):
                a, x = int(adds.get(kind, 0)), int(disc.get(kind, 0))
                if d < first:
                    before += a - x
                else:
                    within_adds += a
                    within_disc += x
            out.append(
                BaseFigures(
                    kind,
                    before,
                    before + within_adds - within_disc,
                    within_adds,
                    within_disc,
                    churn_basis_points(within_disc, before),
                )
            )
        return out
