"""The accounts' credit as rows: where every cent of an overpayment went.

``credit_movements`` holds each movement of a billing account's credit: what it held
before this revision (``opening``, once per account), what an
overpayment (``overpaid``), a credit note (``credit_note``) or a negative invoice
(``negative_invoice``) left over, and what a refund (``refunded``) or an invoice settled
from the credit (``applied``) took. pay.lua and settle.lua append each movement to their
shard's credit outbox in the same script as the change; the usage-record relay inserts
them here (``postpaid/credit_movements.py``), idempotently: a movement's id is unique per
account. Rows are immutable. ``account_credit`` (for analysts) sums them per account: the
credit Redis holds once the outboxes are relayed.

The server's role gets SELECT and INSERT by the default privileges of 0009 (granted here
too, as 0013 does); the readers' role reads the view.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision: str | None = "0013"
branch_labels = None
depends_on = None

TABLES = """
CREATE TABLE credit_movements (
    billing_account  text        NOT NULL,
    movement         text        NOT NULL,
    kind             text        NOT NULL
        CHECK (kind IN ('opening', 'overpaid', 'credit_note', 'negative_invoice', 'applied', 'refunded')),
    source           text        NOT NULL,
    invoice          text,
    amount_minor     bigint      NOT NULL CHECK (amount_minor > 0),
    at               timestamptz NOT NULL,
    PRIMARY KEY (billing_account, movement)
);
CREATE INDEX credit_movements_at ON credit_movements (at);
COMMENT ON TABLE credit_movements IS
    'each movement of a billing account''s credit (postpaid/credit_movements.py): immutable';
COMMENT ON COLUMN credit_movements.movement IS
    'unique per account: pay:CHANNEL:REF (a payment, refund or credit note), inv:NUMBER, inv:NUMBER:OLDER, opening';
COMMENT ON COLUMN credit_movements.source IS
    'the payment''s CHANNEL:REF, the refund''s REFUND:REF, the credit note''s or settled invoice''s number';

CREATE VIEW account_credit AS
SELECT billing_account,
       sum(CASE WHEN kind IN ('applied', 'refunded') THEN -amount_minor ELSE amount_minor END) AS credit_minor,
       sum(amount_minor) FILTER (WHERE kind = 'overpaid') AS overpaid_minor,
       sum(amount_minor) FILTER (WHERE kind = 'applied') AS applied_minor,
       sum(amount_minor) FILTER (WHERE kind = 'refunded') AS refunded_minor,
       count(*) AS movements,
       max(at) AS last_at
FROM credit_movements
GROUP BY billing_account;
COMMENT ON VIEW account_credit IS
    'per billing account: its credit (the sum of its credit movements) and what made it';
"""

IMMUTABLE = ("credit_movements",)


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
        GRANT SELECT, INSERT ON credit_movements TO charging_app;
        GRANT SELECT ON account_credit TO charging_app;
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'charging_reader') THEN
        GRANT SELECT ON account_credit TO charging_reader;
    END IF;
END
$$;
"""
    )


def downgrade() -> None:
    op.execute("DROP VIEW account_credit; DROP TABLE credit_movements")
