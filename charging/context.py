"""What the charging components share, built once in ``server.py`` and passed down."""

from __future__ import annotations

from dataclasses import dataclass

from charging.catalogs import CatalogBook
from charging.clock import Clock
from charging.ledger import Ledger
from charging.notifications import Notifier
from charging.subscribers import Directory


@dataclass(frozen=True)
class Context:
    ledger: Ledger
    directory: Directory
    catalogs: CatalogBook
    clock: Clock
    notifier: Notifier | None = None
    # Notify once when a money balance falls below this (0: never).
    low_balance_micros: int = 0
    # The scripts append a usage record per rated use and money movement (cdrs.py);
    # off only to measure what that costs (CHARGING_USAGE_RECORDS=false).
    usage_records: bool = True

    def wake_relay(self, account: str) -> None:
        """New notifications wait in the account's outbox: relay them."""
        if self.notifier is not None:
            self.notifier.wake(account)
