"""The sessions one door of this process answers, by account (pure, bounded): what an
account signal (``signals.py``) needs to reach them.

Each door records what it needs to reach a session's client (the Diameter door its
peer's Origin-Host and Realm, the gRPC watch its gateway) and whether the session's last
answer carried a final-unit indication. A session is recorded when an INITIAL opens it
and forgotten when it ends (TERMINATE, a command-level failure, an abort); the oldest go
first beyond ``limit`` (their sessions still charge correctly, they only miss the
re-authorization or abort).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, Protocol, TypeVar


class Holding(Protocol):
    account: str
    final_unit: bool


H = TypeVar("H", bound=Holding)


class HeldSessions(Generic[H]):
    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit
        self._sessions: OrderedDict[str, H] = OrderedDict()
        self._by_account: dict[str, set[str]] = {}

    def record(self, session_id: str, held: H) -> None:
        self.forget(session_id)
        self._sessions[session_id] = held
        self._by_account.setdefault(held.account, set()).add(session_id)
        while len(self._sessions) > self.limit:
            self.forget(next(iter(self._sessions)))

    def get(self, session_id: str) -> H | None:
        return self._sessions.get(session_id)

    def forget(self, session_id: str) -> None:
        held = self._sessions.pop(session_id, None)
        if held is None:
            return
        ids = self._by_account.get(held.account)
        if ids is not None:
            ids.discard(session_id)
            if not ids:
                del self._by_account[held.account]

    def of_account(self, account: str) -> list[tuple[str, H]]:
        return [(sid, self._sessions[sid]) for sid in sorted(self._by_account.get(account, ()))]

    def __len__(self) -> int:
        return len(self._sessions)
