"""Versioned documents an operator loads (the catalog, the coverage table): each version
stored in Redis, one of them current for every server process.

    <name>:v:<version>   each document loaded, as canonical JSON; never changed once stored
    <name>:current       the version in force
    <name>:seq           the last version given out (numbered stores only)
    <name>:cdr           the store's record outbox: the audit entry of each load, until
                         the relay (cdr_relay.py) has moved it into the ``audit`` table
    <name>:applied       the store's history outbox: each version applied, with its
                         content, until the relay has moved it into ``document_versions``
                         (``document_history.py``)

Loading checks the whole document first (``parse`` raises naming what is wrong), so a bad
one changes nothing. A good one is stored, then ``current`` is moved to it: one SET that
every process sees at its next read, so each reads the old version or the new one, never
a mix, and ``current`` never names a version that is not stored yet.

A store's versions are either named by the document (the catalog's ``version`` field: the
same version may be loaded again only with the same content, else ``Conflict``) or
numbered by the store, 1, 2, 3 ... (the coverage table); concurrent loads of a numbered
store each get their own version and the highest one stays current.

A load and its audit entry are one atomic step: the entry is pushed to the store's record
outbox in the step that makes the version current (a numbered store: one transaction
storing the version, moving the pointer and pushing the entry; a named one: the caller's
switch, e.g. the catalog's script, ``plan_index.lua``), so neither is ever without the
other, whatever stops when. The version applied goes to the history outbox in the same
step (with its content, its digest and the version it replaced), so PostgreSQL keeps every
version ever in force. The relay moves entries at least once and the tables keep each
once (its id is in the entry). A load with no author (the bundled sample a new store
starts with, a version loaded again) pushes neither; what is stored in Redis and has no
row yet is moved at start (``history_store.py``). A version stored by ``put`` but never made
current changed nothing and has no entry. On a Redis Cluster a load's step needs every
key of the store in one slot: the store's name must be a hash tag (the catalog's
``{catalog}``, the coverage table's ``{crm}:coverage``). A parsed document is cached per version, since a
stored version never changes; reading what is current costs one GET.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from charging.cdrs import subject_change_entry
from charging.document_history import history_key, version_entry
from charging.errors import Conflict, NotFound
from charging.store import storage_errors

T = TypeVar("T")


def current_key(name: str) -> str:
    """The key naming the version in force of the store ``name``."""
    return f"{name}:current"


def records_key(name: str) -> str:
    """The record outbox of the store ``name`` (its loads' audit entries)."""
    return f"{name}:cdr"


@dataclass(frozen=True)
class Author:
    """Who loads a document, and when: its audit entry's actor and time."""

    actor: str
    at_ms: int


@dataclass(frozen=True)
class Audited:
    """How a store's loads are audited: ``action`` on ``subject``."""

    action: str
    subject: str

    def entry(self, author: Author, version: str) -> str:
        """The record outbox entry of one load (a fresh reference: each load is its own)."""
        return subject_change_entry(
            author.at_ms, author.actor, self.action, self.subject, uuid.uuid4().hex, {"version": version}
        )


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
        audited: Audited | None = None,
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
        self.records_key = records_key(name)
        self.history_key = history_key(name)
        self.audited = audited
        self._cache: dict[str, Stored[T]] = {}

    def _key(self, version: str) -> str:
        return f"{self.name}:v:{version}"

    def entry(self, author: Author | None, version: str) -> str:
        """The audit entry of loading ``version`` ('' when this store is not audited or
        no author is given)."""
        return self.audited.entry(author, version) if self.audited and author else ""

    def applied(self, author: Author | None, version: str, text: str, replaced: str) -> str:
        """The history outbox entry of making ``version`` current in place of ``replaced``
        ('' when this store is not audited, no author is given or nothing changes)."""
        if self.audited is None or author is None or version == replaced:
            return ""
        return version_entry(author.at_ms, author.actor, self.audited.subject, version, text, replaced)

    async def load(self, doc: Any, author: Author | None = None) -> Stored[T]:
        """Check a document, store it as its version and make that version current, with
        its audit entry in the same step."""
        value = self._parse(doc)
        text = canonical(doc)
        with storage_errors():
            if self._version_of is None:
                version = str(await self._client.incr(self._seq_key))  # a number lost to a crash stays unused
            else:
                version = self._version_of(value)
                await self._put_named(version, text)
            await self._advance(version, text, author)
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

    async def _advance(self, version: str, text: str, author: Author | None) -> None:
        """Store a version (numbered: unless a later one already is current, since a
        concurrent load that finished first must not be undone) and make it current,
        pushing its audit entry and the version applied, in one transaction. The outboxes
        are watched too and checked to be lists, so that no command of the transaction can
        fail on its own."""
        entry = self.entry(author, version)
        outboxes = [self.records_key, self.history_key] if entry else []
        numbered = self._version_of is None

        async def txn(pipe: Pipeline) -> None:
            now = await pipe.get(self._current_key)
            for outbox in outboxes:
                if await pipe.type(outbox) not in ("list", "none"):
                    raise Conflict(f"{outbox} is not a list: nothing loaded")
            current = now is None or not numbered or int(now) < int(version)
            # A numbered version overtaken by a later one was never in force: audited as
            # loaded, but no version was applied.
            applied = self.applied(author, version, text, str(now or "")) if current else ""
            pipe.multi()  # type: ignore[no-untyped-call]
            if numbered:
                pipe.set(self._key(version), text)
            if current:
                pipe.set(self._current_key, version)
            if entry:
                pipe.rpush(self.records_key, entry)
            if applied:
                pipe.rpush(self.history_key, applied)

        await self._client.transaction(txn, self._current_key, *outboxes)

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
