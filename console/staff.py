"""Staff accounts of the console: a name, roles and a scrypt password hash, kept in Redis.

A password is never stored nor logged: only ``scrypt$<n>$<r>$<p>$<salt>$<hash>``
(base64, a 16-byte random salt, n=2^14, r=8, p=1: about 16 MiB and tens of ms a try).
A disabled member cannot sign in, and the sessions it had end at once.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from charging.errors import Conflict, InvalidRequest, NotFound
from console import keys
from console.access import STAFF_ROLES

NAME = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MIN_PASSWORD = 12
# Guessing passwords: after this many failed sign-ins for a name, the name is refused
# (even with the right password) until the window has passed since the last failure.
FAILURES_ALLOWED, LOCKOUT_S = 5, 900


def hash_password(password: str, *, n: int = SCRYPT_N, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored``, compared in constant time."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


# Checked against when the name is unknown, so a wrong name costs as long as a wrong password.
_DUMMY = hash_password(secrets.token_hex(8))


def check_roles(roles: Iterable[str]) -> frozenset[str]:
    chosen = frozenset(roles)
    if not chosen:
        raise InvalidRequest("role", "at least one of " + ", ".join(STAFF_ROLES))
    unknown = chosen - set(STAFF_ROLES)
    if unknown:
        raise InvalidRequest("role", f"{', '.join(sorted(unknown))}: not one of " + ", ".join(STAFF_ROLES))
    return chosen


@dataclass(frozen=True)
class Staff:
    name: str
    roles: frozenset[str]
    disabled: bool = False
    created_s: int = 0

    @classmethod
    def from_redis(cls, name: str, h: Mapping[str, str]) -> Staff:
        return cls(
            name=name,
            roles=frozenset(r for r in h.get("roles", "").split(",") if r),
            disabled=h.get("disabled") == "1",
            created_s=int(h.get("created", 0)),
        )


class StaffBook:
    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    async def add(self, name: str, password: str, roles: Iterable[str], now_s: int) -> Staff:
        if not NAME.match(name):
            raise InvalidRequest(
                "name", "must be 1-64 lowercase letters, digits, '.', '_' or '-', starting with a letter"
            )
        if len(password) < MIN_PASSWORD:
            raise InvalidRequest("password", f"must be at least {MIN_PASSWORD} characters")
        chosen = check_roles(roles)
        record: dict[Any, Any] = {
            "roles": ",".join(sorted(chosen)),
            "password": await asyncio.to_thread(hash_password, password),
            "created": now_s,
        }
        if not await self.client.hsetnx(keys.staff(name), "created", now_s):
            raise Conflict(f"staff member {name} exists already")
        await self.client.hset(keys.staff(name), mapping=record)
        await self.client.sadd(keys.STAFF, name)
        return Staff(name, chosen, False, now_s)

    async def get(self, name: str) -> Staff | None:
        h = await self.client.hgetall(keys.staff(name))
        return Staff.from_redis(name, _text(h)) if h else None

    async def list(self) -> list[Staff]:
        names = sorted(str(n) for n in await self.client.smembers(keys.STAFF))
        found = [await self.get(n) for n in names]
        return [s for s in found if s is not None]

    async def any(self) -> bool:
        return bool(await self.client.scard(keys.STAFF))

    async def disable(self, name: str) -> None:
        if not await self.client.exists(keys.staff(name)):
            raise NotFound(f"no staff member {name}")
        sessions = [str(s) for s in await self.client.smembers(keys.staff_sessions(name))]
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(keys.staff(name), "disabled", "1")
            for session_id in sessions:
                pipe.delete(keys.session(session_id))
            pipe.delete(keys.staff_sessions(name))
            await pipe.execute()

    async def authenticate(self, name: str, password: str) -> Staff | None:
        """The staff member, when the name and password match, it is not disabled and
        the name is not locked out after ``FAILURES_ALLOWED`` failures."""
        h = _text(await self.client.hgetall(keys.staff(name))) if NAME.match(name) else {}
        failures = int(await self.client.get(keys.sign_in_failures(name)) or 0) if h else 0
        # scrypt takes tens of ms: off the event loop
        ok = await asyncio.to_thread(verify_password, password, h.get("password", _DUMMY))
        if not h:
            return None
        if not ok or failures >= FAILURES_ALLOWED:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.incr(keys.sign_in_failures(name))
                pipe.expire(keys.sign_in_failures(name), LOCKOUT_S)
                await pipe.execute()
            return None
        await self.client.delete(keys.sign_in_failures(name))
        staff = Staff.from_redis(name, h)
        return None if staff.disabled else staff


def _text(h: Mapping[Any, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in h.items()}
