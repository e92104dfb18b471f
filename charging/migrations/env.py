"""Alembic's entry point: run the migrations over psycopg on the URL the runner passed."""

from __future__ import annotations

import psycopg
from alembic import context
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

# Any constant shared by every process that migrates this database.
MIGRATION_LOCK = 0x63686172


def run() -> None:
    if context.is_offline_mode():
        raise SystemExit("offline (--sql) migrations are not supported")
    url: str = context.config.attributes["url"]
    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(url), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, transaction_per_migration=False)
            with context.begin_transaction():
                # Alembic reads the current revision after this, so a second server waits
                # here and then finds nothing left to do.
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
                context.run_migrations()
    finally:
        engine.dispose()


run()
