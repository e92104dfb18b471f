"""Rename the CRM's and the provisioning worker's keys of before the ``{crm}`` hash tag.

A single server upgraded from untagged names (``crm:customer:7``, ``prov:due``) gets
them renamed once at start (``{crm}:customer:7``, ``{crm}:prov:due``); a marker key then
saves the scan on later starts. A cluster never had them (untagged CRM keys could not
run there: its transactions join keys of many slots), so nothing is done on one.
RENAMENX never overwrites a tagged key, so an interrupted rename is finished by the next
start and a key written under both names keeps the tagged one. Processes starting
together may rename side by side (the server runs this before the ``upgrade-moves``
lease of ``charging/upgrade.py``, which runs it again: the CRM's salt is read in between):
a key another process renamed meanwhile is skipped.
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from charging.store import storage_errors
from provisioning import keys

log = logging.getLogger("provisioning.untagged")

ADOPTED = keys.TAG + ":adopted"  # string: the untagged keys have been renamed


def tagged(old: str) -> str:
    """The name under the tag of an untagged key: ``crm:x`` -> ``{crm}:x``, ``prov:x`` ->
    ``{crm}:prov:x``."""
    if old.startswith("crm:"):
        return keys.TAG + old[len("crm") :]
    return keys.TAG + ":" + old


async def adopt_untagged(client: aioredis.Redis) -> int:
    """Rename every untagged CRM and provisioning key once; answers how many were renamed."""
    if isinstance(client, RedisCluster):
        return 0
    renamed = 0
    with storage_errors():
        if await client.exists(ADOPTED):
            return 0
        for pattern in keys.UNTAGGED:
            async for old in client.scan_iter(match=pattern, count=1000):
                try:
                    renamed += int(await client.renamenx(old, tagged(str(old))))
                except ResponseError as exc:  # "no such key": renamed by another process meanwhile
                    if "no such key" not in str(exc):
                        raise
        await client.set(ADOPTED, "1")
    if renamed:
        log.info("CRM keys renamed under the {crm} hash tag", extra={"keys": renamed})
    return renamed
