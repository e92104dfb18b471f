"""The foundation: usage records, audit, invoices and their numbers.

Usage records and the audit trail partitioned by month, with the functions that make and
drop partitions; invoices with their gapless numbers; triggers keeping rows immutable.

Revision ID: 0001
Revises: none
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels = None
depends_on = None

# Partitions are UTC months named <table>_yYYYYmMM. Bounds are written with an explicit
# +00: a bare date as a timestamptz bound would be read in the session's time zone, and
# partitions made from sessions in different zones would then overlap or leave gaps.
PARTITION_FUNCTIONS = """
CREATE FUNCTION create_month_partitions(parent text, first_month date, last_month date)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    month date := date_trunc('month', first_month)::date;
    made integer := 0;
    name text;
BEGIN
    -- Servers maintaining partitions at the same moment take turns.
    PERFORM pg_advisory_xact_lock(hashtext('partitions:' || parent));
    WHILE month <= last_month LOOP
        name := format('%s_y%sm%s', parent, to_char(month, 'YYYY'), to_char(month, 'MM'));
        IF to_regclass(quote_ident(name)) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                name, parent, month::text || ' 00:00:00+00', (month + interval '1 month')::date::text || ' 00:00:00+00'
            );
            made := made + 1;
        END IF;
        month := (month + interval '1 month')::date;
    END LOOP;
    RETURN made;
END $$;

COMMENT ON FUNCTION create_month_partitions(text, date, date) IS
    'Create the missing monthly partitions of parent from first_month to last_month; answers how many.';

CREATE FUNCTION drop_month_partitions(parent text, before_month date)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    part record;
    dropped integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('partitions:' || parent));
    FOR part IN
        SELECT c.relname AS name,
               make_date(substring(c.relname FROM '_y(\\d{4})m\\d{2}$')::int,
                         substring(c.relname FROM '_y\\d{4}m(\\d{2})$')::int, 1) AS month
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = to_regclass(quote_ident(parent))
          AND c.relname ~ ('^' || parent || '_y\\d{4}m\\d{2}$')
    LOOP
        IF part.month < before_month THEN
            EXECUTE format('DROP TABLE %I', part.name);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END $$;

COMMENT ON FUNCTION drop_month_partitions(text, date) IS
    'Retention: drop the monthly partitions of parent for months before before_month; answers how many were dropped.';

CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are immutable: a correction is a new row', TG_ARGV[0]
        USING ERRCODE = 'integrity_constraint_violation';
END $$;
"""

TABLES = """
-- A usage record (CDR) for every rated use, prepaid and postpaid. The relay that moves
-- them from Redis delivers at least once: a repeated record has the same record_id AND
-- the same occurred_at (both come from the record, never from the time of insertion), so
-- the primary key, which must contain the partition key, still makes it unique.
CREATE TABLE usage_records (
    record_id        text        NOT NULL,
    occurred_at      timestamptz NOT NULL,
    account          text        NOT NULL,
    msisdn           text        NOT NULL DEFAULT '',
    imsi             text        NOT NULL DEFAULT '',
    plan_id          text        NOT NULL DEFAULT '',
    catalog_version  integer,
    session_id       text        NOT NULL DEFAULT '',
    request_number   integer,
    event_id         text        NOT NULL DEFAULT '',
    rating_group     integer,
    service          text        NOT NULL,
    called_party     text        NOT NULL DEFAULT '',
    zone             text        NOT NULL DEFAULT '',
    band             text        NOT NULL DEFAULT '',
    visited_network  text        NOT NULL DEFAULT '',
    roaming          boolean     NOT NULL DEFAULT false,
    unit             text        NOT NULL,
    units            bigint      NOT NULL CHECK (units >= 0),
    cost_micros      bigint      NOT NULL,
    money_micros     bigint      NOT NULL DEFAULT 0,
    bucket_units     jsonb       NOT NULL DEFAULT '{}',
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (record_id, occurred_at)
) PARTITION BY RANGE (occurred_at);
CREATE INDEX usage_records_msisdn ON usage_records (msisdn, occurred_at);
CREATE INDEX usage_records_account ON usage_records (account, occurred_at);
COMMENT ON COLUMN usage_records.money_micros IS 'the part of cost_micros paid from the money balance';
COMMENT ON COLUMN usage_records.bucket_units IS 'units paid from buckets: {"<bucket id>": units}';

-- Who did what to which record, and why. Append-only.
CREATE TABLE audit (
    entry_id     text        NOT NULL DEFAULT gen_random_uuid()::text,
    occurred_at  timestamptz NOT NULL,
    actor        text        NOT NULL,
    action       text        NOT NULL,
    subject      text        NOT NULL,
    reason       text        NOT NULL DEFAULT '',
    details      jsonb       NOT NULL DEFAULT '{}',
    PRIMARY KEY (entry_id, occurred_at)
) PARTITION BY RANGE (occurred_at);
CREATE INDEX audit_subject ON audit (subject, occurred_at);

-- Gapless numbers: the counter row of an issuer's series is incremented in the same
-- transaction that inserts the numbered document, so a rollback gives the number back,
-- and the row lock makes concurrent issuers of one series take turns.
CREATE TABLE invoice_numbers (
    issuer       text   NOT NULL,
    series       text   NOT NULL,
    last_number  bigint NOT NULL CHECK (last_number >= 0),
    PRIMARY KEY (issuer, series)
);

CREATE FUNCTION next_invoice_number(p_issuer text, p_series text) RETURNS bigint
LANGUAGE sql AS $$
    INSERT INTO invoice_numbers AS n (issuer, series, last_number) VALUES (p_issuer, p_series, 1)
    ON CONFLICT (issuer, series) DO UPDATE SET last_number = n.last_number + 1
    RETURNING last_number
$$;
COMMENT ON FUNCTION next_invoice_number(text, text) IS
    'The next number of a series; call it in the transaction that inserts the document.';

-- Issued invoices; immutable (payments and credit notes are rows of their own). One per
-- billing account, period and kind: a repeated or resumed bill run cannot issue twice.
CREATE TABLE invoices (
    issuer           text        NOT NULL,
    series           text        NOT NULL,
    number           bigint      NOT NULL,
    invoice_id       text        NOT NULL UNIQUE,
    billing_account  text        NOT NULL,
    kind             text        NOT NULL DEFAULT 'periodic',
    period_start     date        NOT NULL,
    period_end       date        NOT NULL,
    issued_at        timestamptz NOT NULL,
    due_date         date        NOT NULL,
    currency         char(3)     NOT NULL,
    total_minor      bigint      NOT NULL,
    tax_minor        bigint      NOT NULL,
    document         jsonb       NOT NULL,
    PRIMARY KEY (issuer, series, number),
    UNIQUE (billing_account, period_start, period_end, kind),
    CHECK (period_start <= period_end)
);
CREATE INDEX invoices_account ON invoices (billing_account, issued_at);
"""

IMMUTABLE = ("usage_records", "audit", "invoices")


def upgrade() -> None:
    op.execute(PARTITION_FUNCTIONS)
    op.execute(TABLES)
    for table in IMMUTABLE:
        # Row triggers on a partitioned table are cloned onto every partition, present and future.
        op.execute(
            f"CREATE TRIGGER {table}_immutable BEFORE UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION refuse_change('{table}')"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION refuse_change('{table}')"
        )
    # Usable at once; the server's retention job keeps partitions ahead from then on.
    for table in ("usage_records", "audit"):
        op.execute(
            f"SELECT create_month_partitions('{table}', (now() AT TIME ZONE 'UTC')::date, "
            f"((now() AT TIME ZONE 'UTC') + interval '3 months')::date)"
        )


def downgrade() -> None:
    op.execute("DROP TABLE invoices, invoice_numbers, audit, usage_records")
    op.execute(
        "DROP FUNCTION next_invoice_number(text, text), refuse_change(), "
        "create_month_partitions(text, date, date), drop_month_partitions(text, date)"
    )
