"""Money on billing accounts as the system of record: payments, credit notes, refunds,
adjustments, disputes, promises to pay and dunning steps as immutable rows.

A movement is committed here first, with its pending Redis application
(``billing_applications``) in the same transaction; the headroom in Redis learns of it
through a script that records what it applied (``postpaid/pay.lua``, under the
movement's record key), so applying twice changes nothing. Rows are immutable, so "applied" is a row of
its own (``billing_applied``), written after Redis applied it, with the outcome: a
movement Redis refused (a race the pre-check could not see) is ``REFUSED`` there, the
correction row that voids it. A movement's allocations to invoices are rows, written
with its applied row.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels = None
depends_on = None

TABLES = """
-- Payments received, one per channel reference and billing account.
CREATE TABLE payments (
    payment_id       text        PRIMARY KEY,
    billing_account  text        NOT NULL,
    channel          text        NOT NULL,
    reference        text        NOT NULL,
    idempotency_key  text        NOT NULL,
    amount_minor     bigint      NOT NULL CHECK (amount_minor > 0),
    currency         char(3)     NOT NULL,
    received_at      timestamptz NOT NULL,
    recorded_by      text        NOT NULL,
    UNIQUE (billing_account, idempotency_key)
);
CREATE INDEX payments_received ON payments (received_at);
CREATE INDEX payments_reference ON payments (channel, reference);

-- Credit notes: their own gapless series per issuer (invoice_numbers, series = prefix).
CREATE TABLE credit_notes (
    issuer           text        NOT NULL,
    series           text        NOT NULL,
    number           bigint      NOT NULL,
    credit_note_id   text        NOT NULL UNIQUE,
    billing_account  text        NOT NULL,
    invoice_id       text        NOT NULL,
    amount_minor     bigint      NOT NULL CHECK (amount_minor > 0),
    release_minor    bigint      NOT NULL DEFAULT 0,
    currency         char(3)     NOT NULL,
    reason           text        NOT NULL,
    idempotency_key  text        NOT NULL,
    issued_at        timestamptz NOT NULL,
    recorded_by      text        NOT NULL,
    PRIMARY KEY (issuer, series, number),
    UNIQUE (billing_account, idempotency_key)
);
CREATE INDEX credit_notes_invoice ON credit_notes (invoice_id);

-- What a payment or credit note paid of which invoice (as Redis allocated it).
CREATE TABLE allocations (
    application_id   text   NOT NULL,
    invoice_id       text   NOT NULL,
    amount_minor     bigint NOT NULL CHECK (amount_minor > 0),
    PRIMARY KEY (application_id, invoice_id)
);
CREATE INDEX allocations_invoice ON allocations (invoice_id);

-- Credit paid back to the customer (committed first, applied like a payment).
CREATE TABLE refunds (
    refund_id        text        PRIMARY KEY,
    billing_account  text        NOT NULL,
    reference        text        NOT NULL,
    amount_minor     bigint      NOT NULL CHECK (amount_minor > 0),
    reason           text        NOT NULL,
    refunded_at      timestamptz NOT NULL,
    actor            text        NOT NULL,
    UNIQUE (billing_account, reference)
);
CREATE INDEX refunds_reference ON refunds (reference);

-- Manual charges (positive) and credits (negative) for the next invoice.
CREATE TABLE adjustments (
    adjustment_id    text        PRIMARY KEY,
    billing_account  text        NOT NULL,
    amount_minor     bigint      NOT NULL CHECK (amount_minor <> 0),
    reason           text        NOT NULL,
    actor            text        NOT NULL,
    made_at          timestamptz NOT NULL
);

-- A dispute's life as rows: OPENED, then ACCEPTED or REJECTED (never an update).
CREATE TABLE dispute_events (
    dispute_id       text        NOT NULL,
    event            text        NOT NULL CHECK (event IN ('OPENED', 'ACCEPTED', 'REJECTED')),
    billing_account  text        NOT NULL,
    invoice_id       text        NOT NULL,
    line             text        NOT NULL DEFAULT '',
    amount_minor     bigint      NOT NULL,
    reason           text        NOT NULL,
    actor            text        NOT NULL,
    occurred_at      timestamptz NOT NULL,
    credit_note_id   text        NOT NULL DEFAULT '',
    PRIMARY KEY (dispute_id, event)
);

-- No dunning of the account until until_date (the API's PromiseToPay names no amount).
CREATE TABLE promises_to_pay (
    promise_id       text        PRIMARY KEY,
    billing_account  text        NOT NULL,
    until_date       date        NOT NULL,
    actor            text        NOT NULL,
    made_at          timestamptz NOT NULL
);

-- Each step of the dunning ladder taken for an invoice, once.
CREATE TABLE dunning_steps (
    billing_account  text        NOT NULL,
    invoice_id       text        NOT NULL,
    step             text        NOT NULL,
    taken_at         timestamptz NOT NULL,
    overdue_minor    bigint      NOT NULL,
    PRIMARY KEY (billing_account, invoice_id, step)
);

-- The outbox towards Redis: a movement to apply to the account's headroom, committed in
-- the movement's transaction: application_id is '<kind>:<movement_id>'; the Redis script
-- keeps the movement's record key (its idempotency key) so it applies once.
CREATE TABLE billing_applications (
    application_id   text        PRIMARY KEY,
    kind             text        NOT NULL CHECK (kind IN ('PAYMENT', 'CREDIT_NOTE', 'REFUND', 'ADJUSTMENT')),
    movement_id      text        NOT NULL,
    billing_account  text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);

-- One row per application once Redis has applied it (APPLIED) or refused it (REFUSED:
-- the movement is void; detail says why). Pending = no row here.
CREATE TABLE billing_applied (
    application_id   text        PRIMARY KEY,
    outcome          text        NOT NULL CHECK (outcome IN ('APPLIED', 'REFUSED')),
    detail           text        NOT NULL DEFAULT '',
    applied_at       timestamptz NOT NULL DEFAULT now()
);
"""

# For analysts. Movements count once Redis applied them (a refused one is void).
# Receivables ageing: the account's invoices less what its payments and credit notes
# (less refunds of credit) cover, oldest due first (as pay.lua allocates), per bucket of days past
# the due date as of today (UTC).
VIEWS = """
CREATE VIEW receivables_ageing AS
WITH covered AS (
    SELECT ba, sum(amount)::bigint AS amount FROM (
        SELECT p.billing_account AS ba, p.amount_minor AS amount
        FROM payments p JOIN billing_applied a ON a.application_id = 'PAYMENT:' || p.payment_id
        WHERE a.outcome = 'APPLIED'
        UNION ALL
        SELECT c.billing_account, c.amount_minor
        FROM credit_notes c JOIN billing_applied a ON a.application_id = 'CREDIT_NOTE:' || c.credit_note_id
        WHERE a.outcome = 'APPLIED'
        UNION ALL
        SELECT r.billing_account, -r.amount_minor
        FROM refunds r JOIN billing_applied a ON a.application_id = 'REFUND:' || r.refund_id
        WHERE a.outcome = 'APPLIED'
    ) m GROUP BY ba
), running AS (
    SELECT i.billing_account, i.currency, i.invoice_id, i.due_date, i.total_minor,
           sum(i.total_minor) OVER (PARTITION BY i.billing_account ORDER BY i.due_date, i.invoice_id) AS upto,
           coalesce(c.amount, 0) AS covered
    FROM invoices i LEFT JOIN covered c ON c.ba = i.billing_account
), open AS (
    SELECT billing_account, currency, (current_date - due_date) AS days,
           greatest(least(upto - covered, total_minor), 0) AS open_minor
    FROM running
)
SELECT billing_account, currency,
       sum(open_minor) FILTER (WHERE days < 0)::bigint AS not_due_minor,
       sum(open_minor) FILTER (WHERE days BETWEEN 0 AND 30)::bigint AS days_0_30_minor,
       sum(open_minor) FILTER (WHERE days BETWEEN 31 AND 60)::bigint AS days_31_60_minor,
       sum(open_minor) FILTER (WHERE days BETWEEN 61 AND 90)::bigint AS days_61_90_minor,
       sum(open_minor) FILTER (WHERE days > 90)::bigint AS days_over_90_minor,
       sum(open_minor)::bigint AS open_minor
FROM open
GROUP BY billing_account, currency
HAVING sum(open_minor) > 0;
COMMENT ON VIEW receivables_ageing IS
    'open amount per billing account by days past due (minor units; payments, credit notes cover the oldest first)';

CREATE VIEW payments_per_channel AS
SELECT date_trunc('month', p.received_at AT TIME ZONE 'UTC')::date AS month, p.channel, p.currency,
       count(*) AS payments, sum(p.amount_minor)::bigint AS amount_minor
FROM payments p JOIN billing_applied a ON a.application_id = 'PAYMENT:' || p.payment_id
WHERE a.outcome = 'APPLIED'
GROUP BY 1, 2, 3;
COMMENT ON VIEW payments_per_channel IS 'payments applied per UTC month and channel (minor units)';
"""

IMMUTABLE = (
    "payments",
    "credit_notes",
    "allocations",
    "refunds",
    "adjustments",
    "dispute_events",
    "promises_to_pay",
    "dunning_steps",
    "billing_applications",
    "billing_applied",
)


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
    op.execute("DROP VIEW payments_per_channel, receivables_ageing")
    op.execute(f"DROP TABLE {', '.join(reversed(IMMUTABLE))}")
