"""The pipelined hot-path link on a Redis Cluster.

``CHARGING_REDIS_URL=redis+cluster://[user:password@]host1:port1,host2:port2/`` names a
cluster by some of its nodes (seeds; ``rediss+cluster://`` for TLS). ``ClusterUrl``
parses it for both clients: the pooled redis-py ``RedisCluster`` (``store.connect``) and
``ClusterLink`` here.

``ClusterLink`` answers like ``RedisLink`` (``execute``, ``execute_many``, ``evalsha``,
``script_load``) and keeps one ``RedisLink`` (one pipelined socket) per primary. Each
command goes to the primary serving the slot of its first key: for EVALSHA the first of
KEYS (every script's keys share one slot by design: the account's hash tag, ``keys.py``).
The slot map comes from CLUSTER SLOTS, asked of any node that answers.

Redirections and failures, all of them replies of commands that did not run:

* MOVED: the map is stale (a failover, a resharding). It is read again and the command
  sent once more to the node named; a second redirection is an error.
* ASK: a slot in migration; ASKING and the command go once to the node named.
* TRYAGAIN (a multi-key command during a migration): sent once more after the map is
  read again; a second TRYAGAIN surfaces as ``TryAgainError``, which is UNAVAILABLE.

A lost connection or a timeout surfaces as it does on ``RedisLink`` (never retried here:
the command may have run) and marks the map stale, as CLUSTERDOWN does; both are
UNAVAILABLE (``store.unavailable``) until a node answers again with a map whose primary
for the slot takes connections. Each ``RedisLink`` keeps its own reply-ordering
guarantees (see its docstring): this module never shares a socket between nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlparse

from redis import exceptions as redis_errors
from redis.crc import key_slot

from charging.redis_link import Arg, RedisLink, RedisTls

SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
SLOTS = 16384
Address = tuple[str, int]


@dataclass(frozen=True)
class ClusterUrl:
    """A cluster named by seed nodes, with the credentials every node takes."""

    seeds: tuple[Address, ...]
    username: str = ""
    password: str = ""
    tls: bool = False
    # ``?wait=N``: a write is answered only once N replicas have it (WAIT), else UNAVAILABLE.
    wait_replicas: int = 0
    wait_ms: int = 500

    @staticmethod
    def parse(url: str) -> ClusterUrl | None:
        """The cluster ``url`` names, or None for a single server's URL."""
        u = urlparse(url)
        if u.scheme not in SCHEMES:
            return None
        netloc = u.netloc.rsplit("@", 1)
        hosts = netloc[-1]
        seeds = []
        for part in hosts.split(","):
            host, _, port = part.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError("CHARGING_REDIS_URL: a cluster seed is host:port")
            seeds.append((host.strip("[]"), int(port)))
        query = parse_qs(u.query)
        wait, wait_ms = query.get("wait", ["0"])[0], query.get("wait_ms", ["500"])[0]
        if not wait.isdigit() or not wait_ms.isdigit():
            raise ValueError("CHARGING_REDIS_URL: wait and wait_ms are whole numbers")
        return ClusterUrl(
            tuple(seeds),
            unquote(u.username or ""),
            unquote(u.password or ""),
            u.scheme == "rediss+cluster",
            int(wait),
            int(wait_ms),
        )

    def node_url(self, address: Address) -> str:
        """The single-node URL of one of the cluster's nodes."""
        scheme = "rediss" if self.tls else "redis"
        auth = ""
        if self.password:
            auth = f"{quote(self.username, safe='')}:{quote(self.password, safe='')}@"
        return f"{scheme}://{auth}{address[0]}:{address[1]}"


def first_key(command: Sequence[Arg]) -> Arg | None:
    """The key a command is routed by: the first of KEYS for EVAL/EVALSHA, else the
    first argument; None for a command without keys."""
    name = str(command[0]).upper()
    if name in ("EVALSHA", "EVAL", "EVALSHA_RO", "EVAL_RO"):
        return command[3] if int(command[2]) > 0 else None
    if name in ("SCRIPT", "PING", "ASKING", "CLUSTER", "INFO"):
        return None
    return command[1] if len(command) > 1 else None


def slot_of(key: Arg) -> int:
    raw = key if isinstance(key, bytes) else str(key).encode()
    return int(key_slot(raw))


class ClusterLink:
    def __init__(self, url: ClusterUrl, *, timeout_s: float = 5.0, tls: RedisTls | None = None) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.tls = tls or RedisTls()
        self._owner: list[Address | None] = [None] * SLOTS
        self._links: dict[Address, RedisLink] = {}
        self._stale = True
        self._refreshing: asyncio.Lock | None = None
        self._queued: dict[Address, list[tuple[Sequence[Arg], asyncio.Future[Any]]]] = {}
        self._sending: set[asyncio.Future[None]] = set()
        self._silent: set[Address] = set()  # nodes that did not answer CLUSTER SLOTS

    def _link(self, address: Address) -> RedisLink:
        link = self._links.get(address)
        if link is None:
            link = self._links[address] = RedisLink(self.url.node_url(address), timeout_s=self.timeout_s, tls=self.tls)
        return link

    async def refresh(self) -> None:
        """Read the slot map from the first node that answers CLUSTER SLOTS."""
        if self._refreshing is None:
            self._refreshing = asyncio.Lock()
        async with self._refreshing:
            if not self._stale:
                return
            known = dict.fromkeys([*self._primaries(), *self.url.seeds, *self._links])
            # Nodes that failed last are asked last: a dead host may take the whole timeout.
            candidates = sorted(known, key=lambda a: a in self._silent)
            last: Exception = redis_errors.ConnectionError("redis cluster: no node answers")
            for address in candidates:
                try:
                    reply = await self._link(address).execute("CLUSTER", "SLOTS")
                except redis_errors.RedisError as exc:
                    self._silent.add(address)
                    last = exc
                    continue
                self._silent.discard(address)
                owner: list[Address | None] = [None] * SLOTS
                for start, end, primary, *_replicas in reply:
                    host = str(primary[0]) or address[0]
                    for slot in range(int(start), int(end) + 1):
                        owner[slot] = (host, int(primary[1]))
                self._owner, self._stale = owner, False
                return
            raise last

    def _primaries(self) -> list[Address]:
        return [a for a in dict.fromkeys(self._owner) if a is not None]

    async def _address_for(self, command: Sequence[Arg]) -> Address:
        if self._stale:
            await self.refresh()
        key = first_key(command)
        address = self._owner[slot_of(key)] if key is not None else next(iter(self._primaries()), None)
        if address is None:
            raise redis_errors.ClusterDownError("CLUSTERDOWN no primary serves the slot")
        return address

    def _note(self, result: Any) -> None:
        """A reply that says the map is wrong or the node gone marks it stale."""
        if isinstance(result, (redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.ClusterDownError)):
            self._stale = True
        elif isinstance(result, (redis_errors.MovedError, redis_errors.TryAgainError)):
            self._stale = True

    async def execute(self, *args: Arg) -> Any:
        (result,) = await self.execute_many([args])
        if isinstance(result, Exception):
            raise result
        return result

    async def execute_many(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Each command to its slot's primary; each reply, or the error it was, in order.
        A redirected command is sent once more."""
        loop = asyncio.get_running_loop()
        waiting: list[asyncio.Future[Any]] = []
        for command in commands:
            fut: asyncio.Future[Any] = loop.create_future()
            try:
                self._enqueue(await self._address_for(command), command, fut)
            except redis_errors.RedisError as exc:
                fut.set_result(exc)
            waiting.append(fut)
        results = list(await asyncio.gather(*waiting))
        for i, result in enumerate(results):
            self._note(result)
            if isinstance(result, (redis_errors.MovedError, redis_errors.AskError, redis_errors.TryAgainError)):
                results[i] = await self._redirected(commands[i], result)
        return results

    def _enqueue(self, address: Address, command: Sequence[Arg], fut: asyncio.Future[Any]) -> None:
        """Commands for one primary queued in one event-loop turn go in one batch."""
        queue = self._queued.get(address)
        if queue is None:
            queue = self._queued[address] = []
            asyncio.get_running_loop().call_soon(self._flush, address)
        queue.append((command, fut))

    def _flush(self, address: Address) -> None:
        batch = self._queued.pop(address, [])
        task = asyncio.ensure_future(self._send(address, batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, address: Address, batch: list[tuple[Sequence[Arg], asyncio.Future[Any]]]) -> None:
        """One batch to one primary; with ``wait`` it ends in WAIT, and a batch whose
        writes no replica confirmed in time is answered UNAVAILABLE (the client retries;
        the scripts are idempotent, so a write that did land is answered as a replay)."""
        commands = [command for command, _ in batch]
        wait = self.url.wait_replicas
        if wait:
            commands.append(("WAIT", wait, self.url.wait_ms))
        replies: list[Any]
        try:
            replies = await self._link(address).execute_many(commands)
        except redis_errors.RedisError as exc:
            replies = [exc] * len(commands)
        if wait:
            acked = replies.pop()
            if isinstance(acked, Exception) or int(acked) < wait:
                unconfirmed = redis_errors.TimeoutError("no replica confirmed the write in time")
                replies = [r if isinstance(r, Exception) else unconfirmed for r in replies]
        for (_, fut), reply in zip(batch, replies, strict=True):
            if not fut.done():
                fut.set_result(reply)

    async def _redirected(self, command: Sequence[Arg], error: redis_errors.ResponseError) -> Any:
        """The reply of a command sent once more after a redirection (it did not run)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        try:
            if isinstance(error, redis_errors.AskError):
                # ASKING holds for the next command on the connection: both in one batch.
                self._enqueue((error.host, error.port), ("ASKING",), loop.create_future())
                self._enqueue((error.host, error.port), command, fut)
            else:
                await self.refresh()
                if isinstance(error, redis_errors.MovedError):
                    self._owner[error.slot_id] = (error.host, error.port)
                self._enqueue(await self._address_for(command), command, fut)
            reply = await fut
        except redis_errors.RedisError as exc:
            reply = exc
        self._note(reply)
        return reply

    async def evalsha(self, sha: str, numkeys: int, *args: Arg) -> Any:
        return await self.execute("EVALSHA", sha, numkeys, *args)

    async def script_load(self, source: str) -> Any:
        """Load a script on every primary (a script runs where its keys are)."""
        if self._stale:
            await self.refresh()
        replies = await asyncio.gather(
            *(self._link(a).execute("SCRIPT", "LOAD", source) for a in self._primaries()), return_exceptions=True
        )
        for reply in replies:
            self._note(reply)
            if isinstance(reply, Exception):
                raise reply
        return replies[0]

    def close(self) -> None:
        for link in self._links.values():
            link.close()

    async def aclose(self) -> None:
        for link in list(self._links.values()):
            with contextlib.suppress(redis_errors.RedisError):
                await link.aclose()
