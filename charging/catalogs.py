"""The running catalog: stored in Redis by version, cached in process, swapped atomically.

The versions live in a ``DocumentStore`` (``documents.py``) under ``catalog``:
``catalog:current`` names the running version and ``catalog:v:<version>`` holds each
document, the version named by the document itself. Loading a catalog checks the whole
document first (a bad one changes nothing), stores it, then moves the ``current``
pointer with the load's audit entry (the catalog's record outbox ``{catalog}:cdr``, moved
into the ``audit`` table by the relay) and the version applied (its history outbox
``{catalog}:applied``, moved into ``document_versions``: ``document_history.py``): one
atomic step that every server process sees at its next refresh, refused
when the catalog drops a plan or service still in use that it does not migrate
(``plan_index.py``). A process also keeps every version it has used, because a session
stays on the version it started with.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from charging import keys
from charging.catalog import Catalog
from charging.catalog_doc import CatalogInvalid, catalog_from_doc
from charging.changes import ChangeFeed
from charging.documents import Audited, Author, DocumentStore
from charging.errors import Conflict, StorageUnavailable
from charging.plan_index import PlanIndex, StaleCatalog
from charging.schemas import parse_json
from charging.store import storage_errors

log = logging.getLogger("charging.catalog")


def read_catalog_file(path: str) -> Any:
    """The JSON document at ``path``; an empty path means the bundled sample catalog."""
    if path:
        return parse_json(Path(path).read_text(), error=CatalogInvalid)  # nesting bounded
    return json.loads(resources.files("charging").joinpath("catalog.json").read_text())


def _version_of(catalog: Catalog) -> str:
    return catalog.version


class CatalogBook:
    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._docs = DocumentStore(
            client,
            keys.CATALOG,
            catalog_from_doc,
            version_of=_version_of,
            read=partial(catalog_from_doc, strict=False),  # accepted when it was loaded
            audited=Audited("catalog_load", "catalog"),
        )
        assert self._docs.records_key == keys.CATALOG_RECORDS
        # Set by the server: told the record outbox's key after a load pushed an entry.
        self.on_records: Callable[[str], None] | None = None
        self._current: Catalog | None = None
        self.plans = PlanIndex(client)
        # Set by the server: loads are announced to the other processes, and while this
        # process is not subscribed it reads the current pointer before each request.
        self.feed: ChangeFeed | None = None

    @property
    def current(self) -> Catalog:
        if self._current is None:
            raise StorageUnavailable("no catalog is loaded")
        return self._current

    async def start(self, path: str, *, prefer_file: bool, author: Author | None = None) -> None:
        """Use the stored catalog; load the file when none is stored or when asked to. A
        load that changes the catalog in force is audited as ``author``'s (the server's own
        start: the file is the operator's choice); loading the version already in force
        again changes nothing and writes no entry."""
        await self._adopt_untagged()
        stored = await self.refresh()
        if prefer_file or not stored:
            doc = read_catalog_file(path)
            same = stored and isinstance(doc, dict) and doc.get("version") == self.current.version
            await self.load(doc, None if same else author)
        await self.plans.ensure(self.current)
        await self.plans.finish_moves()  # left by a load that stopped half way

    async def _adopt_untagged(self) -> None:
        """Rename the catalog's keys of before the ``{catalog}`` hash tag (a single server
        upgraded; a cluster never had them). The plan index is rebuilt by ``ensure``."""
        client = self._client
        with storage_errors():
            if await client.exists(keys.CATALOG_CURRENT) or not await client.exists("catalog:current"):
                return
            async for old in client.scan_iter(match="catalog:v:*", count=500):
                await client.renamenx(old, keys.CATALOG + str(old)[len("catalog") :])
            if await client.exists("plan:moves"):
                await client.renamenx("plan:moves", keys.PLAN_MOVES)
            await client.renamenx("catalog:current", keys.CATALOG_CURRENT)
        log.info("catalog keys renamed under the {catalog} hash tag")

    async def load(self, doc: Any, author: Author | None = None) -> Catalog:
        """Check, store and switch to a catalog, audited as ``author``'s load in the same
        step. The same version may be loaded again only with the same content."""
        stored, created = await self._docs.put(doc)
        catalog = stored.value
        entry = self._docs.entry(author, catalog.version)
        try:
            await self._switch(catalog, entry, author, stored.text)
        except Exception:
            if created:  # a refused catalog leaves nothing behind: the version stays free
                await self._docs.discard(catalog.version)
            raise
        self._current = catalog
        if entry and self.on_records is not None:
            self.on_records(keys.CATALOG_RECORDS)
            self.on_records(keys.CATALOG_HISTORY)
        log.info("catalog loaded", extra={"version": catalog.version, "plans": len(catalog.plans)})
        await self.plans.finish_moves()
        if self.feed is not None:
            await self.feed.announce("catalog", catalog.version)  # every process rates with it now
        return catalog

    async def _switch(self, catalog: Catalog, entry: str, author: Author | None, text: str) -> None:
        """Make ``catalog`` current unless it drops a plan or service in use (plan_index.py)."""
        for _ in range(5):
            await self.refresh()  # the check is against what is current now, in any process
            replaced = self._current.version if self._current is not None else ""
            applied = self._docs.applied(author, catalog.version, text, replaced)
            try:
                return await self.plans.switch(catalog, self._current, entry, applied)
            except StaleCatalog:
                continue
        raise Conflict("other catalogs kept being loaded meanwhile; load again")

    async def version(self, version: str) -> Catalog | None:
        """A stored catalog by version (sessions stay on the one they started with)."""
        stored = await self._docs.get(version)
        return None if stored is None else stored.value

    async def document(self, version: str) -> str | None:
        stored = await self._docs.get(version or self.current.version)
        return None if stored is None else stored.text

    async def refresh(self) -> bool:
        """Follow the stored ``current`` pointer; False when no catalog is stored."""
        version = await self._docs.current_version()
        if version is None:
            return False
        if self._current is None or self._current.version != version:
            catalog = await self.version(version)
            if catalog is None:
                return False
            self._current = catalog
            log.info("catalog switched", extra={"version": catalog.version})
        return True

    async def fresh(self) -> Catalog:
        """The running catalog to rate a request with: the cached one while the change
        feed is live (changes.py), else the one stored as current now."""
        if self.feed is not None and not self.feed.live:
            await self.refresh()
        return self.current

    async def follow(self) -> None:
        """One pass of the ``catalog`` job: pick up a catalog loaded through another
        server process."""
        await self.refresh()
