"""The authenticated caller of the call being served.

``guard.py`` sets it before the servicer runs; servicers and the code they call read it
with ``caller()`` (a context variable: each call runs in its own asyncio task, so calls
never see each other's caller). Audit entries name it with ``caller_name()``.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class Identity:
    # A certificate's SAN (``spiffe://...``, ``dns:host``), ``token:<name>`` or ``local``.
    name: str
    roles: frozenset[str]
    # TopUp channels (``RETAIL``, ``BANK``...) the caller may recharge and sell on.
    channels: frozenset[str] = frozenset()
    # Any channel: the local development identity only.
    any_channel: bool = False

    def may_use_channel(self, channel: str) -> bool:
        return self.any_channel or channel in self.channels


# Every local caller in development mode (no TLS, loopback): every role, every channel.
LOCAL = Identity("local", frozenset(("network", "channel", "crm", "billing", "operator", "monitor")), any_channel=True)

_CALLER: ContextVar[Identity | None] = ContextVar("charging_caller", default=None)


def caller() -> Identity | None:
    return _CALLER.get()


def caller_name() -> str:
    """The caller's name for audit entries; ``internal`` outside a gRPC call (background
    jobs: bill runs, dunning)."""
    current = _CALLER.get()
    return current.name if current is not None else "internal"


def set_caller(identity: Identity) -> None:
    """Only ``guard.py`` calls this, inside the task that serves the call."""
    _CALLER.set(identity)
