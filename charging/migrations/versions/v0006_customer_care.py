"""Customer care as the system of record: interactions, trouble tickets and each change
of a ticket's state as immutable rows (a ticket's state is its latest change).

Notes, summaries and references are free text about a person: they are sealed by the
server (``provisioning/sealing.py``, the same keys and rotation as the rest) before they
reach a row; the columns an analyst counts by (customer, channel, topic, state, time)
stay clear. Ids continue the series Redis counted before (``provisioning/care_legacy.py``
moves those records once and sets the sequences past them).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels = None
depends_on = None

TABLES = """
CREATE SEQUENCE interaction_ids;
CREATE TABLE interactions (
    interaction_id   bigint      PRIMARY KEY DEFAULT nextval('interaction_ids'),
    customer_id      text        NOT NULL,
    channel          text        NOT NULL CHECK (channel IN ('PHONE', 'EMAIL', 'SHOP', 'CHAT', 'LETTER')),
    sealed_note      text        NOT NULL,
    sealed_refs      text        NOT NULL,
    occurred_at      timestamptz NOT NULL,
    recorded_by      text        NOT NULL
);
ALTER SEQUENCE interaction_ids OWNED BY interactions.interaction_id;
CREATE INDEX interactions_customer ON interactions (customer_id, interaction_id);

CREATE SEQUENCE ticket_ids;
CREATE TABLE tickets (
    ticket_id        bigint      PRIMARY KEY DEFAULT nextval('ticket_ids'),
    customer_id      text        NOT NULL,
    topic            text        NOT NULL CHECK (topic IN ('NETWORK', 'INVOICE', 'SERVICE', 'OTHER')),
    line             text        NOT NULL DEFAULT '',
    invoice          text        NOT NULL DEFAULT '',
    sealed_summary   text        NOT NULL,
    opened_at        timestamptz NOT NULL,
    opened_by        text        NOT NULL
);
ALTER SEQUENCE ticket_ids OWNED BY tickets.ticket_id;
CREATE INDEX tickets_customer ON tickets (customer_id, ticket_id);

-- Every state a ticket took, the first being OPEN; never updated.
CREATE TABLE ticket_changes (
    ticket_id        bigint      NOT NULL REFERENCES tickets,
    change_no        integer     NOT NULL CHECK (change_no >= 1),
    state            text        NOT NULL CHECK (state IN ('OPEN', 'IN_PROGRESS', 'RESOLVED', 'CLOSED')),
    sealed_note      text        NOT NULL,
    occurred_at      timestamptz NOT NULL,
    changed_by       text        NOT NULL,
    PRIMARY KEY (ticket_id, change_no)
);

-- For analysts: tickets per month of opening, topic and the state they are in now.
CREATE VIEW tickets_per_period AS
WITH latest AS (
    SELECT DISTINCT ON (ticket_id) ticket_id, state FROM ticket_changes ORDER BY ticket_id, change_no DESC
)
SELECT date_trunc('month', t.opened_at AT TIME ZONE 'UTC')::date AS month, t.topic, l.state,
       count(*) AS tickets
FROM tickets t JOIN latest l USING (ticket_id)
GROUP BY 1, 2, 3;
COMMENT ON VIEW tickets_per_period IS 'trouble tickets per UTC month of opening, topic and current state';
"""


def upgrade() -> None:
    op.execute(TABLES)


def downgrade() -> None:
    op.execute("DROP VIEW tickets_per_period; DROP TABLE ticket_changes; DROP TABLE tickets; DROP TABLE interactions")
