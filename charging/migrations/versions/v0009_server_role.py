"""The server's role ``charging_app``: it reads and appends, and changes in place only
what the code really changes in place; it owns nothing.

Migrations run as the schema's owner (``charging migrate`` with
``CHARGING_DATABASE_MIGRATE_URL``, else ``CHARGING_DATABASE_URL``); the server connects as
a login role that is a member of ``charging_app`` (``CREATE ROLE charging_server LOGIN
PASSWORD '...' IN ROLE charging_app``; the embedded PostgreSQL makes that one itself, see
``charging/database_roles.py``). Not being the owner, it cannot drop or alter a table,
disable the triggers that keep rows immutable, or TRUNCATE.

The privileges follow one pattern, so that later migrations' tables are covered without
thinking about it:

* every base table: SELECT and INSERT (here for the existing ones, by default privileges
  for every table the owner makes later, partitions included); sequences: USAGE, SELECT;
* UPDATE or DELETE only in ``IN_PLACE`` below, table by table, where the code updates or
  deletes rows (the gapless counter rows; the sealed columns of care records, which a key
  rotation seals again; the care records' id sequences). A later migration adding a table the
  server changes in place grants it there, in the same words. Nothing else: the audit
  trail, issued invoices, payments, credit notes and usage records are append-only for
  the server, by privilege as well as by their triggers;
* ``alembic_version``: SELECT only (the server checks the schema's revision);
* the partition functions run as their owner (SECURITY DEFINER), executable by
  ``charging_app`` only: making a monthly partition needs the parent table's owner.

Like ``charging_reader`` (0004), the role is made here when the migrating user may make
roles; otherwise an administrator makes it first (``CREATE ROLE charging_app NOLOGIN``).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision: str | None = "0008"
branch_labels = None
depends_on = None

APP = "charging_app"
# table -> what the server does to its rows besides SELECT and INSERT
IN_PLACE: dict[str, str] = {
    "invoice_numbers": "UPDATE",  # next_invoice_number(): the counter row of a series
    # A key rotation seals the same text again in place (customer_care.reseal); moving a
    # ticket locks its row (SELECT ... FOR UPDATE needs an UPDATE privilege).
    "interactions": "UPDATE (sealed_note, sealed_refs)",
    "tickets": "UPDATE (sealed_summary)",
    "ticket_changes": "UPDATE (sealed_note)",
    # The ids of care records continue past what Redis counted (care_legacy: setval).
    "interaction_ids": "UPDATE",
    "ticket_ids": "UPDATE",
}
PARTITION_FUNCTIONS = ("create_month_partitions(text, date, date)", "drop_month_partitions(text, date)")


def _in_place_grants() -> str:
    return "\n".join(f"    GRANT {what} ON {table} TO {APP};" for table, what in IN_PLACE.items())


def _functions(statement: str) -> str:
    return "\n".join(f"    {statement.format(f=f)};" for f in PARTITION_FUNCTIONS)


def upgrade() -> None:
    op.execute(
        f"""
DO $$
DECLARE
    t record;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP}') THEN
        IF (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user) THEN
            CREATE ROLE {APP} NOLOGIN;
        ELSE
            RAISE NOTICE 'role {APP} does not exist and % may not create it: no grants made', current_user;
            RETURN;
        END IF;
    END IF;
    EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO {APP}', current_database());
    GRANT USAGE ON SCHEMA public TO {APP};
    FOR t IN
        SELECT c.relname FROM pg_class c
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') AND NOT c.relispartition
          AND c.relname <> 'alembic_version'
    LOOP
        EXECUTE format('GRANT SELECT, INSERT ON %I TO {APP}', t.relname);
    END LOOP;
    FOR t IN SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'v'
    LOOP
        EXECUTE format('GRANT SELECT ON %I TO {APP}', t.relname);
    END LOOP;
    GRANT SELECT ON alembic_version TO {APP};
    GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {APP};
    ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT ON TABLES TO {APP};
    ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {APP};
{_in_place_grants()}
{_functions("ALTER FUNCTION {f} SECURITY DEFINER SET search_path = public, pg_temp")}
{_functions("REVOKE EXECUTE ON FUNCTION {f} FROM PUBLIC")}
{_functions(f"GRANT EXECUTE ON FUNCTION {{f}} TO {APP}")}
END
$$;
"""
    )


def downgrade() -> None:
    # The role stays: other databases of the cluster may use it.
    op.execute(
        f"""
DO $$
BEGIN
{_functions("ALTER FUNCTION {f} SECURITY INVOKER RESET search_path")}
{_functions("GRANT EXECUTE ON FUNCTION {f} TO PUBLIC")}
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP}') THEN
{_functions(f"REVOKE EXECUTE ON FUNCTION {{f}} FROM {APP}")}
        ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE SELECT, INSERT ON TABLES FROM {APP};
        ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE USAGE, SELECT ON SEQUENCES FROM {APP};
        REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {APP};
        REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {APP};
        REVOKE USAGE ON SCHEMA public FROM {APP};
        EXECUTE format('REVOKE CONNECT, TEMPORARY ON DATABASE %I FROM {APP}', current_database());
    END IF;
END
$$;
"""
    )
