"""The provisioning worker: level-triggered reconciliation of each line's desired network
state with the state the network has acknowledged.

Per line, Redis keeps ``prov:line:ID`` (desired state and product, a desired version
that grows with every change, the acknowledged state and version, attempts, last
error) and ``prov:due`` (line -> when to look next). A change of desired state bumps the
version, makes the line due now and adds an entry to the ``prov:changes`` stream, which
only wakes the worker early: the worker works from the due index, so a lost wake-up or a
restart loses nothing. For a line whose acknowledged version is behind, the worker sends
the command that leads from the acknowledged state to the desired one, with the id
``<line>:<version>``; the network applies an id once, so a worker killed in the middle of
a command sends it again after restart without repeating a visible change. Failures are
retried with exponential backoff; after ``max_attempts`` the line goes to the
dead-letter list ``prov:dead`` and ``provisioning_dead_letters_total`` alerts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.asyncio.client import Pipeline

from charging.clock import Clock
from charging.jobs import stop_if_cancelled
from provisioning import keys
from provisioning.network import NetworkAdapter, NetworkError, NetworkRejected

log = logging.getLogger("provisioning.worker")

COMMANDS = Counter(
    "provisioning_commands_total", "Commands sent to the network, by command and outcome.", ["command", "outcome"]
)
DEAD_LETTERS = Counter("provisioning_dead_letters_total", "Lines given up on after repeated failures (alert on this).")

# (acknowledged state, desired state) -> command
COMMAND_FOR = {
    ("none", "active"): "ACTIVATE",
    ("active", "barred_outgoing"): "BAR_OUTGOING",
    ("active", "suspended"): "SUSPEND",
    ("barred_outgoing", "suspended"): "SUSPEND",
    ("barred_outgoing", "active"): "RESUME",
    ("suspended", "active"): "RESUME",
    ("suspended", "barred_outgoing"): "RESUME",
}


def command_between(acked: str, desired: str) -> str | None:
    """The command that moves a line from what the network has to what is wanted."""
    if desired == "terminated":
        return "TERMINATE" if acked not in ("none", "terminated") else None
    if acked == desired:
        return None
    return COMMAND_FOR.get((acked, desired))


@dataclass(frozen=True)
class Backoff:
    first_s: int = 1
    max_s: int = 300
    max_attempts: int = 8

    def delay_s(self, attempts: int) -> int:
        return int(min(self.first_s * (1 << max(attempts - 1, 0)), self.max_s))


class ProvisioningWorker:
    def __init__(
        self, client: aioredis.Redis, network: NetworkAdapter, clock: Clock, backoff: Backoff = Backoff()
    ) -> None:
        self.client = client
        self.network = network
        self.clock = clock
        self.backoff = backoff
        # Told (line, state, product) after the network acknowledged them.
        self.on_ack: Callable[[str, str, str], Awaitable[None]] | None = None

    async def desire(self, line: str, state: str, product: str = "") -> int:
        """Record the state the line should have on the network; returns its version."""
        pipe = self.client.pipeline(transaction=True)
        self.desire_in(pipe, line, state, product)
        results = await pipe.execute()
        return int(str(results[3]))

    def desire_in(self, pipe: Pipeline, line: str, state: str, product: str = "") -> None:
        """``desire`` as part of a caller's transaction (the order that asks for it)."""
        pipe.hset(keys.network_line(line), mapping={"desired": state, "product": product, "attempts": 0})
        pipe.hsetnx(keys.network_line(line), "acked", "none")
        pipe.hsetnx(keys.network_line(line), "acked_version", 0)
        pipe.hsetnx(keys.network_line(line), "followed_version", 0)
        pipe.hincrby(keys.network_line(line), "version", 1)
        pipe.zadd(keys.DUE, {line: self.clock.now_ms()})
        pipe.xadd(keys.CHANGES, {"line": line}, maxlen=100_000, approximate=True)

    async def reconcile_once(self, limit: int = 100) -> int:
        """Work on the lines due now; returns how many were acknowledged."""
        now = self.clock.now_ms()
        done = 0
        for line in await self.client.zrangebyscore(keys.DUE, "-inf", now, start=0, num=limit):
            done += await self._reconcile(str(line), now)
        return done

    async def _reconcile(self, line: str, now: int) -> int:
        h = {str(k): str(v) for k, v in (await self.client.hgetall(keys.network_line(line))).items()}
        version, acked_version = int(h.get("version", 0)), int(h.get("acked_version", 0))
        # An acknowledgement recorded but not yet acted on (on_ack failed) comes first.
        followed = int(h.get("followed_version", acked_version))
        if self.on_ack is not None and acked_version > followed:
            if not await self._follow(line, h, now, h.get("acked", "none"), h.get("acked_product", ""), acked_version):
                return 0
        acked, desired = h.get("acked", "none"), h.get("desired", "none")
        product = h.get("product", "")
        command = command_between(acked, desired)
        if command is None and acked == desired not in ("none", "terminated") and product != h.get("acked_product", ""):
            command = "CHANGE_PRODUCT"
        if acked_version >= version or command is None:
            await self._settle(line, version, acked if command else desired, h.get("acked_product", ""))
            return 0
        try:
            ack = await self.network.send(line, command, f"{line}:{version}", product)
        except NetworkError as exc:
            COMMANDS.labels(command, "retry").inc()
            return await self._failed(line, h, now, str(exc), permanent=False)
        except NetworkRejected as exc:
            COMMANDS.labels(command, "rejected").inc()
            return await self._failed(line, h, now, str(exc), permanent=True)
        COMMANDS.labels(command, "acknowledged").inc()
        # What the network did is recorded first, whatever follows; acting on it (charging
        # status, the line, billing) is tracked apart ('followed_version') and retried
        # with backoff until it succeeds (on_ack is idempotent), or dead-lettered.
        # The line stays due until the acknowledgement has been acted on: a worker that dies
        # (or loses Redis) while acting on it leaves it for the next pass.
        await self._settle(line, version, ack.state, product, due=self.on_ack is not None)
        if self.on_ack is not None:
            if not await self._follow(line, h, now, ack.state, product, version):
                return 0
            await self._undue(line, version)
        return 1

    async def _follow(self, line: str, h: dict[str, str], now: int, state: str, product: str, version: int) -> bool:
        assert self.on_ack is not None
        try:
            await self.on_ack(line, state, product)
        except Exception as exc:
            log.exception("acting on an acknowledgement failed; retried with backoff")
            await self._failed(line, h, now, f"acting on the acknowledgement failed: {exc}", permanent=False)
            return False
        await self.client.hset(keys.network_line(line), "followed_version", version)
        return True

    async def _settle(self, line: str, version: int, state: str, product: str, *, due: bool = False) -> None:
        """Record what the network acknowledged; keep the line due if more was asked since
        (or, with ``due``, until the caller has acted on it: ``_undue``)."""
        await self.client.hset(
            keys.network_line(line),
            mapping={
                "acked": state,
                "acked_product": product,
                "acked_version": version,
                "attempts": 0,
                "last_error": "",
            },
        )
        if not due:
            await self._undue(line, version)

    async def _undue(self, line: str, version: int) -> None:
        """Off the due set, unless more was asked since ``version``."""
        current = int(await self.client.hget(keys.network_line(line), "version") or 0)
        if current <= version:
            await self.client.zrem(keys.DUE, line)

    async def _failed(self, line: str, h: dict[str, str], now: int, error: str, *, permanent: bool) -> int:
        attempts = int(h.get("attempts", 0)) + 1
        await self.client.hset(keys.network_line(line), mapping={"attempts": attempts, "last_error": error})
        if permanent or attempts >= self.backoff.max_attempts:
            await self.client.zrem(keys.DUE, line)
            await self.client.lpush(keys.DEAD, line)
            DEAD_LETTERS.inc()
            log.error("provisioning gave up on a line", extra={"attempts": attempts, "error": error})
        else:
            await self.client.zadd(keys.DUE, {line: now + self.backoff.delay_s(attempts) * 1000})
        return 0

    def changes(self) -> ChangeStream:
        """What wakes the ``provisioning`` job (its pass is ``reconcile_once``) early."""
        return ChangeStream(self.client, keys.CHANGES)


class ChangeStream:
    """A job's wake source (``charging.jobs.WakeSource``): an entry added to a stream.

    ``mark`` reads where the stream ends before each pass; ``wait`` reads from there. So
    a change added while the pass runs is after the mark and ends the wait at once. (The
    worker used to start reading at ``$`` after its first pass: a change made during that
    pass waited for the interval.)"""

    # A blocked XREAD must return before the client's socket timeout (5 s by default).
    MAX_BLOCK_S = 1.0

    def __init__(self, client: aioredis.Redis, stream: str) -> None:
        self.client = client
        self.stream = stream
        self._mark = "0-0"

    async def mark(self) -> None:
        last: Any = await self.client.xrevrange(self.stream, count=1)
        self._mark = str(last[0][0]) if last else "0-0"

    async def wait(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (left := deadline - loop.time()) > 0:
            # BLOCK 0 would wait for ever: at least 1 ms.
            block_ms = max(int(min(left, self.MAX_BLOCK_S) * 1000), 1)
            if await self.client.xread({self.stream: self._mark}, count=1, block=block_ms):
                return
            stop_if_cancelled()  # a cancellation redis-py lost must not wait out the interval
