"""Views for analysts on the usage records: the customer base and its churn per month, and
usage per subscriber and day; and the cause of a usage record that is not an ordinary
rated use (``usage_records.cause``: usage answered 4011, a session released by the
supervision sweeper; ``charging/cdrs.py`` CAUSES).

The customers themselves are still kept in Redis (the CRM), so the base is measured from
what the system of record holds: an account is **active** in a UTC month when it has at
least one usage record then (a rated use, a refund, a bundle sold); **new** in the month of
its first record; **churned** in a month when it was active the month before and is not in
this one (it may come back: it is then active again, not new). A month with no activity
at all but churn shows with its churn. Money in micros, as in ``usage_records``.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision: str | None = "0006"
branch_labels = None
depends_on = None

READER = "charging_reader"
VIEW_NAMES = ("customer_base_per_period", "usage_per_subscriber_day")

COLUMN = """
ALTER TABLE usage_records ADD COLUMN cause text NOT NULL DEFAULT '';
COMMENT ON COLUMN usage_records.cause IS
    'empty for a rated use; credit_control_not_applicable (answered 4011: emergency, toll-free, no cost), '
    'supervision_timeout (a session released by the sweeper: no units, its reservations given back)';
"""

VIEWS = """
CREATE VIEW usage_per_subscriber_day AS
SELECT (u.occurred_at AT TIME ZONE 'UTC')::date AS day, u.account, u.msisdn, u.service, u.unit,
       count(*) AS records, sum(u.units)::bigint AS units, sum(u.cost_micros)::bigint AS cost_micros,
       sum(u.money_micros)::bigint AS money_micros, bool_or(u.roaming) AS roaming
FROM usage_records u
GROUP BY 1, 2, 3, 4, 5;
COMMENT ON VIEW usage_per_subscriber_day IS
    'usage records per UTC day, account, line (MSISDN), service and unit: how many, units, cost and money (micros)';

CREATE VIEW customer_base_per_period AS
WITH active AS (
    SELECT DISTINCT date_trunc('month', occurred_at AT TIME ZONE 'UTC')::date AS month, account
    FROM usage_records
),
first_month AS (
    SELECT account, min(month) AS month FROM active GROUP BY account
),
counts AS (
    SELECT month, count(*) AS active_accounts FROM active GROUP BY month
),
new AS (
    SELECT month, count(*) AS new_accounts FROM first_month GROUP BY month
),
churn AS (
    SELECT (p.month + interval '1 month')::date AS month, count(*) AS churned_accounts
    FROM active p
    LEFT JOIN active c ON c.account = p.account AND c.month = (p.month + interval '1 month')::date
    WHERE c.account IS NULL
    GROUP BY 1
),
months AS (
    SELECT month FROM counts UNION SELECT month FROM churn
)
SELECT m.month,
       coalesce(a.active_accounts, 0) AS active_accounts,
       coalesce(n.new_accounts, 0) AS new_accounts,
       coalesce(c.churned_accounts, 0) AS churned_accounts,
       coalesce(b.active_accounts, 0) AS active_before,
       CASE WHEN coalesce(b.active_accounts, 0) = 0 THEN NULL
            ELSE round(100.0 * coalesce(c.churned_accounts, 0) / b.active_accounts, 2) END AS churn_percent
FROM months m
LEFT JOIN counts a ON a.month = m.month
LEFT JOIN new n ON n.month = m.month
LEFT JOIN churn c ON c.month = m.month
LEFT JOIN counts b ON b.month = (m.month - interval '1 month')::date
ORDER BY m.month;
COMMENT ON VIEW customer_base_per_period IS
    'per UTC month: accounts with usage (active), first seen (new), active the month before and not now (churned)';
"""


def upgrade() -> None:
    op.execute(COLUMN)
    op.execute(VIEWS)
    # The reader role gets them explicitly: the default privileges of 0004 only cover what
    # the role that ran 0004 makes (v0004_reader_role.py).
    op.execute(
        f"""
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER}') THEN
        GRANT SELECT ON {", ".join(VIEW_NAMES)} TO {READER};
    END IF;
END
$$;
"""
    )


def downgrade() -> None:
    op.execute(f"DROP VIEW {', '.join(VIEW_NAMES)}")
    op.execute("ALTER TABLE usage_records DROP COLUMN cause")
