"""Leases: one holder of each background job among all processes and hosts.

Several processes (the workers of one server, servers on several hosts) share one Redis
and run the same background jobs. Each job that scans a shared index (the sweeper, the
renewer, billing, provisioning, ...) runs under a lease, ``lease:{<job>}`` (``keys.lease``;
a job whose index is sharded takes one lease per shard), so one process runs its passes:

* taken with ``SET key token NX PX ttl``; the token names the holder (host, pid and a
  random part), so a lease is never mistaken for another holder's;
* kept by a task renewing it every third of the lease period with a compare-and-extend
  (``lease.lua`` OP extend), and given back with a compare-and-delete (OP release) when
  the process stops;
* taken over by another process within one lease period after its holder dies or hangs:
  the renewals stop, the key expires, and every process that does not hold the lease
  tries to take it at least once per lease period (``Job`` waits ``retry_s``).

The lease is an optimisation, not the guarantee: a holder paused past its lease (a long
GC, a stalled host) may finish a pass while the next holder starts one. Every pass is
built from idempotent scripts (the sweeper releases only what is still due, a bill run
never issues twice, provisioning commands carry ids), so two passes at once waste work
and do not change the outcome. A holder counts its lease as lost when it could not renew
it before the lease period ran out (measured on this process's monotonic clock from
before the request was sent, so never later than Redis's own expiry).

``one_at_a_time`` is the same lease for work that must be done before a process goes on
(the start-time moves of an installation's old records, ``charging/upgrade.py``): each
process waits until the lease is free (its holder finished, or died and the lease
expired: within one lease period), or until ``done`` says another process finished it,
then runs the work under the lease itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis

from charging import keys, metrics
from charging.ledger import LuaScript
from charging.script_args import LeaseExtend, LeaseRelease
from charging.store import storage_errors

log = logging.getLogger("charging.leases")

LEASE = LuaScript("lease.lua")
WAIT_S = 0.05  # how often a process waiting for ``one_at_a_time`` looks at the lease and ``done``

T = TypeVar("T")


def holder_name() -> str:
    """This process among all hosts: host name, pid and a random part (a restarted
    process with a reused pid is another holder)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Lease:
    """The ``Gate`` of one leased job (``charging/jobs.py``)."""

    def __init__(self, client: aioredis.Redis, job: str, ttl_s: float, holder: str, shard: str = "") -> None:
        self._client = client
        self.job = job
        self.key = keys.lease(job, shard)
        self.ttl_ms = max(int(ttl_s * 1000), 10)
        self.token = holder
        # A process that does not hold the lease tries to take it this often.
        self.retry_s = self.ttl_ms / 1000 / 3
        self._valid_until = 0.0  # monotonic time until which the lease is surely ours
        self._keeper: asyncio.Task[None] | None = None

    @property
    def held(self) -> bool:
        return time.monotonic() < self._valid_until

    async def hold(self) -> bool:
        """Whether this process holds the lease, taking it when it is free."""
        if self.held:
            return True
        sent = time.monotonic()
        with storage_errors():
            taken = await self._client.set(self.key, self.token, nx=True, px=self.ttl_ms)
        if not taken:
            return False
        self._valid_until = sent + self.ttl_ms / 1000
        metrics.LEASES_TAKEN.labels(self.job).inc()
        log.info("lease taken", extra={"job": self.job})
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.ensure_future(self._keep())
            self._keeper.set_name(f"lease:{self.job}")
        return True

    async def _keep(self) -> None:
        """Renew every third of the lease period until the lease is lost or released."""
        while True:
            await asyncio.sleep(self.retry_s)
            sent = time.monotonic()
            try:
                with storage_errors():
                    kept = await LEASE(self._client, [self.key], LeaseExtend(self.token, self.ttl_ms))
            except Exception as exc:  # Redis away: keep trying until the period runs out
                if not self.held:
                    log.warning("lease lost: not renewed in time", extra={"job": self.job, "error": str(exc)[:200]})
                    return
                continue
            if not kept:
                self._valid_until = 0.0
                log.warning("lease lost to another holder", extra={"job": self.job})
                return
            self._valid_until = sent + self.ttl_ms / 1000

    async def release(self) -> None:
        """Stop renewing and give the lease back (another process takes it at once)."""
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
        if self._valid_until:
            self._valid_until = 0.0
            with storage_errors():
                await LEASE(self._client, [self.key], LeaseRelease(self.token))


class Leases:
    """The leases of one process: one holder name, one lease period."""

    def __init__(self, client: aioredis.Redis, ttl_s: float, holder: str | None = None) -> None:
        self._client = client
        self.ttl_s = ttl_s
        self.holder = holder or holder_name()

    def lease(self, job: str, shard: str = "") -> Lease:
        return Lease(self._client, job, self.ttl_s, self.holder, shard)


async def holder_of(client: aioredis.Redis, job: str, shard: str = "") -> str | None:
    """The token of the process holding a job's lease now, None when it is free."""
    with storage_errors():
        token = await client.get(keys.lease(job, shard))
    return None if token is None else str(token)


async def one_at_a_time(
    client: aioredis.Redis,
    job: str,
    ttl_s: float,
    work: Callable[[], Awaitable[T]],
    *,
    done: Callable[[], Awaitable[bool]] | None = None,
    holder: str | None = None,
    wait_s: float = WAIT_S,
) -> T | None:
    """``work`` run under the job's lease, one process at a time among all processes and
    hosts: a process waits while another holds the lease (renewed while it works; taken
    over within one lease period when its holder dies). None, without running ``work``,
    when ``done`` says it was done (looked at before each try and once the lease is held,
    as the holder before may have finished just then). Without ``done`` every process
    runs ``work`` in turn, which must then be a cheap no-op once done. ``work`` must be
    idempotent all the same: a holder paused past its lease may still be running it."""
    lease = Lease(client, job, ttl_s, holder or holder_name())
    waited = False
    while True:
        if done is not None and await done():
            return None
        if await lease.hold():
            break
        if not waited:
            waited = True
            log.info("waiting for another process's lease", extra={"job": job})
        await asyncio.sleep(wait_s)
    try:
        if done is not None and await done():
            return None
        return await work()
    finally:
        await lease.release()
