"""Catalog and coverage versions in the system of record; usage records name their
catalog version as text.

``document_versions`` keeps every version of an operator's document ever applied, one
immutable row per application (``charging/document_history.py``): the document
(``catalog``, ``coverage``), its version, the content as jsonb, the SHA-256 of its
canonical text, who applied it, when, and the version it replaced ('' none). Rows come
from the relay (the history outbox pushed in the Redis step that applied the version;
``entry_id`` keeps a repeat once) and, for versions stored in Redis before this revision,
from a one-time move at start and in ``charging migrate`` (``charging/history_store.py``).

``usage_records.catalog_version`` was an integer, and catalog versions are names
(``2026-11-26.1``): every such record lost it. The integer column is kept under the name
``catalog_number`` (records written before this revision, when their version was a
number) and ``catalog_version`` is text from now on. Both are catalog changes only
(renaming, adding a column without default): no partition is rewritten.

The server's role gets SELECT and INSERT on the new table, as every table (0009).

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision: str | None = "0010"
branch_labels = None
depends_on = None

APP = "charging_app"

UPGRADE = f"""
CREATE TABLE document_versions (
    entry_id    text        PRIMARY KEY,
    document    text        NOT NULL,
    version     text        NOT NULL,
    digest      text        NOT NULL,
    content     jsonb       NOT NULL,
    replaced    text        NOT NULL DEFAULT '',
    actor       text        NOT NULL DEFAULT '',
    applied_at  timestamptz NOT NULL
);
CREATE INDEX document_versions_applied ON document_versions (document, applied_at);
CREATE INDEX document_versions_version ON document_versions (document, version);
COMMENT ON TABLE document_versions IS
    'every version of a catalog or coverage table ever applied, one row per application (immutable)';
COMMENT ON COLUMN document_versions.digest IS
    'SHA-256 (hex) of the content as canonical JSON: sorted keys, no spaces';
COMMENT ON COLUMN document_versions.actor IS
    'who applied it (server:<file>, the API caller); empty when no one is known (the bundled sample '
    'a new installation starts with, a version stored before revision 0011 without an audit entry)';
CREATE TRIGGER document_versions_immutable BEFORE UPDATE OR DELETE ON document_versions
    FOR EACH ROW EXECUTE FUNCTION refuse_change('document_versions');
CREATE TRIGGER document_versions_no_truncate BEFORE TRUNCATE ON document_versions
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change('document_versions');

ALTER TABLE usage_records RENAME COLUMN catalog_version TO catalog_number;
ALTER TABLE usage_records ADD COLUMN catalog_version text;
COMMENT ON COLUMN usage_records.catalog_version IS
    'the catalog version the use was rated with (document_versions.version of the catalog)';
COMMENT ON COLUMN usage_records.catalog_number IS
    'records before revision 0011: the catalog version when it was a number (see catalog_version)';

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP}') THEN
        GRANT SELECT, INSERT ON document_versions TO {APP};
    END IF;
END
$$;
"""

DOWNGRADE = """
ALTER TABLE usage_records DROP COLUMN catalog_version;
ALTER TABLE usage_records RENAME COLUMN catalog_number TO catalog_version;
DROP TABLE document_versions;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
