"""Versioned documents an operator loads (the catalog, the coverage table): each version
stored in Redis, one of them current for every server process.

    <name>:v:<version>   each document loaded, as canonical JSON; never changed once stored
    <name>:current       the version in force
    <name>:seq           the last version given out (numbered stores only)

Loading checks the whole document first (``parse`` raises naming what is wrong), so a bad
one changes nothing. A good one is stored, then ``current`` is moved to it: one SET that
every process sees at its next read, so each reads the old version or the new one, never
a mix, and ``current`` never names a version that is not stored yet.

A store's versions are either named by the document (the catalog's ``version`` field: the
same version may be loaded again only with the same content, else ``Conflict``) or
numbered by the store, 1, 2, 3 ... (the coverage table); concurrent loads of a numbered
store each get their own version and the highest one stays current.

Each step touches one key (the numbered pointer move is a WATCH on ``current`` alone), so
the same code runs on Redis Cluster. A parsed document is cached per version, since a
stored version never changes; reading what is current costs one GET.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from charging.errors import Conflict, NotFound
from charging.store import storage_errors

T = TypeVar("T")


def current_key(name: str) -> str:
    """The key naming the version in force of the store ``name``."""
    return f"{name}:current"


def canonical(doc: Any) -> str:
    """The stored form of a document: JSON with sorted keys and no spaces."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Stored(Generic[T]):
    """One stored version: its name, the document as stored and what it says."""

    version: str
    text: str
    value: T


class DocumentStore(Generic[T]):
    """The versions of one kind of document under the key prefix ``name``.

    ``parse`` checks a whole document and returns what it says (or raises);
    ``version_of`` names the version from it, or is None to number versions in order.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        name: str,
        parse: Callable[[Any], T],
        *,
        version_of: Callable[[T], str] | None = None,
        read: Callable[[Any], T] | None = None,
    ) -> None:
        self._client = client
        self.name = name
        self._parse = parse
        # Stored versions were checked when loaded; ``read`` may be laxer than ``parse``
        # (a stricter check added later must not make an older version unreadable).
        self._read = read or parse
        self._version_of = version_of
        self.current_key = self._current_key = current_key(name)
        self._seq_key = f"{name}:seq"
        self._cache: dict[str, Stored[T]] = {}

    def _key(self, version: str) -> str:
        return f"{self.name}:v:{version}"

    async def load(self, doc: Any) -> Stored[T]:
        """Check a document, store it as its version and make that version current."""
        value = self._parse(doc)
        text = canonical(doc)
        with storage_errors():
            if self._version_of is None:
                version = str(await self._client.incr(self._seq_key))
                await self._client.set(self._key(version), text)
                await self._advance(int(version))
            else:
                version = self._version_of(value)
                await self._put_named(version, text)
                await self._client.set(self._current_key, version)
        stored = self._cache[version] = Stored(version, text, value)
        return stored

    async def put(self, doc: Any) -> tuple[Stored[T], bool]:
        """Check a document and store it as its named version without making it current;
        also says whether this call created the version (for ``discard``)."""
        assert self._version_of is not None, "put is for stores whose documents name their version"
        value = self._parse(doc)
        text = canonical(doc)
        version = self._version_of(value)
        with storage_errors():
            created = await self._put_named(version, text)
        stored = self._cache[version] = Stored(version, text, value)
        return stored, created

    async def discard(self, version: str) -> None:
        """Forget a version that ``put`` created and that was never made current (its
        switch was refused), so the name stays free."""
        self._cache.pop(version, None)
        with storage_errors():
            await self._client.delete(self._key(version))

    async def _put_named(self, version: str, text: str) -> bool:
        created = bool(await self._client.set(self._key(version), text, nx=True))
        if not created:
            existing = await self._client.get(self._key(version))
            if existing is not None and json.loads(existing) != json.loads(text):
                raise Conflict(f"{self.name} version {version} exists with other content; use a new version")
        return created

    async def _advance(self, version: int) -> None:
        """Make a numbered version current unless a later one already is (a concurrent
        load that finished first must not be undone)."""

        async def txn(pipe: Pipeline) -> None:
            now = await pipe.get(self._current_key)
            if now is not None and int(now) >= version:
                return
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.set(self._current_key, version)

        await self._client.transaction(txn, self._current_key)

    async def get(self, version: str) -> Stored[T] | None:
        """A stored version, None when there is none by that name."""
        cached = self._cache.get(version)
        if cached is not None:
            return cached
        with storage_errors():
            text = await self._client.get(self._key(version))
        if text is None:
            return None
        stored = self._cache[version] = Stored(version, str(text), self._read(json.loads(text)))
        return stored

    async def current_version(self) -> str | None:
        """The version in force as stored now, None before any document is loaded."""
        with storage_errors():
            version = await self._client.get(self._current_key)
        return None if version is None else str(version)

    async def current(self) -> Stored[T] | None:
        """The document in force now (one GET, then the cache); None before any is loaded."""
        version = await self.current_version()
        if version is None:
            return None
        stored = await self.get(version)
        if stored is None:
            raise NotFound(f"{self.name} version {version} is current but not stored")
        return stored
