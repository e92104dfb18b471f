"""Bearer tokens for callers that cannot present a client certificate (a web shop, a CRM).

A token is 256 random bits (``secrets.token_urlsafe(32)``, prefixed ``chg_``), shown once
when it is created and stored only as its SHA-256: a slow password hash buys nothing for
a secret nobody can guess, and a fast one keeps a lookup per call cheap. Whoever reads
Redis learns which tokens exist, not how to present one. Revoking deletes the record;
the next call with the token is UNAUTHENTICATED (no cache).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass

import redis.asyncio as aioredis

from charging.errors import Conflict, InvalidRequest, NotFound
from charging.security import keys
from charging.security.identity import Identity
from charging.security.roles import ROLES
from charging.store import storage_errors

PREFIX = "chg_"
CHANNELS = ("RETAIL", "BANK", "VOUCHER", "APP", "USSD", "OPERATOR")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenRecord:
    name: str
    roles: tuple[str, ...]
    channels: tuple[str, ...]
    created_s: int

    def to_redis(self) -> str:
        return json.dumps(
            {"name": self.name, "roles": list(self.roles), "channels": list(self.channels), "created": self.created_s}
        )

    @staticmethod
    def from_redis(raw: str | bytes) -> TokenRecord:
        d = json.loads(raw)
        return TokenRecord(str(d["name"]), tuple(d["roles"]), tuple(d["channels"]), int(d["created"]))

    def identity(self) -> Identity:
        return Identity("token:" + self.name, frozenset(self.roles), frozenset(self.channels))


def check(name: str, roles: tuple[str, ...], channels: tuple[str, ...]) -> None:
    """``InvalidRequest`` naming the first bad field of a new token."""
    if not _NAME.match(name):
        raise InvalidRequest("name", "1-64 letters, digits, '.', '_' or '-'")
    if not roles:
        raise InvalidRequest("role", "at least one")
    for role in roles:
        if role not in ROLES:
            raise InvalidRequest("role", f"{role!r} is not one of {', '.join(ROLES)}")
    for channel in channels:
        if channel not in CHANNELS:
            raise InvalidRequest("channel", f"{channel!r} is not one of {', '.join(CHANNELS)}")
    if "channel" in roles and not channels:
        raise InvalidRequest("channel", "is required with the channel role")


class TokenStore:
    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    async def create(self, name: str, roles: tuple[str, ...], channels: tuple[str, ...], now_s: int) -> str:
        """A new token for ``name``; the only time the token itself is seen."""
        check(name, roles, channels)
        token = PREFIX + secrets.token_urlsafe(32)
        record = TokenRecord(name, roles, channels, now_s)
        with storage_errors():
            async with self.client.pipeline(transaction=True) as pipe:
                await pipe.watch(keys.TOKEN_NAMES)
                if await pipe.hexists(keys.TOKEN_NAMES, name):
                    raise Conflict(f"a token named {name} exists: revoke it first")
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.hset(keys.TOKEN_NAMES, name, digest(token))
                pipe.hset(keys.TOKENS, digest(token), record.to_redis())
                await pipe.execute()
        return token

    async def list(self) -> list[TokenRecord]:
        with storage_errors():
            raw = await self.client.hvals(keys.TOKENS)
        return sorted((TokenRecord.from_redis(str(r)) for r in raw), key=lambda t: t.name)

    async def revoke(self, name: str) -> None:
        with storage_errors():
            async with self.client.pipeline(transaction=True) as pipe:
                await pipe.watch(keys.TOKEN_NAMES)
                hashed = await pipe.hget(keys.TOKEN_NAMES, name)
                if hashed is None:
                    raise NotFound(f"no token named {name}")
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.hdel(keys.TOKEN_NAMES, name)
                pipe.hdel(keys.TOKENS, hashed)
                await pipe.execute()

    async def identify(self, token: str) -> Identity | None:
        """The identity of a presented token, or None (unknown or revoked)."""
        if not token.startswith(PREFIX) or len(token) > 128:
            return None
        with storage_errors():
            raw = await self.client.hget(keys.TOKENS, digest(token))
        return None if raw is None else TokenRecord.from_redis(str(raw)).identity()
