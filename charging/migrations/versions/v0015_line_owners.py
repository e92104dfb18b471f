"""Lines' history names what a line is and which unit it serves, so a customer's lines
are read from the rows (issue 11): ``customer_type`` and ``unit_id`` on ``line_changes``
(empty on rows written before; a reader takes the line's type as MOBILE_PREPAID then, as
Redis's hash did without one), and an index to find a customer's lines.

A customer's lines are the numbers whose latest row names it (a terminated number given
to another customer later names that one): ``provisioning/order_store.py``.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision: str | None = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Adding a column with a constant default rewrites no row (no UPDATE trigger fires).
    op.execute(
        "ALTER TABLE line_changes ADD COLUMN customer_type text NOT NULL DEFAULT '', "
        "ADD COLUMN unit_id text NOT NULL DEFAULT ''"
    )
    op.execute("CREATE INDEX line_changes_customer ON line_changes (customer_id, msisdn)")


def downgrade() -> None:
    op.execute("DROP INDEX line_changes_customer")
    op.execute("ALTER TABLE line_changes DROP COLUMN customer_type, DROP COLUMN unit_id")
