"""Schema migrations of the system of record (PostgreSQL), with Alembic.

``charging migrate`` applies them, and so does a server that runs its embedded PostgreSQL
(development: ``make run``). A server on ``CHARGING_DATABASE_URL`` only checks that the
schema is the one its code expects and refuses to start otherwise, so that a deployment
migrates once, on purpose, before the new servers start; ``CHARGING_DATABASE_MIGRATE=true``
makes it migrate at start there too.

The migrations in ``versions/`` are plain SQL: partitions, triggers and PL/pgSQL functions
have no SQLAlchemy model behind them, and none is wanted (the application speaks to
PostgreSQL through psycopg, not an ORM). Alembic runs them through psycopg's synchronous
API, in a worker thread when called from the server, all in one transaction under an
advisory lock, so that servers starting together migrate once.

To add one: copy the newest file in ``versions/``, give it the next revision id and set its
``down_revision`` to the newest one's id.
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from charging.database import Pool
from charging.embedded_postgres import EmbeddedPostgres
from charging.errors import StartupError
from charging.settings import Settings

HERE = Path(__file__).parent


def config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["url"] = url
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Apply the migrations up to ``revision``; nothing when already there. Blocking."""
    command.upgrade(config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    """Undo migrations down to ``revision`` (``base``: an empty schema). Blocking."""
    command.downgrade(config(url), revision)


@functools.cache
def head() -> str:
    """The revision this code expects."""
    found = ScriptDirectory.from_config(config("")).get_current_head()
    assert found is not None
    return found


async def current(conn: AsyncConnection[TupleRow]) -> str | None:
    """The database's revision; None before the first migration."""
    found = await (await conn.execute("SELECT to_regclass('alembic_version') IS NOT NULL")).fetchone()
    if found is None or not found[0]:
        return None
    row = await (await conn.execute("SELECT version_num FROM alembic_version")).fetchone()
    return None if row is None else str(row[0])


async def check_current(pool: Pool, expected: str) -> None:
    """Refuse to run on a schema other than ``expected`` (a migration not applied yet, or
    a database already migrated by newer code)."""
    async with pool.connection() as conn:
        found = await current(conn)
    if found != expected:
        raise StartupError(
            f"the database schema is at revision {found or 'none'}, this code needs {expected}: "
            "run `charging migrate` (or set CHARGING_DATABASE_MIGRATE=true)"
        )


async def migrate(settings: Settings) -> str:
    """``charging migrate``: the configured database (as the owner of
    ``CHARGING_DATABASE_MIGRATE_URL`` when set), else the embedded one (started for the
    purpose and stopped again, its server login role made), brought to ``head()``;
    answers the revision."""
    embedded = None
    url = settings.database_migrate_url or settings.database_url  # the schema's owner
    if not settings.database_url:
        embedded = EmbeddedPostgres(settings.database_dir, settings.postgres_bin_dir)
        url = await embedded.start()
    try:
        await asyncio.to_thread(upgrade, url)
        if embedded is not None:
            await asyncio.to_thread(embedded.layout.ensure_server_login)
        if settings.redis_url:
            await _move_redis_records(settings, url)
    finally:
        if embedded is not None:
            await embedded.stop()
    return head()


async def _move_redis_records(settings: Settings, url: str) -> None:
    """Records Redis kept before PostgreSQL did are moved once, in the order a server's
    start moves them: the CRM's keys under their tag, then billing's records
    (``postpaid/upgrade.py``), then the others (``charging/upgrade.py``)."""
    from charging import store, upgrade
    from charging.clock import SystemClock
    from charging.database import open_pool
    from charging.embedded_redis import with_password

    client = store.connect(with_password(settings.redis_url), max_connections=2, tls=settings.redis_tls())
    pool = await open_pool(url, 2)
    try:
        # under the lease servers starting meanwhile take too: one mover at a time
        await upgrade.move_all_of(settings, client, pool, SystemClock())
    finally:
        await pool.close()
        await client.aclose()
