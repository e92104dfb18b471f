"""The running catalog: stored in Redis by version, cached in process, swapped atomically.

The versions live in a ``DocumentStore`` (``documents.py``) under ``catalog``:
``catalog:current`` names the running version and ``catalog:v:<version>`` holds each
document, the version named by the document itself. Loading a catalog checks the whole
document first (a bad one changes nothing), stores it, then moves the ``current``
pointer: one atomic step that every server process sees at its next refresh. A process
also keeps every version it has used, because a session stays on the version it started
with.
"""

from __future__ import annotations

import asyncio
import json
import logging
from importlib import resources
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from charging.catalog import Catalog
from charging.catalog_doc import catalog_from_doc
from charging.documents import DocumentStore
from charging.errors import StorageUnavailable

log = logging.getLogger("charging.catalog")


def read_catalog_file(path: str) -> Any:
    """The JSON document at ``path``; an empty path means the bundled sample catalog."""
    if path:
        return json.loads(Path(path).read_text())
    return json.loads(resources.files("charging").joinpath("catalog.json").read_text())


def _version_of(catalog: Catalog) -> str:
    return catalog.version


class CatalogBook:
    def __init__(self, client: aioredis.Redis) -> None:
        self._docs = DocumentStore(client, "catalog", catalog_from_doc, version_of=_version_of)
        self._current: Catalog | None = None

    @property
    def current(self) -> Catalog:
        if self._current is None:
            raise StorageUnavailable("no catalog is loaded")
        return self._current

    async def start(self, path: str, *, prefer_file: bool) -> None:
        """Use the stored catalog; load the file when none is stored or when asked to."""
        if not prefer_file and await self.refresh():
            return
        await self.load(read_catalog_file(path))

    async def load(self, doc: Any) -> Catalog:
        """Check, store and switch to a catalog. The same version may be loaded again only
        with the same content."""
        catalog = (await self._docs.load(doc)).value
        self._current = catalog
        log.info("catalog loaded", extra={"version": catalog.version, "plans": len(catalog.plans)})
        return catalog

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

    async def follow(self, interval_s: float) -> None:
        """Background task: pick up catalogs loaded through other server processes."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.refresh()
            except StorageUnavailable as exc:
                log.warning("catalog refresh failed", extra={"error": str(exc)})
