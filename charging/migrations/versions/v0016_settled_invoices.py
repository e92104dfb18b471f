"""Settled invoices: their real-time state leaves Redis, PostgreSQL answers for them.

An issued invoice's state in Redis (``{bill.<n>}:is:NUMBER``: open and disputed amounts,
status, delivery) is real-time data only while the invoice can still change money there.
Once it is settled (nothing open, nothing disputed, no dispute or movement of its account
waiting to be applied, delivery no longer queued), ``settled_invoices`` gets a row, the
switch: from its commit on PostgreSQL answers for the invoice (its status and delivery
as they stood, what was credited from ``credit_notes``) and bounds the credit notes
against it, and only then is the Redis state deleted (``postpaid/settled.py``). Rows are
immutable.

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

from alembic import op

revision = "0016"
down_revision: str | None = "0015"
branch_labels = None
depends_on = None

TABLES = """
CREATE TABLE settled_invoices (
    invoice_id       text        PRIMARY KEY,
    billing_account  text        NOT NULL,
    status           text        NOT NULL,
    delivery         text        NOT NULL,
    delivered_on     text        NOT NULL DEFAULT '',
    delivery_detail  text        NOT NULL DEFAULT '',
    settled_at       timestamptz NOT NULL
);
COMMENT ON TABLE settled_invoices IS
    'invoices settled (nothing open or disputed) whose Redis state was dropped (postpaid/settled.py): immutable';
"""

IMMUTABLE = ("settled_invoices",)


def upgrade() -> None:
    op.execute(TABLES)
    for table in IMMUTABLE:
        op.execute(
            f"CREATE TRIGGER {table}_immutable BEFORE UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION refuse_change('{table}')"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION refuse_change('{table}')"
        )
    # As 0009 does for every table: the server's role reads and appends (when it exists).
    op.execute(
        """
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'charging_app') THEN
        GRANT SELECT, INSERT ON settled_invoices TO charging_app;
    END IF;
END
$$;
"""
    )


def downgrade() -> None:
    op.execute("DROP TABLE settled_invoices")
