"""Customers and the corporate tree of organisation units as the system of record.

A customer is one immutable ``customers`` row (what never changes: kind, creation, the
identity document's type and issuing country, the country of its address) and its
``customer_versions``, one row per change (created, state, renamed, credit, withdrawn),
the highest version being what it is now. The personal fields (name, street, city,
postal code, masked document number, email) are one sealed value per version
(``provisioning/sealing.py``, the same keys and rotation as the care records); the
columns an analyst counts by (kind, state, credit class, time) stay clear. A unit is one
immutable ``org_units`` row and its ``org_unit_versions`` (added, moved, renamed): its
parent, name and whether it pays for its lines itself. Ids are the CRM's (Redis's
counters, allocated by the order that makes them), so an order run again after a crash
writes the same rows (``ON CONFLICT DO NOTHING``).

The server role reads and appends; it updates in place only the sealed column of a
version, which a key rotation seals again (``provisioning/customer_records.reseal``).

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision: str | None = "0011"
branch_labels = None
depends_on = None

APP = "charging_app"
READER = "charging_reader"
IMMUTABLE = ("customers", "org_units", "org_unit_versions")
# What the server changes in place here, in 0009's words (``IN_PLACE``): a key rotation
# seals a version's personal data again.
IN_PLACE: dict[str, str] = {"customer_versions": "UPDATE (sealed_personal)"}

TABLES = """
CREATE TABLE customers (
    customer_id      bigint      PRIMARY KEY,
    kind             text        NOT NULL CHECK (kind IN ('INDIVIDUAL', 'CORPORATE')),
    created_at       timestamptz NOT NULL,
    country          text        NOT NULL DEFAULT '',
    document_type    text        NOT NULL DEFAULT '',
    document_country text        NOT NULL DEFAULT '',
    recorded_by      text        NOT NULL
);
CREATE INDEX customers_kind ON customers (kind, customer_id);

-- Every version of a customer, the first at its creation; the latest is the customer now.
CREATE TABLE customer_versions (
    customer_id         bigint      NOT NULL REFERENCES customers,
    version_no          integer     NOT NULL CHECK (version_no >= 1),
    state               text        NOT NULL CHECK (state IN ('PENDING', 'ACTIVE', 'TERMINATED', 'WITHDRAWN')),
    credit_class        text        NOT NULL DEFAULT '',
    credit_limit_micros bigint      NOT NULL DEFAULT 0,
    deposit_micros      bigint      NOT NULL DEFAULT 0,
    postpaid_allowed    boolean     NOT NULL DEFAULT false,
    max_lines           integer     NOT NULL DEFAULT 0,
    sealed_personal     text        NOT NULL,
    change              text        NOT NULL
                        CHECK (change IN ('created', 'state', 'renamed', 'credit', 'withdrawn', 'moved')),
    occurred_at         timestamptz NOT NULL,
    changed_by          text        NOT NULL,
    PRIMARY KEY (customer_id, version_no)
);

CREATE TABLE org_units (
    unit_id          bigint      PRIMARY KEY,
    customer_id      bigint      NOT NULL REFERENCES customers,
    created_at       timestamptz NOT NULL,
    recorded_by      text        NOT NULL
);
CREATE INDEX org_units_customer ON org_units (customer_id, unit_id);

-- Every version of a unit: where it hangs in the tree (no parent: the company, the
-- root), its name and whether it pays for its lines itself.
CREATE TABLE org_unit_versions (
    unit_id          bigint      NOT NULL REFERENCES org_units,
    version_no       integer     NOT NULL CHECK (version_no >= 1),
    parent_id        bigint      REFERENCES org_units,
    name             text        NOT NULL,
    pays_itself      boolean     NOT NULL,
    change           text        NOT NULL CHECK (change IN ('added', 'moved', 'renamed', 'pays', 'moved_from_redis')),
    occurred_at      timestamptz NOT NULL,
    changed_by       text        NOT NULL,
    PRIMARY KEY (unit_id, version_no)
);

-- For analysts: per UTC month and kind, the customers made (not withdrawn since), and
-- those that became ACTIVE or TERMINATED that month (churn), from the versions.
CREATE VIEW customers_per_period AS
WITH moves AS (
    SELECT v.customer_id, v.state, v.occurred_at,
           lag(v.state) OVER (PARTITION BY v.customer_id ORDER BY v.version_no) AS before
    FROM customer_versions v
),
latest AS (
    SELECT DISTINCT ON (customer_id) customer_id, state FROM customer_versions
    ORDER BY customer_id, version_no DESC
),
events AS (
    SELECT c.customer_id, c.kind, c.created_at AS at, 'new' AS what
    FROM customers c JOIN latest l USING (customer_id) WHERE l.state <> 'WITHDRAWN'
    UNION ALL
    SELECT m.customer_id, c.kind, m.occurred_at, lower(m.state)
    FROM moves m JOIN customers c USING (customer_id)
    WHERE m.state IN ('ACTIVE', 'TERMINATED') AND m.before IS DISTINCT FROM m.state
)
SELECT date_trunc('month', at AT TIME ZONE 'UTC')::date AS month, kind,
       count(*) FILTER (WHERE what = 'new') AS new_customers,
       count(*) FILTER (WHERE what = 'active') AS activated,
       count(*) FILTER (WHERE what = 'terminated') AS terminated
FROM events
GROUP BY 1, 2;
COMMENT ON VIEW customers_per_period IS
    'per UTC month and kind: customers made (not withdrawn), and those that became ACTIVE or TERMINATED';
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
    # Like 0009 for the care tables: SELECT and INSERT come from its default privileges;
    # a key rotation seals a version's personal data again in place. The reader role reads
    # the view (0004's default privileges only cover what the role that ran 0004 makes).
    grants = "\n".join(f"        GRANT {what} ON {table} TO {APP};" for table, what in IN_PLACE.items())
    op.execute(
        f"""
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP}') THEN
        GRANT SELECT, INSERT ON customers, customer_versions, org_units, org_unit_versions TO {APP};
        GRANT SELECT ON customers_per_period TO {APP};
{grants}
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER}') THEN
        GRANT SELECT ON customers_per_period TO {READER};
    END IF;
END
$$;
"""
    )


def downgrade() -> None:
    op.execute(
        "DROP VIEW customers_per_period; DROP TABLE org_unit_versions; DROP TABLE org_units; "
        "DROP TABLE customer_versions; DROP TABLE customers"
    )
