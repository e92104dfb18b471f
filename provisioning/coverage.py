"""The coverage table: the fixed access technologies (PSTN, WiMax, fibre) the network
offers by postal area, and the home country where mobile service is sold.

    {"home_country": "DE",
     "areas": [{"country": "DE", "postal_prefix": "", "access": ["PSTN"]},
               {"country": "DE", "postal_prefix": "10", "access": ["PSTN", "WIMAX", "FIBER"]}]}

An address is covered by the area with the longest postal prefix that matches its postal
code (the empty prefix is the rest of the country). The CRM loads and reads tables
(``LoadCoverage``, ``GetCoverage``); they live in Redis, in a numbered
``DocumentStore`` (``charging/documents.py``) under ``{crm}:coverage``:

    {crm}:coverage:seq          the last version given out
    {crm}:coverage:v:<version>  each table loaded (canonical JSON)
    {crm}:coverage:current      the version in force
    {crm}:coverage:cdr          each load's audit entry until the relay moved it
    {crm}:coverage:applied      each table applied until the relay moved it into
                                ``document_versions`` (charging/document_history.py)

Loading checks the whole table against ``coverage.schema.json`` and names every bad
field; a bad table changes nothing. A good one is stored under the next version and made
current, with its audit entry, in one transaction (``documents.py``), so every process
offers by the old table or the new one, never a mix, and no load goes unaudited. Until a
table is loaded the bundled ``coverage.json`` is in force, as version 0.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis.asyncio as aioredis

from charging.documents import Audited, Author, DocumentStore, Stored, canonical
from charging.schemas import DocumentInvalid, Schema, merge
from provisioning import keys

STORE = keys.COVERAGE  # the DocumentStore's name: its keys are {crm}:coverage:*


@dataclass(frozen=True)
class Coverage:
    home_country: str
    areas: Mapping[tuple[str, str], frozenset[str]]

    def access_at(self, country: str, postal_code: str) -> frozenset[str]:
        """Access technologies available at an address (longest postal prefix)."""
        code = postal_code.replace(" ", "").upper()
        for length in range(len(code), -1, -1):
            found = self.areas.get((country, code[:length]))
            if found is not None:
                return found
        return frozenset()


@dataclass(frozen=True)
class Table:
    """A coverage table as stored: its version, the document and what it says."""

    version: int
    text: str
    coverage: Coverage

    @classmethod
    def of(cls, stored: Stored[Coverage]) -> Table:
        return cls(int(stored.version), stored.text, stored.value)


class CoverageInvalid(DocumentInvalid):
    """Every problem of a rejected table, each naming its field."""


# The table's shape (types, codes, no unknown field); the code below adds what a schema
# cannot say: an area or a technology listed twice.
SCHEMA = Schema("provisioning", "coverage.schema.json", "json", CoverageInvalid)


def coverage_from_doc(doc: Any) -> Coverage:
    """Check a whole table; raise ``CoverageInvalid`` naming every bad field."""
    problems, doc = SCHEMA.validate(doc)
    own: list[tuple[str, str]] = []
    areas: dict[tuple[str, str], frozenset[str]] = {}
    first: dict[tuple[str, str], int] = {}
    raw_areas = doc.get("areas") if isinstance(doc, Mapping) else None
    for i, area in enumerate(raw_areas if isinstance(raw_areas, list) else []):
        where = f"areas[{i}]"
        raw = area.get("access") if isinstance(area, Mapping) else None
        access: list[str | None] = raw if isinstance(raw, list) else []
        repeats = [(f"{where}.access[{j}]", f"repeats {t}") for j, t in enumerate(access) if t and t in access[:j]]
        own += repeats
        # The schema has named whatever it pruned from an area (a missing key, a null).
        if repeats or not isinstance(area, Mapping) or len(area) != 3 or None in access:
            continue
        key = (area["country"], area["postal_prefix"])
        if key in first:
            own.append((where, f"the same country and postal_prefix as areas[{first[key]}]"))
            continue
        first[key] = i
        areas[key] = frozenset(t for t in access if t)
    problems = merge(problems, own)
    if problems:
        raise CoverageInvalid(problems)
    return Coverage(doc["home_country"], areas)


def bundled_table() -> Table:
    """The table shipped with the code (``coverage.json``), in force until one is loaded."""
    doc = json.loads(resources.files("provisioning").joinpath("coverage.json").read_text())
    return Table(0, canonical(doc), coverage_from_doc(doc))


def sample_coverage() -> Coverage:
    return bundled_table().coverage


class CoverageBook:
    """The stored coverage tables; the one in force is read at each use (one GET), so a
    table loaded through any process is used by all from the next application on."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._docs = DocumentStore(client, STORE, coverage_from_doc, audited=Audited("coverage_load", "coverage"))
        self._bundled = bundled_table()
        self.records_key = self._docs.records_key
        self.history_key = self._docs.history_key
        # Set by the server: told the record outbox's key after a load pushed an entry.
        self.on_records: Callable[[str], None] | None = None

    async def current(self) -> Table:
        stored = await self._docs.current()
        return self._bundled if stored is None else Table.of(stored)

    async def table(self, version: int) -> Table | None:
        """A table by version (0: the bundled one)."""
        if version == 0:
            return self._bundled
        stored = await self._docs.get(str(version))
        return None if stored is None else Table.of(stored)

    async def load(self, doc: Any, author: Author | None = None) -> Table:
        """Check a table, store it as the next version and make it current, audited as
        ``author``'s load in the same step."""
        table = Table.of(await self._docs.load(doc, author))
        if author is not None and self.on_records is not None:
            self.on_records(self.records_key)
            self.on_records(self.history_key)
        return table
