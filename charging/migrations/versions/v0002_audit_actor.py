"""The audit trail queried by actor: an index on (actor, occurred_at).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # On the partitioned parent: PostgreSQL makes the index on every partition, now and later.
    op.execute("CREATE INDEX audit_actor ON audit (actor, occurred_at)")


def downgrade() -> None:
    op.execute("DROP INDEX audit_actor")
