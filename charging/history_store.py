"""The ``document_versions`` table: written by the relay, read by ``charging catalog
history``/``show``, and filled once from what Redis stored before it existed.

Writing is one ``INSERT ... ON CONFLICT DO NOTHING`` per batch: a row relayed again (a
crash between the relay's commit and its trim) is kept once by its ``entry_id``. Versions
are few (an operator loads a catalog a few times a month), so there is no COPY here.

The move (``move_stored``) gives a row to versions Redis stored without one: once, every
stored version (those of before the table; one SCAN of the keyspace, so a marker key
``<store>:history_moved`` says it is done), and at every start the version in force (the
bundled sample a new store starts with is no one's load: no author, no outbox entry).
It reads the candidates first (SCAN, or the ``current`` pointer), then the history outbox,
then the table, and inserts ``<document>:stored:<version>`` for each candidate neither
holds: a version applied with an entry was pushed in the step that stored the pointer, so
its entry is still in the outbox when read, or the relay committed it before trimming and
it is in the table when read after. The one window left: another process's catalog load
between storing its version (``put``) and its switch, during the once-only SCAN of an
upgrade; that version then has a ``stored`` row next to its applied one. A move that
stops before its marker is set runs again whole, and its rows' ids keep each once. Who
applied a moved version and when comes from its audit entry (``<document>_load``) when
there is one; otherwise the actor is '' and the time is the move's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import redis.asyncio as aioredis
from psycopg import sql
from psycopg.types.json import Jsonb

from charging import keys
from charging.cdrs import at
from charging.database import Pool
from charging.document_history import COLUMNS, VersionRow, digest, entry_version, history_key, moved_key
from charging.documents import canonical, current_key
from charging.store import storage_errors
from provisioning import keys as provisioning_keys

INSERT = sql.SQL("INSERT INTO document_versions ({}) VALUES ({}) ON CONFLICT (entry_id) DO NOTHING").format(
    sql.SQL(", ").join(map(sql.Identifier, COLUMNS)), sql.SQL(", ").join(sql.Placeholder() * len(COLUMNS))
)
SELECT = sql.SQL("SELECT {} FROM document_versions").format(sql.SQL(", ").join(map(sql.Identifier, COLUMNS)))


@dataclass(frozen=True)
class DocumentSource:
    """A document store the history covers: its Redis name and its document's name."""

    store: str  # the DocumentStore's name (its keys' prefix)
    document: str  # ``catalog``, ``coverage``: the rows' ``document`` and audit subject

    @property
    def outbox(self) -> str:
        return history_key(self.store)


SOURCES = (DocumentSource(keys.CATALOG, "catalog"), DocumentSource(provisioning_keys.COVERAGE, "coverage"))


def _values(row: VersionRow) -> tuple[object, ...]:
    return tuple(Jsonb(json.loads(row.content)) if c == "content" else getattr(row, c) for c in COLUMNS)


def _row(values: Sequence[object]) -> VersionRow:
    entry_id, document, version, sha, content, replaced, actor, applied_at = values
    assert isinstance(applied_at, datetime)
    # jsonb keeps no key order: the canonical text again, which the digest is of.
    return VersionRow(
        str(entry_id), str(document), str(version), str(sha), canonical(content), str(replaced), str(actor), applied_at
    )


class HistoryStore:
    def __init__(self, pool: Pool, sources: Sequence[DocumentSource] = ()) -> None:
        self.pool = pool
        self.outboxes = tuple(s.outbox for s in sources)  # the history outboxes the relay moves

    async def write(self, rows: Sequence[VersionRow]) -> int:
        """Insert rows, skipping those already there; answers how many were new."""
        async with self.pool.connection() as conn:
            async with conn.cursor() as cur:
                inserted = 0
                for row in rows:
                    await cur.execute(INSERT, _values(row))
                    inserted += max(cur.rowcount, 0)
        return inserted

    async def versions(self, document: str, limit: int = 100) -> list[VersionRow]:
        """The latest applications of ``document``, newest first."""
        query = sql.SQL("{} WHERE document = %s ORDER BY applied_at DESC, entry_id LIMIT %s").format(SELECT)
        async with self.pool.connection() as conn:
            found = await (await conn.execute(query, (document, limit))).fetchall()
        return [_row(values) for values in found]

    async def version(self, document: str, version: str) -> VersionRow | None:
        """The last application of one version of ``document`` (its content is the same
        at every application: a store refuses other content under a version it has)."""
        query = sql.SQL("{} WHERE document = %s AND version = %s ORDER BY applied_at DESC LIMIT 1").format(SELECT)
        async with self.pool.connection() as conn:
            found = await (await conn.execute(query, (document, version))).fetchone()
        return None if found is None else _row(found)


async def move_stored(client: aioredis.Redis, pool: Pool, source: DocumentSource, now_ms: int) -> int:
    """Give the versions Redis stored without a row theirs: every stored version once (those
    of before the table; a marker key says it is done), and at every call the version in
    force (the bundled sample a new store starts with, applied with no author). Answers
    how many rows were added."""
    prefix = f"{source.store}:v:"
    marker = moved_key(source.store)
    with storage_errors():
        once = not await client.exists(marker)
        # The candidates first, then the outbox, then the table (see the module's docstring).
        if once:
            candidates = {str(key)[len(prefix) :] async for key in client.scan_iter(match=prefix + "*", count=500)}
        else:
            current = await client.get(current_key(source.store))
            candidates = {str(current)} if current is not None else set()
        entries = await client.lrange(source.outbox, 0, -1)  # type: ignore[misc]
    in_flight = {found[1] for e in entries if (found := entry_version(str(e))) and found[0] == source.document}
    candidates -= in_flight
    async with pool.connection() as conn:
        rows = await conn.execute(
            "SELECT DISTINCT version FROM document_versions WHERE document = %s AND version = ANY(%s)",
            (source.document, sorted(candidates)),
        )
        candidates -= {str(v) for (v,) in await rows.fetchall()}
        loads = await conn.execute(
            "SELECT details->>'version', actor, occurred_at FROM audit WHERE subject = %s AND action = %s "
            "AND details->>'version' = ANY(%s) ORDER BY occurred_at",
            (source.document, source.document + "_load", sorted(candidates)),
        )
        audited = {str(v): (str(actor), when) for v, actor, when in await loads.fetchall()}
    moved = []
    for version in sorted(candidates):
        with storage_errors():
            text = await client.get(prefix + version)
        if text is None:
            continue  # discarded meanwhile (a refused catalog)
        text = canonical(json.loads(text))
        actor, when = audited.get(version, ("", at(str(now_ms))))
        entry_id = f"{source.document}:stored:{version}"
        moved.append(VersionRow(entry_id, source.document, version, digest(text), text, "", actor, when))
    added = await HistoryStore(pool).write(moved) if moved else 0
    if once:
        with storage_errors():
            await client.set(marker, "1")  # only now: a move that stopped is done again, whole
    return added


async def move_all_stored(client: aioredis.Redis, pool: Pool, now_ms: int) -> dict[str, int]:
    """``move_stored`` for every document the history covers (at start and in
    ``charging migrate``); answers how many versions were moved, by document."""
    return {source.document: await move_stored(client, pool, source, now_ms) for source in SOURCES}
