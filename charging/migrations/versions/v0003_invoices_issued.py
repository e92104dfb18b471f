"""Issued invoices as the system of record: what the bill run writes and how it resumes.

``invoices`` gains the bill run's key (``run``: the period billed, or ``final-<line>``)
and the account's issue sequence the invoice was composed on (``account_seq``): unique
per billing account, so a repeated run finds the invoice it issued, and two invoices
composed from the same reading of an account (a bill run and a final invoice racing)
cannot both be issued. ``settlement`` is what the invoice does to the account in Redis
(postpaid/settle.lua), kept with it so a run resumed after a crash applies the same.
The invoice's charge lines and taxes are rows of their own (immutable, like the
invoice), for SQL; the document keeps the itemised usage. Bill runs' reports and
delivery attempts are rows.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels = None
depends_on = None

TABLES = """
ALTER TABLE invoices DROP CONSTRAINT invoices_billing_account_period_start_period_end_kind_key;
ALTER TABLE invoices ALTER COLUMN kind SET DEFAULT 'REGULAR';
ALTER TABLE invoices ADD COLUMN run text;
ALTER TABLE invoices ADD COLUMN account_seq bigint;
ALTER TABLE invoices ADD COLUMN settlement jsonb;
-- Invoices moved from Redis (charging migrate) have neither: NULLs never collide.
ALTER TABLE invoices ADD CONSTRAINT invoices_run_once UNIQUE (billing_account, run);
ALTER TABLE invoices ADD CONSTRAINT invoices_one_per_reading UNIQUE (billing_account, account_seq);
COMMENT ON COLUMN invoices.run IS 'the bill run''s key: the period id billed, or final-<charging account>';
COMMENT ON COLUMN invoices.account_seq IS 'invoices issued to the account before this one, as read when composing it';
COMMENT ON COLUMN invoices.settlement IS 'what issuing does to the account in Redis (postpaid/settle.lua)';

-- The rows below belong to an invoice by invoice_id, written in the invoice's transaction.
-- No foreign key: it would make TRUNCATE of invoices fail on the key before the trigger
-- refusing it, and a distributed (Citus) layout would have to drop it anyway.

-- The invoice's charge lines (rentals, usage per category, discounts, fees, adjustments)
-- in document order; line is '' for the account's own charges.
CREATE TABLE invoice_charges (
    invoice_id   text    NOT NULL,
    position     integer NOT NULL,
    line         text    NOT NULL,
    kind         text    NOT NULL,
    description  text    NOT NULL,
    category     text    NOT NULL,
    tax_code     text    NOT NULL,
    quantity     bigint  NOT NULL,
    unit         text    NOT NULL,
    amount_minor bigint  NOT NULL,
    PRIMARY KEY (invoice_id, position)
);

-- Tax per code, rounded once per code (postpaid/invoices.py).
CREATE TABLE invoice_taxes (
    invoice_id   text    NOT NULL,
    tax_code     text    NOT NULL,
    name         text    NOT NULL,
    rate_bp      integer NOT NULL,
    base_minor   bigint  NOT NULL,
    tax_minor    bigint  NOT NULL,
    PRIMARY KEY (invoice_id, tax_code)
);

-- Every delivery attempt of an invoice on a channel, and its outcome.
CREATE TABLE invoice_deliveries (
    attempt_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    invoice_id   text        NOT NULL,
    attempted_at timestamptz NOT NULL,
    channel      text        NOT NULL,
    delivered    boolean     NOT NULL,
    reason       text        NOT NULL DEFAULT ''
);
CREATE INDEX invoice_deliveries_invoice ON invoice_deliveries (invoice_id, attempted_at);

CREATE TABLE bill_runs (
    run_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ran_at     timestamptz NOT NULL,
    accounts   integer NOT NULL,
    issued     integer NOT NULL,
    already    integer NOT NULL,
    failed     integer NOT NULL,
    seconds    double precision NOT NULL
);
"""

# For analysts: invoiced amounts and taxes per billing month (the month the period ends
# in, the accounting month of the invoice), issuer, currency and tax code.
VIEWS = """
CREATE VIEW invoices_per_period AS
SELECT date_trunc('month', i.period_end)::date AS month, i.issuer, i.currency, i.kind,
       count(*) AS invoices, sum(i.total_minor - i.tax_minor) AS net_minor,
       sum(i.tax_minor) AS tax_minor, sum(i.total_minor) AS total_minor
FROM invoices i
GROUP BY 1, 2, 3, 4;
COMMENT ON VIEW invoices_per_period IS 'invoices issued per billing month, issuer, currency and kind (minor units)';

CREATE VIEW taxes_per_period AS
SELECT date_trunc('month', i.period_end)::date AS month, i.issuer, i.currency, t.tax_code, t.name, t.rate_bp,
       count(*) AS invoices, sum(t.base_minor) AS base_minor, sum(t.tax_minor) AS tax_minor
FROM invoices i JOIN invoice_taxes t USING (invoice_id)
GROUP BY 1, 2, 3, 4, 5, 6;
COMMENT ON VIEW taxes_per_period IS 'tax bases and amounts per billing month and tax code (minor units)';
"""

IMMUTABLE = ("invoice_charges", "invoice_taxes", "invoice_deliveries", "bill_runs")


def upgrade() -> None:
    op.execute(TABLES)
    op.execute(VIEWS)
    for table in IMMUTABLE:
        op.execute(
            f"CREATE TRIGGER {table}_immutable BEFORE UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION refuse_change('{table}')"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION refuse_change('{table}')"
        )


def downgrade() -> None:
    op.execute("DROP VIEW taxes_per_period, invoices_per_period")
    op.execute("DROP TABLE bill_runs, invoice_deliveries, invoice_taxes, invoice_charges")
    op.execute(
        "ALTER TABLE invoices DROP CONSTRAINT invoices_one_per_reading, DROP CONSTRAINT invoices_run_once, "
        "DROP COLUMN settlement, DROP COLUMN account_seq, DROP COLUMN run, ALTER COLUMN kind SET DEFAULT 'periodic', "
        "ADD UNIQUE (billing_account, period_start, period_end, kind)"
    )
