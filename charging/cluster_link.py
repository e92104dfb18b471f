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
from urllib.parse import quote, unquote, urlparse

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
        return ClusterUrl(
            tuple(seeds), unquote(u.username or ""), unquote(u.password or ""), u.scheme == "rediss+cluster"
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
            candidates = list(dict.fromkeys([*self._primaries(), *self.url.seeds, *self._links]))
            last: Exception = redis_errors.ConnectionError("redis cluster: no node answers")
            for address in candidates:
                try:
                    reply = await self._link(address).execute("CLUSTER", "SLOTS")
                except redis_errors.RedisError as exc:
                    last = exc
                    continue
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

    async def _node_for(self, command: Sequence[Arg]) -> RedisLink:
        if self._stale:
            await self.refresh()
        key = first_key(command)
        address = self._owner[slot_of(key)] if key is not None else next(iter(self._primaries()), None)
        if address is None:
            raise redis_errors.ClusterDownError("CLUSTERDOWN no primary serves the slot")
        return self._link(address)

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
        """Each command to its slot's primary, one write per primary; each reply, or the
        error it was, in order. A redirected command is sent once more."""
        results: list[Any] = [None] * len(commands)
        groups: dict[RedisLink, list[int]] = {}
        for i, command in enumerate(commands):
            try:
                groups.setdefault(await self._node_for(command), []).append(i)
            except redis_errors.RedisError as exc:
                self._note(exc)
                results[i] = exc
        batches = [link.execute_many([commands[i] for i in idx]) for link, idx in groups.items()]
        for idx, replies in zip(groups.values(), await asyncio.gather(*batches), strict=True):
            for i, reply in zip(idx, replies, strict=True):
                results[i] = reply
        for i, result in enumerate(results):
            self._note(result)
            if isinstance(result, (redis_errors.MovedError, redis_errors.AskError, redis_errors.TryAgainError)):
                results[i] = await self._redirected(commands[i], result)
        return results

    async def _redirected(self, command: Sequence[Arg], error: redis_errors.ResponseError) -> Any:
        """The reply of a command sent once more after a redirection (it did not run)."""
        try:
            if isinstance(error, redis_errors.AskError):
                asking, reply = await self._link((error.host, error.port)).execute_many([("ASKING",), command])
                return asking if isinstance(asking, Exception) else reply
            await self.refresh()
            if isinstance(error, redis_errors.MovedError):
                self._owner[error.slot_id] = (error.host, error.port)
            reply = (await (await self._node_for(command)).execute_many([command]))[0]
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
