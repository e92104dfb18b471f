"""A pipelined Redis connection for the charging hot path.

Every charging request is one script call. redis-py's pooled client spends more time
per call than Redis spends running the script (a pool checkout, locks and a timeout
task per command), so the ledger's hot calls go through this link instead: all
concurrent requests share one socket, their commands are written in one batch per
event-loop turn, and Redis's in-order replies resolve the waiting futures (parsed by
hiredis). Admin, sweeper and census calls stay on redis-py.

Failures surface as redis-py's exception classes, an error reply as the class redis-py's
own parser gives it (``NoScriptError``, ``BusyLoadingError`` for LOADING, which is a
``ConnectionError``, ``MasterDownError``, ...), so callers and ``store.storage_errors``
handle both clients alike. A command that gets no reply within ``timeout_s`` closes the
connection, failing every command in flight; the next command reconnects.

``rediss://`` means TLS with the server's certificate verified (against ``RedisTls``'s
CA file, else the system's CAs) and its host name checked; a certificate that does not
verify fails the connection, never falls back to clear text. ``RedisTls`` gives the
pooled client (``store.connect``) the same settings.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import hiredis
from redis import exceptions as redis_errors
from redis._parsers.base import BaseParser

Arg = str | int | bytes


def _reply_error(message: str) -> redis_errors.RedisError:
    error: redis_errors.RedisError = BaseParser.parse_error(message)  # type: ignore[no-untyped-call]
    return error


@dataclass(frozen=True)
class RedisTls:
    """How a ``rediss://`` connection verifies the server and presents itself."""

    ca_file: str = ""  # empty: the system's trusted CAs
    cert_file: str = ""  # a client certificate, for a server with tls-auth-clients
    key_file: str = ""

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file or None)  # CERT_REQUIRED, host name checked
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file or None)
        return ctx

    def pool_options(self, url: str) -> dict[str, Any]:
        """redis-py's options for ``url``: verification made explicit for ``rediss://``
        (whatever redis-py's defaults), nothing for other schemes."""
        if urlparse(url).scheme != "rediss":
            return {}
        return {
            "ssl_cert_reqs": "required",
            "ssl_check_hostname": True,
            "ssl_ca_certs": self.ca_file or None,
            "ssl_certfile": self.cert_file or None,
            "ssl_keyfile": self.key_file or None,
        }


class _Protocol(asyncio.Protocol):
    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self.reader = hiredis.Reader(encoding="utf-8", replyError=_reply_error)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        pending = self.link._pending
        while (reply := self.reader.gets()) is not False:
            fut = pending.popleft()[0]
            if not fut.done():
                # Not only ResponseError: LOADING parses to BusyLoadingError, a ConnectionError.
                if isinstance(reply, redis_errors.RedisError):
                    fut.set_exception(reply)
                else:
                    fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.link._lost(self, exc)


class RedisLink:
    def __init__(self, url: str, *, timeout_s: float = 5.0, tls: RedisTls | None = None) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.tls = tls or RedisTls()
        self._pending: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self._protocol: _Protocol | None = None
        self._buffer: list[bytes] = []
        self._connecting: asyncio.Lock | None = None
        self._watchdog: asyncio.Task[None] | None = None
        # The connection's loop, kept: asyncio.get_running_loop() costs a getpid() system
        # call per call on Python 3.11 (two per command on the hot path).
        self._loop: asyncio.AbstractEventLoop | None = None

    async def execute(self, *args: Arg) -> Any:
        """Send one command and wait for its reply."""
        if self._transport is None:
            await self._connect()
        fut: asyncio.Future[Any] = self._loop.create_future()  # type: ignore[union-attr]  # set with the transport
        self._send(hiredis.pack_command(args), fut)  # type: ignore[arg-type]
        return await fut

    async def execute_many(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Send several commands in one write; each reply, or the error it was, in order."""
        if self._transport is None:
            await self._connect()
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = []
        for command in commands:
            fut: asyncio.Future[Any] = loop.create_future()
            self._send(hiredis.pack_command(tuple(command)), fut)  # type: ignore[arg-type]
            futures.append(fut)
        return list(await asyncio.gather(*futures, return_exceptions=True))

    async def evalsha(self, sha: str, numkeys: int, *args: Arg) -> Any:
        return await self.execute("EVALSHA", sha, numkeys, *args)

    async def script_load(self, source: str) -> Any:
        return await self.execute("SCRIPT", "LOAD", source)

    def _send(self, packed: bytes, fut: asyncio.Future[Any]) -> None:
        if self._transport is None:
            # Never queue without a connection: a queued future would take the next
            # connection's first reply and shift every later one.
            fut.set_exception(redis_errors.ConnectionError("redis connection lost"))
            return
        if not self._buffer:
            fut.get_loop().call_soon(self._flush)
        self._buffer.append(packed)
        self._pending.append((fut, time.monotonic()))

    def _flush(self) -> None:
        data, self._buffer = b"".join(self._buffer), []
        if self._transport is not None and data:
            self._transport.write(data)

    async def _connect(self) -> None:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._transport is not None:
                return
            loop = asyncio.get_running_loop()
            u = urlparse(self.url)
            try:
                async with asyncio.timeout(self.timeout_s):
                    if u.scheme == "unix":
                        transport, protocol = await loop.create_unix_connection(lambda: _Protocol(self), u.path)
                    elif u.scheme == "rediss":
                        host = u.hostname or "127.0.0.1"
                        transport, protocol = await loop.create_connection(
                            lambda: _Protocol(self), host, u.port or 6379, ssl=self.tls.context(), server_hostname=host
                        )
                    elif u.scheme == "redis":
                        transport, protocol = await loop.create_connection(
                            lambda: _Protocol(self), u.hostname or "127.0.0.1", u.port or 6379
                        )
                    else:
                        raise ValueError(f"not a Redis URL scheme: {u.scheme}")
            except (OSError, TimeoutError) as exc:  # ssl.SSLError (a certificate that does not verify) is one
                raise redis_errors.ConnectionError(f"cannot connect to redis: {type(exc).__name__}") from None
            self._transport, self._protocol, self._loop = transport, protocol, loop  # type: ignore[assignment]
            handshake: list[list[Arg]] = []
            if u.password:
                user = [unquote(u.username)] if u.username else []
                handshake.append(["AUTH", *user, unquote(u.password)])
            db = parse_qs(u.query).get("db", ["0"])[0] if u.scheme == "unix" else u.path.lstrip("/")
            if db not in ("", "0"):
                handshake.append(["SELECT", db])
            for result in await self.execute_many(handshake):
                if isinstance(result, Exception):
                    self._abort(redis_errors.ConnectionError("redis handshake failed"))
                    raise redis_errors.ConnectionError(f"redis handshake failed: {result}")
            if self._transport is not transport:
                raise redis_errors.ConnectionError("redis connection lost during the handshake")
            if self._watchdog is None or self._watchdog.done():
                self._watchdog = asyncio.create_task(self._watch(), name="redis-link-watchdog")

    async def _watch(self) -> None:
        """Close a connection whose oldest command has waited longer than the timeout."""
        while self._transport is not None:
            await asyncio.sleep(min(1.0, self.timeout_s / 2))
            if self._pending and time.monotonic() - self._pending[0][1] > self.timeout_s:
                self._abort(redis_errors.TimeoutError("redis did not answer in time"))

    def _lost(self, protocol: _Protocol, exc: Exception | None) -> None:
        if protocol is self._protocol:
            self._transport = self._protocol = None
            self._fail_pending(redis_errors.ConnectionError("redis connection lost"))

    def _abort(self, error: Exception) -> None:
        transport = self._transport
        self._transport = self._protocol = None
        self._fail_pending(error)
        if transport is not None:
            transport.abort()

    def _fail_pending(self, error: Exception) -> None:
        # Unsent commands belong to the failed futures: never send them on a new connection.
        self._buffer = []
        while self._pending:
            fut = self._pending.popleft()[0]
            if not fut.done():
                fut.set_exception(error)

    def close(self) -> None:
        self._abort(redis_errors.ConnectionError("redis link closed"))
        if self._watchdog is not None:
            self._watchdog.cancel()

    async def aclose(self) -> None:
        self.close()
        if self._watchdog is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
