"""Console sessions: a random session id in a signed, secure, HTTP-only, SameSite=Strict
cookie; the session (who, and its CSRF token) in Redis, ending after ``IDLE_S`` without a
request or when its staff member is disabled.

The cookie is ``<session id>.<HMAC-SHA256 of it>``, keyed by the console secret: a cookie
not signed with it is refused before Redis is asked. The secret comes from
``CHARGING_CONSOLE_SECRET``, or the file ``CHARGING_CONSOLE_SECRET_FILE`` names, or a
development secret generated once into ``<redis_dir>/console.key``.

Before there is a session, the sign-in form is protected by a signed double-submit
token: the sign-in page sets ``console_login`` to ``<token>.<HMAC of "login" and it>``
(HTTP-only, SameSite=Strict) and puts the token in the form; a sign-in is tried only when
the form's token is the one the cookie signs. A page elsewhere can neither read the
cookie nor forge its signature, so it cannot sign a browser in to an account of its
choosing (login CSRF).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

from charging.errors import StartupError
from console import keys

log = logging.getLogger("console.sessions")

COOKIE = "console_session"
LOGIN_COOKIE = "console_login"
LOGIN_TOKEN_S = 3600
IDLE_S = 8 * 3600
DEV_SECRET_FILE = "console.key"


def load_secret(secret: str, secret_file: str, redis_dir: Path) -> bytes:
    if secret:
        return secret.encode()
    if secret_file:
        try:
            return Path(secret_file).read_bytes().strip()
        except OSError as exc:
            raise StartupError(f"CHARGING_CONSOLE_SECRET_FILE: cannot read {secret_file}: {exc.strerror}") from None
    redis_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = redis_dir / DEV_SECRET_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
        log.warning("generated a development console secret; set CHARGING_CONSOLE_SECRET in production")
    return path.read_bytes().strip()


def sign(secret: bytes, session_id: str) -> str:
    mac = hmac.new(secret, session_id.encode(), hashlib.sha256).digest()
    return f"{session_id}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"


def unsign(secret: bytes, cookie: str) -> str | None:
    """The session id of a cookie signed with ``secret``; None for any other."""
    session_id, _, _ = cookie.partition(".")
    return session_id if session_id and hmac.compare_digest(sign(secret, session_id), cookie) else None


def login_token() -> str:
    return secrets.token_urlsafe(24)


def sign_login(secret: bytes, token: str) -> str:
    """The sign-in form's cookie for ``token``: signed apart from session cookies."""
    mac = hmac.new(secret, b"login\x1f" + token.encode(), hashlib.sha256).digest()
    return f"{token}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"


def login_token_of(secret: bytes, cookie: str) -> str | None:
    """The token a sign-in cookie signed with ``secret`` carries; None for any other."""
    token, _, _ = cookie.partition(".")
    return token if token and hmac.compare_digest(sign_login(secret, token), cookie) else None


def login_form_matches(secret: bytes, cookie: str, submitted: str) -> bool:
    """The double submit: the form's token is the one the signed cookie carries."""
    token = login_token_of(secret, cookie)
    return token is not None and bool(submitted) and hmac.compare_digest(token, submitted)


@dataclass(frozen=True)
class Session:
    id: str
    staff: str
    csrf: str


class SessionStore:
    def __init__(self, client: aioredis.Redis, idle_s: int = IDLE_S) -> None:
        self.client = client
        self.idle_s = idle_s

    async def open(self, staff: str) -> Session:
        session = Session(secrets.token_urlsafe(24), staff, secrets.token_urlsafe(24))
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(keys.session(session.id), mapping={"staff": staff, "csrf": session.csrf})
            pipe.expire(keys.session(session.id), self.idle_s)
            pipe.sadd(keys.staff_sessions(staff), session.id)
            await pipe.execute()
        return session

    async def get(self, session_id: str) -> Session | None:
        """The session, its idle time restarted; None when it ended."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hgetall(keys.session(session_id))
            pipe.expire(keys.session(session_id), self.idle_s)
            h, _ = await pipe.execute()
        if not h:
            return None
        return Session(session_id, str(h["staff"]), str(h["csrf"]))

    async def close(self, session: Session) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(keys.session(session.id))
            pipe.srem(keys.staff_sessions(session.staff), session.id)
            await pipe.execute()
