"""Monthly partitions of the large tables: made ahead of time, dropped past retention.

``usage_records`` and ``audit`` are partitioned by UTC month (``occurred_at``). A row
whose month has no partition cannot be inserted, so partitions are made
``MONTHS_AHEAD`` months ahead; retention is dropping a whole partition, which frees the
space at once and never rewrites a row (the rows themselves are immutable).

Retention counts whole months before the current one: with 24, on any day of November
2026 the oldest month kept is November 2024. The legal minimum depends on the country and
on what the records are used for (usage records that back an invoice are accounting
records where invoices must be kept, ten years in Germany, for example): set it per
table, never below what applies.

``months_to_keep`` is the rule, pure; ``maintain`` applies it through SQL functions that
the migrations define (``create_month_partitions``, ``drop_month_partitions``);
the server runs ``maintain`` as its ``retention`` job (``charging/jobs.py``), hourly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime

from charging.clock import Clock
from charging.database import Pool

log = logging.getLogger("charging.retention")

MONTHS_AHEAD = 3
PARTITIONED = ("usage_records", "audit")


@dataclass(frozen=True)
class Policy:
    table: str
    months: int  # whole months kept before the current one; 0 keeps everything


@dataclass(frozen=True)
class Plan:
    """What ``maintain`` makes sure of for one table on one day."""

    table: str
    first_month: date  # partitions from here ...
    last_month: date  # ... to here exist
    drop_before: date | None  # partitions of earlier months are dropped (None: none)


def add_months(month: date, months: int) -> date:
    """The first day of the month ``months`` after (or before, when negative) ``month``'s."""
    index = month.year * 12 + month.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def months_to_keep(policy: Policy, today: date) -> Plan:
    this_month = today.replace(day=1)
    return Plan(
        policy.table,
        this_month,
        add_months(this_month, MONTHS_AHEAD),
        add_months(this_month, -policy.months) if policy.months > 0 else None,
    )


def utc_day(clock: Clock) -> date:
    return datetime.fromtimestamp(clock.now_ms() / 1000, UTC).date()


async def maintain(pool: Pool, policies: list[Policy], today: date) -> dict[str, tuple[int, int]]:
    """Make the partitions ahead and drop those past retention; per table, how many
    partitions were made and dropped. Safe to run again, and from several processes."""
    done: dict[str, tuple[int, int]] = {}
    for policy in policies:
        plan = months_to_keep(policy, today)
        async with pool.connection() as conn:
            # Making or dropping a partition locks the whole table, and inserts queue
            # behind a lock that is waited for: give up rather than stall them (next hour).
            await conn.execute("SET LOCAL lock_timeout = '2s'")
            row = await (
                await conn.execute(
                    "SELECT create_month_partitions(%s, %s, %s)", (plan.table, plan.first_month, plan.last_month)
                )
            ).fetchone()
            made = int(row[0]) if row else 0
            dropped = 0
            if plan.drop_before is not None:
                row = await (
                    await conn.execute("SELECT drop_month_partitions(%s, %s)", (plan.table, plan.drop_before))
                ).fetchone()
                dropped = int(row[0]) if row else 0
        if made or dropped:
            log.info("partitions", extra={"table": plan.table, "made": made, "dropped": dropped})
        done[plan.table] = (made, dropped)
    return done
