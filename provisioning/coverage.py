"""The coverage table: the fixed access technologies (PSTN, WiMax, fibre) the network
offers by postal area, and the home country where mobile service is sold.

    {"home_country": "DE",
     "areas": [{"country": "DE", "postal_prefix": "", "access": ["PSTN"]},
               {"country": "DE", "postal_prefix": "10", "access": ["PSTN", "WIMAX", "FIBER"]}]}

An address is covered by the area with the longest postal prefix that matches its postal
code (the empty prefix is the rest of the country). The CRM loads and reads tables
(``LoadCoverage``, ``GetCoverage``); they live in Redis, in a numbered
``DocumentStore`` (``charging/documents.py``) under ``crm:coverage``:

    crm:coverage:seq          the last version given out
    crm:coverage:v:<version>  each table loaded (canonical JSON)
    crm:coverage:current      the version in force

Loading checks the whole table and names every bad field; a bad table changes nothing. A
good one is stored under the next version and made current, so every process offers by
the old table or the new one, never a mix. Until a table is loaded the bundled
``coverage.json`` is in force, as version 0.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis.asyncio as aioredis

from charging.catalog import ACCESS
from charging.documents import DocumentStore, Stored, canonical
from charging.errors import InvalidRequest

COUNTRY = re.compile(r"^[A-Z]{2}$")
POSTAL_PREFIX = re.compile(r"^[0-9A-Z]{0,10}$")
MAX_AREAS = 100_000


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


class CoverageInvalid(InvalidRequest):
    """Every problem of a rejected table, each naming its field."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__(problems[0][0], "; ".join(f"{f}: {m}" for f, m in problems))
        self.problems = problems

    def __str__(self) -> str:
        return self.message


def _unknown(doc: Mapping[str, Any], known: set[str], where: str, problems: list[tuple[str, str]]) -> None:
    for key in doc:
        if key not in known:
            problems.append((f"{where}{key}", "unknown field"))


def coverage_from_doc(doc: Any) -> Coverage:
    """Check a whole table; raise ``CoverageInvalid`` naming every bad field."""
    if not isinstance(doc, Mapping):
        raise CoverageInvalid([("json", "must be a JSON object")])
    problems: list[tuple[str, str]] = []
    _unknown(doc, {"home_country", "areas"}, "", problems)
    home = doc.get("home_country")
    if not isinstance(home, str) or not COUNTRY.match(home):
        problems.append(("home_country", "must be an ISO 3166 alpha-2 code (two capital letters)"))
    raw_areas = doc.get("areas")
    if not isinstance(raw_areas, list) or not 1 <= len(raw_areas) <= MAX_AREAS:
        problems.append(("areas", f"must be a list of 1 to {MAX_AREAS} areas"))
        raw_areas = []
    areas: dict[tuple[str, str], frozenset[str]] = {}
    first: dict[tuple[str, str], int] = {}
    for i, area in enumerate(raw_areas):
        where = f"areas[{i}]"
        if not isinstance(area, Mapping):
            problems.append((where, "must be an object"))
            continue
        _unknown(area, {"country", "postal_prefix", "access"}, f"{where}.", problems)
        country, prefix, access = area.get("country"), area.get("postal_prefix"), area.get("access")
        ok = True
        if not isinstance(country, str) or not COUNTRY.match(country):
            problems.append((f"{where}.country", "must be an ISO 3166 alpha-2 code (two capital letters)"))
            ok = False
        if not isinstance(prefix, str) or not POSTAL_PREFIX.match(prefix):
            problems.append((f"{where}.postal_prefix", "must be 0-10 digits or capital letters, without spaces"))
            ok = False
        if not isinstance(access, list) or not access:
            problems.append((f"{where}.access", f"must be a non-empty list of {', '.join(ACCESS)}"))
            ok = False
            access = []
        for j, tech in enumerate(access):
            if tech not in ACCESS:
                problems.append((f"{where}.access[{j}]", f"must be one of {', '.join(ACCESS)}"))
                ok = False
            elif tech in access[:j]:
                problems.append((f"{where}.access[{j}]", f"repeats {tech}"))
                ok = False
        if not ok:
            continue
        assert isinstance(country, str) and isinstance(prefix, str)
        if (country, prefix) in first:
            problems.append((where, f"the same country and postal_prefix as areas[{first[country, prefix]}]"))
            continue
        first[country, prefix] = i
        areas[country, prefix] = frozenset(access)
    if problems:
        raise CoverageInvalid(problems)
    assert isinstance(home, str)
    return Coverage(home, areas)


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
        self._docs = DocumentStore(client, "crm:coverage", coverage_from_doc)
        self._bundled = bundled_table()

    async def current(self) -> Table:
        stored = await self._docs.current()
        return self._bundled if stored is None else Table.of(stored)

    async def table(self, version: int) -> Table | None:
        """A table by version (0: the bundled one)."""
        if version == 0:
            return self._bundled
        stored = await self._docs.get(str(version))
        return None if stored is None else Table.of(stored)

    async def load(self, doc: Any) -> Table:
        """Check a table, store it as the next version and make it current."""
        return Table.of(await self._docs.load(doc))
