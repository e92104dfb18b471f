"""Orders with their steps, applications' decisions and lines' history as rows.

An order is a row written when it is decided (its kind, customer, account, line, credit
terms and the problems with its fields; never personal data: the request it was made
from stays in Redis only while the order runs). Every step it took (application checks,
screening, credit decision with its reasons, the offer, the line, provisioning requested
and acknowledged) is a row of ``order_steps``, every status it reached (IN_PROGRESS or
REJECTED when decided, COMPLETED when the network acknowledged) a row of
``order_states``: an order's status is its latest, and it has one decision (a unique
index keeps a second IN_PROGRESS or REJECTED out). A line's history is ``line_changes``:
each state it took (and its plan), when, why (``cause``, a termination's ``reason``) and
by which order. All four are immutable and written idempotently (each row's key is what
made it unique: the order id with the step's position or the status; a line change's id
names the line, order, state, plan and the line's count of changes before it), so the
record outbox's relay, an order run and the legacy move may each write the same row: it
is kept once (``provisioning/order_records.py``, ``provisioning/orders_legacy.py``). An
outbox entry PostgreSQL refuses is set aside in ``order_rows_refused``.

The server's role gets SELECT and INSERT by the default privileges of 0009 (nothing here
is changed in place).

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision: str | None = "0012"
branch_labels = None
depends_on = None

IMMUTABLE = ("orders", "order_steps", "order_states", "line_changes", "order_rows_refused")
LINE_STATES = "'pending_activation', 'active', 'barred_outgoing', 'suspended', 'terminated'"

TABLES = f"""
CREATE TABLE orders (
    crm_order_id         text        PRIMARY KEY,
    seq                  bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    kind                 text        NOT NULL,
    customer_id          text        NOT NULL DEFAULT '',
    account_id           text        NOT NULL DEFAULT '',
    msisdn               text        NOT NULL DEFAULT '',
    submitted_at         timestamptz,
    credit_class         text        NOT NULL DEFAULT '',
    credit_limit_micros  bigint      NOT NULL DEFAULT 0,
    deposit_micros       bigint      NOT NULL DEFAULT 0,
    problems             jsonb       NOT NULL DEFAULT '[]',
    decided_at           timestamptz NOT NULL
);
CREATE INDEX orders_customer ON orders (customer_id, seq);
CREATE INDEX orders_msisdn ON orders (msisdn, seq);

-- Every step an order took, in the order taken; never updated.
CREATE TABLE order_steps (
    crm_order_id         text        NOT NULL REFERENCES orders,
    position             integer     NOT NULL CHECK (position >= 0),
    step                 text        NOT NULL,
    outcome              text        NOT NULL,
    reasons              text[]      NOT NULL,
    at                   timestamptz NOT NULL,
    PRIMARY KEY (crm_order_id, position)
);

-- Every status an order reached after SUBMITTED: its status is the latest.
CREATE TABLE order_states (
    crm_order_id         text        NOT NULL REFERENCES orders,
    status               text        NOT NULL CHECK (status IN ('IN_PROGRESS', 'REJECTED', 'COMPLETED')),
    at                   timestamptz NOT NULL,
    PRIMARY KEY (crm_order_id, status)
);
-- One decision per order (IN_PROGRESS or REJECTED): a second one is kept out.
CREATE UNIQUE INDEX order_states_decision ON order_states (crm_order_id) WHERE status <> 'COMPLETED';

-- A line's history: each state (and plan) it took, when, why and by which order.
CREATE TABLE line_changes (
    change_id            text        PRIMARY KEY,
    seq                  bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    msisdn               text        NOT NULL,
    customer_id          text        NOT NULL,
    account_id           text        NOT NULL,
    state                text        NOT NULL CHECK (state IN ({LINE_STATES})),
    plan_id              text        NOT NULL,
    crm_order_id         text        NOT NULL,
    cause                text        NOT NULL CHECK (cause IN ('ordered', 'acknowledged', 'found')),
    reason               text        NOT NULL DEFAULT '',
    at                   timestamptz NOT NULL
);
CREATE INDEX line_changes_msisdn ON line_changes (msisdn, at, seq);

-- Record outbox entries PostgreSQL refused (a value a table's checks refuse): set aside
-- here, once each, so the rest of the relay's round is written (order_store.py).
CREATE TABLE order_rows_refused (
    entry_id             text        PRIMARY KEY,
    entry                text        NOT NULL,
    error                text        NOT NULL,
    at                   timestamptz NOT NULL DEFAULT now()
);

-- For analysts: orders per UTC month of decision, kind and current status.
CREATE VIEW orders_per_period AS
WITH latest AS (
    SELECT DISTINCT ON (crm_order_id) crm_order_id, status FROM order_states
    ORDER BY crm_order_id, CASE status WHEN 'COMPLETED' THEN 1 ELSE 0 END DESC, at DESC
)
SELECT date_trunc('month', o.decided_at AT TIME ZONE 'UTC')::date AS month, o.kind, l.status,
       count(*) AS orders
FROM orders o JOIN latest l USING (crm_order_id)
GROUP BY 1, 2, 3;
COMMENT ON VIEW orders_per_period IS 'orders per UTC month of decision, kind and current status';
"""


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
        GRANT SELECT, INSERT ON orders, order_steps, order_states, line_changes, order_rows_refused TO charging_app;
        GRANT SELECT ON orders_per_period TO charging_app;
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'charging_reader') THEN
        GRANT SELECT ON orders_per_period TO charging_reader;
    END IF;
END
$$;
"""
    )


def downgrade() -> None:
    op.execute(
        "DROP VIEW orders_per_period; DROP TABLE order_rows_refused, line_changes, order_states, order_steps, orders"
    )
