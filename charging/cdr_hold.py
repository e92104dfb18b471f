"""How long the relay holds a usage record back, so that PostgreSQL never knows of a write
that Redis can still lose.

A charging script's reply is sent after Redis appended the write to its AOF, but the AOF
reaches the disk according to ``appendfsync``: ``always`` before the reply, ``everysec``
within about a second (Redis postpones a late fsync by up to one more second: a machine
that dies loses at most about two seconds of writes), ``no`` when the kernel decides.
If the relay copied a record into PostgreSQL before its write reached Redis's disk, a
machine death would leave the system of record holding usage that no balance shows.

The relay therefore only relays records that were already in Redis ``hold`` earlier
(``cdr_relay.py``: it marks the last record it read and relays up to that mark once the
hold has passed). Redis 7.2's ``WAITAOF`` would make this exact; the Redis of Debian 12 is
7.0, so a hold it is. Pure rules here; the probe of the Redis in use is at the edge.
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

log = logging.getLogger("charging.cdr_hold")

# everysec: the fsync every second, one more second Redis may postpone a slow one, and
# half a second of margin for the relay's own clock and scheduling.
EVERYSEC_HOLD_MS = 2500


def hold_ms(appendonly: str, appendfsync: str) -> int:
    """The hold for a Redis with these settings (``CONFIG GET`` values).

    ``always``: 0, the write is on disk before the reply. ``everysec``: 2.5 s. ``no`` or no
    AOF at all: 0, because nothing bounds when such writes reach the disk (the kernel's
    writeback, snapshots minutes apart): no hold could close the gap, and a machine death
    there loses far more than the records (set ``CHARGING_CDR_HOLD_MS`` to hold anyway)."""
    if appendonly != "yes" or appendfsync != "everysec":
        return 0
    return EVERYSEC_HOLD_MS


async def probe_hold(client: aioredis.Redis, fallback_appendfsync: str) -> int:
    """The hold for the Redis behind ``client``: from its own configuration, or, where
    ``CONFIG`` is refused (a managed Redis, an ACL), from ``CHARGING_REDIS_APPENDFSYNC``."""
    try:
        found = dict(await client.config_get("append*"))
    except (redis_errors.ResponseError, redis_errors.NoPermissionError) as exc:
        log.warning("CONFIG GET refused; the record hold follows CHARGING_REDIS_APPENDFSYNC", extra={"error": str(exc)})
        found = {}
    appendonly, appendfsync = found.get("appendonly"), found.get("appendfsync")
    if not isinstance(appendonly, str) or not isinstance(appendfsync, str):
        appendonly, appendfsync = "yes", fallback_appendfsync  # refused, or a cluster client's answer per node
    hold = hold_ms(appendonly, appendfsync)
    if appendonly != "yes" or appendfsync == "no":
        log.warning(
            "Redis does not bound what a machine death loses (appendonly %s, appendfsync %s): usage records are "
            "relayed with no hold",
            appendonly,
            appendfsync,
        )
    return hold
