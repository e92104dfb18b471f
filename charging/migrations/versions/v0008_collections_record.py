"""Disputes, promises to pay and dunning steps as the system of record: what 0005's tables
need to be written first and applied in Redis afterwards, as payments are.

- ``billing_applications`` takes two more kinds: ``DISPUTE`` (a dispute opened, accepted
  or rejected: ``postpaid/disputes.py``) and ``DUNNING`` (one dunning decision of one
  account: ``postpaid/dunning_record.py``), and a ``payload``: what the Redis script is to
  apply (a dunning decision's steps, charges and notifications), so the job can finish an
  application a crash left without deciding again.
- ``dunning_steps`` says what each step did: the late fee it charged, the channel it
  notified on ('' when passed over on catch-up) and the application that carried it out.
- ``dispute_events`` names the customer (the CRM lists a customer's disputes).
- ``promise_outcomes``: a promise to pay is KEPT (nothing collectible overdue by its
  day) or BROKEN, decided once by the dunning evaluation after it.

New tables are readable by ``charging_reader`` (0004's default privileges; granted here
too for a database whose migrations ran as another role).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision: str | None = "0007"
branch_labels = None
depends_on = None

KINDS_BEFORE = "'PAYMENT', 'CREDIT_NOTE', 'REFUND', 'ADJUSTMENT'"
KINDS = KINDS_BEFORE + ", 'DISPUTE', 'DUNNING'"

UPGRADE = f"""
ALTER TABLE billing_applications DROP CONSTRAINT billing_applications_kind_check;
ALTER TABLE billing_applications ADD CONSTRAINT billing_applications_kind_check CHECK (kind IN ({KINDS}));
ALTER TABLE billing_applications ADD COLUMN payload text NOT NULL DEFAULT '';
CREATE INDEX billing_applications_account ON billing_applications (billing_account, kind);

ALTER TABLE dunning_steps ADD COLUMN late_fee_minor bigint NOT NULL DEFAULT 0;
ALTER TABLE dunning_steps ADD COLUMN channel text NOT NULL DEFAULT '';
ALTER TABLE dunning_steps ADD COLUMN application_id text NOT NULL DEFAULT '';

ALTER TABLE dispute_events ADD COLUMN customer_id text NOT NULL DEFAULT '';
CREATE INDEX dispute_events_account ON dispute_events (billing_account, occurred_at);
CREATE INDEX dispute_events_customer ON dispute_events (customer_id, occurred_at);
CREATE INDEX dispute_events_invoice ON dispute_events (invoice_id);
CREATE INDEX promises_to_pay_account ON promises_to_pay (billing_account, made_at);

-- A promise's outcome, once: KEPT or BROKEN, with the overdue amount it was judged on.
CREATE TABLE promise_outcomes (
    promise_id       text        PRIMARY KEY REFERENCES promises_to_pay (promise_id),
    outcome          text        NOT NULL CHECK (outcome IN ('KEPT', 'BROKEN')),
    overdue_minor    bigint      NOT NULL,
    decided_at       timestamptz NOT NULL
);
CREATE TRIGGER promise_outcomes_immutable BEFORE UPDATE OR DELETE ON promise_outcomes
    FOR EACH ROW EXECUTE FUNCTION refuse_change('promise_outcomes');
CREATE TRIGGER promise_outcomes_no_truncate BEFORE TRUNCATE ON promise_outcomes
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change('promise_outcomes');

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'charging_reader') THEN
        GRANT SELECT ON promise_outcomes TO charging_reader;
    END IF;
END
$$;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(
        f"""
DROP TABLE promise_outcomes;
DROP INDEX promises_to_pay_account, dispute_events_invoice, dispute_events_account, dispute_events_customer,
    billing_applications_account;
ALTER TABLE dispute_events DROP COLUMN customer_id;
ALTER TABLE dunning_steps DROP COLUMN application_id, DROP COLUMN channel, DROP COLUMN late_fee_minor;
ALTER TABLE billing_applications DROP COLUMN payload;
ALTER TABLE billing_applications DROP CONSTRAINT billing_applications_kind_check;
ALTER TABLE billing_applications ADD CONSTRAINT billing_applications_kind_check CHECK (kind IN ({KINDS_BEFORE}));
"""
    )
