"""Who connects to the system of record as what.

Three kinds of database role (the privileges are granted by the migrations, 0004 and 0009):

* the **owner** of the schema runs the migrations (``charging migrate`` on
  ``CHARGING_DATABASE_MIGRATE_URL``, else ``CHARGING_DATABASE_URL``): it makes and alters
  tables, and only it could drop a table or disable a trigger;
* the **server** connects as a login role that is a member of ``charging_app``: SELECT and
  INSERT everywhere, UPDATE only where the code updates in place (the gapless counters);
  the audit trail, issued invoices and every money movement are append-only for it;
* **analysts** log in as members of ``charging_reader``: SELECT only.

The embedded PostgreSQL (``make run``, no ``CHARGING_DATABASE_URL``) makes the server's
login role itself: ``charging_server``, with a generated password kept beside the
cluster (``server_password``, mode 0600), after the migrations have made ``charging_app``.
With an external PostgreSQL the operator makes it (docs/operations.md).
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

import psycopg
from psycopg import sql

log = logging.getLogger("charging.database")

APP_ROLE = "charging_app"
READER_ROLE = "charging_reader"
SERVER_LOGIN = "charging_server"


def password_in(path: Path, owner: tuple[int, int] | None = None) -> str:
    """The password kept in ``path`` (made on first use, 0600, chowned to ``owner``)."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
        if owner is not None:
            os.chown(path, *owner)
    return path.read_text().strip()


def ensure_login(owner_url: str, name: str, password: str, member_of: str = APP_ROLE) -> None:
    """Make (or bring up to date) the login role ``name``, a member of ``member_of``, as
    the owner at ``owner_url`` (which may make roles). Blocking."""
    with psycopg.connect(owner_url, autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
        verb = "ALTER" if found else "CREATE"
        # A role's password cannot be a bind parameter: quoted as a literal instead.
        conn.execute(
            sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(password)
            )
        )
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(member_of), sql.Identifier(name)))


OWNER_QUESTION = """
SELECT r.rolsuper OR r.rolbypassrls OR pg_has_role(current_user, c.relowner, 'USAGE')
FROM pg_roles r, pg_class c
WHERE r.rolname = current_user AND c.oid = to_regclass('public.audit')
"""


async def owner_problem(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> str | None:
    """Why the connection's role should not be the server's: it owns the schema (or is a
    superuser), so it could rewrite the audit trail and issued invoices; None when not."""
    row = await (await conn.execute(OWNER_QUESTION)).fetchone()
    if row is None or not row[0]:
        return None
    return (
        "the server connects to the database as the schema's owner or a superuser, who can rewrite "
        f"the audit trail and issued invoices: connect as a member of {APP_ROLE} and migrate with "
        "CHARGING_DATABASE_MIGRATE_URL (see docs/operations.md)"
    )
