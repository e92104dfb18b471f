"""Errors raised by the charging domain.

    ChargingError
    ├── InvalidRequest      a field of the request is malformed (names the field)
    ├── NotFound            an addressed subscriber or tariff does not exist
    ├── Conflict            the request collides with stored state (reused request
    │                       number or idempotency key with another payload, duplicate id)
    ├── LimitExceeded       the change would take a balance past its stated bounds
    ├── InUse               the change would strand what is in use (a catalog dropping
    │                       a plan that subscribers are on)
    ├── StorageUnavailable  Redis cannot answer now: unreachable, loading its dataset,
    │                       busy with a script, or without its master (retryable)
    └── DeadlineExpired     the caller's deadline passed before the request was sent to
                            Redis: nothing changed (``admission.py``)

Outcomes that Diameter expresses as result codes (4012 credit limit reached, 5030 user
unknown, ...) are answers, not errors. The gRPC edge maps each error class to one status
in ``status.py``.

Apart from the tree, ``StartupError``: the server cannot start (its gRPC or metrics
address or its data directory is in use, redis-server or PostgreSQL is missing or not
ready in time, the database schema is not the one of this code).
``charging serve`` prints it as one line on stderr and exits with status 1.
"""

from __future__ import annotations


class ChargingError(Exception):
    """Base of all domain errors."""


class InvalidRequest(ChargingError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotFound(ChargingError):
    pass


class Conflict(ChargingError):
    pass


class LimitExceeded(ChargingError):
    pass


class InUse(ChargingError):
    pass


class StorageUnavailable(ChargingError):
    pass


class DeadlineExpired(ChargingError):
    pass


class StartupError(RuntimeError):
    """The server cannot start; the message says why in one line an operator can act on."""
