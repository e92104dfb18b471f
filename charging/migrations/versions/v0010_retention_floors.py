"""A floor under retention that the server cannot lower: the audit trail and the usage
records stay append-only for the server's role even through the partition functions.

``drop_month_partitions`` runs with its owner's rights (0009), so that the server's
retention job can drop whole months past retention. Without a floor, a server whose role
is taken over could ask it to drop last month's audit partition. Now the function keeps
at least ``retention_floors.months`` whole months before the current one (by the
database's own clock, not a date the caller passes), whatever it is asked: the server's
``CHARGING_*_RETENTION_MONTHS`` can keep more, never less. The floors belong to the
schema's owner (the server's role may read them, not change them): an operator whose
legal minimum differs sets it as the owner, ``UPDATE retention_floors SET months = 84
WHERE parent = 'audit'``. Defaults: the audit trail 120 months (ten years), usage
records 24, the server's own defaults.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision: str | None = "0009"
branch_labels = None
depends_on = None

APP = "charging_app"

UPGRADE = f"""
CREATE TABLE retention_floors (
    parent  text    PRIMARY KEY,
    months  integer NOT NULL CHECK (months >= 0)
);
INSERT INTO retention_floors VALUES ('audit', 120), ('usage_records', 24);
COMMENT ON TABLE retention_floors IS
    'whole months before the current one that drop_month_partitions always keeps (owner only)';
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP}') THEN
        REVOKE ALL ON retention_floors FROM {APP};
        GRANT SELECT ON retention_floors TO {APP};
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION drop_month_partitions(parent text, before_month date)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    part record;
    dropped integer := 0;
    floor_months integer;
    keep_from date;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('partitions:' || parent));
    SELECT f.months INTO floor_months FROM retention_floors f WHERE f.parent = drop_month_partitions.parent;
    IF floor_months IS NOT NULL THEN
        keep_from := (date_trunc('month', now() AT TIME ZONE 'UTC') - make_interval(months => floor_months))::date;
        IF before_month > keep_from THEN
            before_month := keep_from;
        END IF;
    END IF;
    FOR part IN
        SELECT c.relname AS name,
               make_date(substring(c.relname FROM '_y(\\d{{4}})m\\d{{2}}$')::int,
                         substring(c.relname FROM '_y\\d{{4}}m(\\d{{2}})$')::int, 1) AS month
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = to_regclass(quote_ident(parent))
          AND c.relname ~ ('^' || parent || '_y\\d{{4}}m\\d{{2}}$')
    LOOP
        IF part.month < before_month THEN
            EXECUTE format('DROP TABLE %I', part.name);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END $$;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    # The function as 0009 left it (its owner's rights, no floor), then the table.
    without_floor = UPGRADE[UPGRADE.index("CREATE OR REPLACE FUNCTION") :]
    for line in (
        "    floor_months integer;\n",
        "    keep_from date;\n",
    ):
        without_floor = without_floor.replace(line, "")
    start = without_floor.index("    SELECT f.months INTO floor_months")
    end = without_floor.index("    FOR part IN")
    op.execute(without_floor[:start] + without_floor[end:])
    op.execute("DROP TABLE retention_floors")
