"""Waiting for Redis at start-up.

A Redis that was just (re)started refuses connections for a moment, then answers
LOADING for as long as it reads its dataset (minutes for a large one); one running a
long script answers BUSY. Start-up waits for it to answer, within a bound, and logs
what it waits for; an error that waiting cannot mend (a wrong password, a script bug)
fails at once.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from charging.errors import StartupError
from charging.store import unavailable

log = logging.getLogger("charging.redis")


async def wait_until_ready(
    client: aioredis.Redis,
    name: str,
    timeout_s: float,
    *,
    check: Callable[[], None] | None = None,
    poll_s: float = 0.05,
) -> None:
    """Return once ``client`` gets an answer to PING. ``name`` says which Redis in logs
    and errors; ``check`` runs before every attempt and raises to give up early (the
    embedded redis-server exited). Raises ``StartupError`` after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    deadline = began + timeout_s
    said = ""
    while True:
        if check is not None:
            check()
        try:
            await client.ping()
            if said:
                log.info("redis is ready", extra={"redis": name})
            return
        except (redis_errors.AuthenticationError, redis_errors.AuthorizationError) as exc:
            raise StartupError(f"{name} refuses the credentials: {exc}") from None
        except redis_errors.RedisError as exc:
            if (cause := _certificate_refused(exc)) is not None:
                raise StartupError(f"{name} presents a certificate that does not verify: {cause}") from None
            reason = unavailable(exc)
            if not reason:
                raise
        except OSError:
            reason = "not reachable"
        # A redis-server just started takes a moment to listen: not worth a line.
        if reason != said and (reason != "not reachable" or loop.time() - began >= 1.0):
            said = reason
            log.info("waiting for redis", extra={"redis": name, "reason": reason, "timeout_s": timeout_s})
        if loop.time() >= deadline:
            raise StartupError(f"{name} is still {reason} after {timeout_s:g} s (CHARGING_REDIS_READY_TIMEOUT_S)")
        await asyncio.sleep(poll_s)


def _certificate_refused(exc: BaseException) -> str | None:
    """Why the server's TLS certificate was refused, if that is what failed: waiting does
    not mend it (a wrong CA file, a certificate for another host name)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return str(seen.verify_message or seen)
        seen = seen.__cause__ or seen.__context__
    return None
