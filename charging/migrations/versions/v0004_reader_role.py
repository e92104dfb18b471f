"""A read-only role for analysts: ``charging_reader`` may SELECT every table and view.

Analysts log in with roles of their own that are members of it
(``CREATE ROLE alice LOGIN PASSWORD '...' IN ROLE charging_reader``), so each can be
revoked alone; none of them can change a row. The default privileges give it what later
migrations and the monthly partitions add, as long as they are made by the role that runs
the migrations (the schema's owner). Roles belong to the whole cluster: the role is made
once, by a migration user allowed to (superuser or CREATEROLE); otherwise an administrator
makes it first (``CREATE ROLE charging_reader NOLOGIN``) and the grants follow here.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels = None
depends_on = None

READER = "charging_reader"


def upgrade() -> None:
    op.execute(
        f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER}') THEN
        IF (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user) THEN
            CREATE ROLE {READER} NOLOGIN;
        ELSE
            RAISE NOTICE 'role {READER} does not exist and % may not create it: no grants made', current_user;
            RETURN;
        END IF;
    END IF;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO {READER}', current_database());
    GRANT USAGE ON SCHEMA public TO {READER};
    GRANT SELECT ON ALL TABLES IN SCHEMA public TO {READER};
    ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {READER};
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
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER}') THEN
        ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE SELECT ON TABLES FROM {READER};
        REVOKE SELECT ON ALL TABLES IN SCHEMA public FROM {READER};
        REVOKE USAGE ON SCHEMA public FROM {READER};
        EXECUTE format('REVOKE CONNECT ON DATABASE %I FROM {READER}', current_database());
    END IF;
END
$$;
"""
    )
