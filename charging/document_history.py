"""Every version of an operator's document ever applied (catalogs, coverage tables), on its
way from Redis to the ``document_versions`` table: the outbox entry and the row it becomes.

Redis keeps what is in force (``documents.py``); PostgreSQL keeps the history, one
immutable row per application: which document and version, its content, the content's
digest, who applied it, when, and which version it replaced. The step that makes a version
current (the catalog's switch script ``plan_index.lua``, the coverage table's transaction)
pushes one entry to the store's history outbox ``<store>:applied`` in that same step, and
the relay (``cdr_relay.py``) inserts it by its unique id: a change stays one Redis step,
and its row is never lost or doubled.

An entry is a JSON array of strings:

    ["v", time (ms), actor, document, version, replaced version ('' none), digest,
     a unique reference, the document (canonical JSON)]

The digest is the SHA-256 of the canonical text (``documents.canonical``: sorted keys, no
spaces), so a version read back from PostgreSQL (``jsonb``, which keeps no key order) can
be checked: ``canonical(content)`` digests to it again.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from charging.cdrs import BadRecord, at

LAYOUT = "v"
FIELDS = 9


def history_key(name: str) -> str:
    """The history outbox of the document store ``name`` (its applied versions)."""
    return f"{name}:applied"


def moved_key(name: str) -> str:
    """Set once every version the store ``name`` held before the history has its row."""
    return f"{name}:history_moved"


def digest(text: str) -> str:
    """The content digest of a stored document's canonical text (SHA-256, hex)."""
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class VersionRow:
    """One application of a document version (a row of ``document_versions``)."""

    entry_id: str
    document: str
    version: str
    digest: str
    content: str  # the canonical JSON text (a jsonb column)
    replaced: str
    actor: str
    applied_at: datetime

    def summary(self) -> dict[str, str]:
        """What a listing shows of it (``charging catalog history``, ListCatalogVersions)."""
        applied_at = self.applied_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return {
            "version": self.version,
            "digest": self.digest,
            "actor": self.actor,
            "applied_at": applied_at,
            "replaced": self.replaced,
        }


COLUMNS = tuple(VersionRow.__dataclass_fields__)


def version_entry(at_ms: int, actor: str, document: str, version: str, text: str, replaced: str) -> str:
    """The history outbox entry of applying ``version`` (a fresh reference each time: a
    version applied again, after another, is a second row)."""
    ref = uuid.uuid4().hex
    return json.dumps([LAYOUT, str(at_ms), actor, document, version, replaced, digest(text), ref, text])


def version_row(entry: str) -> VersionRow:
    """The row one history outbox entry stands for; ``BadRecord`` when it is none."""
    try:
        v = json.loads(entry)
    except ValueError:
        raise BadRecord("not JSON") from None
    if not isinstance(v, list) or len(v) != FIELDS or v[0] != LAYOUT or set(map(type, v)) != {str}:
        raise BadRecord("not a document version entry")
    _k, ms, actor, document, version, replaced, sha, ref, text = v
    try:
        when = at(ms)
        json.loads(text)
    except ValueError as exc:
        raise BadRecord(str(exc)) from None
    return VersionRow(f"{document}:{ref}", document, version, sha, text, replaced, actor, when)


def entry_version(entry: str) -> tuple[str, str] | None:
    """(document, version) of a history outbox entry, None when it is unreadable."""
    try:
        row = version_row(entry)
    except BadRecord:
        return None
    return row.document, row.version
