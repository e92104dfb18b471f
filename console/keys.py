"""The console's Redis key names (its own ``{console}`` hash tag: staff and sessions are
not data of any account)."""

from __future__ import annotations

STAFF = "{console}:staff"  # set of staff names


def staff(name: str) -> str:
    """Hash: roles, password hash, disabled, created."""
    return f"{{console}}:staff:{name}"


def session(session_id: str) -> str:
    """Hash: the staff member and the session's CSRF token; expires with the session."""
    return f"{{console}}:session:{session_id}"


def staff_sessions(name: str) -> str:
    """Set of a staff member's session ids, ended together when the member is disabled."""
    return f"{{console}}:staff-sessions:{name}"


def sign_in_failures(name: str) -> str:
    """Counter of failed sign-ins for a name, expiring with the lock-out window."""
    return f"{{console}}:sign-in-failures:{name}"
