"""``charging catalog history|show`` and ``charging coverage history|show``: the versions
of a document ever applied, from PostgreSQL (``document_versions``, ``history_store.py``).

``history`` prints one JSON object per application, newest first: version, digest (SHA-256
of the canonical JSON), actor, applied_at (UTC) and the version it replaced. ``show``
prints one version's document as canonical JSON, the text the digest is of, so "which
prices applied to this call" is ``charging cdrs`` (a record's ``catalogVersion``), then
``charging catalog show <that version>``.

The database is found as for ``charging cdrs`` (``embedded_postgres.command_database_url``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from charging.cli import CliError
from charging.document_history import VersionRow, digest


async def _run(document: str, version: str, limit: int) -> list[VersionRow]:
    from charging.database import open_pool
    from charging.embedded_postgres import command_database_url
    from charging.history_store import HistoryStore
    from charging.settings import Settings

    pool = await open_pool(command_database_url(Settings.from_env(os.environ)), 1)
    try:
        history = HistoryStore(pool)
        if not version:
            return await history.versions(document, limit)
        found = await history.version(document, version)
        return [] if found is None else [found]
    finally:
        await pool.close()


def cmd_history(args: argparse.Namespace) -> int:
    for row in asyncio.run(_run(args.document, "", args.limit)):
        print(json.dumps(row.summary(), separators=(",", ":")))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    found = asyncio.run(_run(args.document, args.version, 1))
    if not found:
        raise CliError(f"no {args.document} version {args.version!r} was ever applied")
    row = found[0]
    if digest(row.content) != row.digest:  # the row is immutable; a mismatch is a fault to see
        raise CliError(f"{args.document} version {row.version}: content does not match its digest")
    sys.stdout.write(row.content + "\n")
    return 0


def add_history(sub: Any) -> None:
    """The ``catalog`` and ``coverage`` commands on the CLI's subparsers."""
    for document in ("catalog", "coverage"):
        sp = sub.add_parser(document, help=f"{document} versions ever applied, from the database")
        actions = sp.add_subparsers(dest="action", required=True)
        ap = actions.add_parser("history", help="each version applied, newest first (JSON lines)")
        ap.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
        ap.set_defaults(fn=cmd_history, document=document)
        ap = actions.add_parser("show", help="one version's document (canonical JSON)")
        ap.add_argument("version")
        ap.set_defaults(fn=cmd_show, document=document)
