"""The Diameter sessions this process answers, by account (pure, bounded).

What a server-initiated request needs: the session's peer (Origin-Host and Realm of the
connection it came on) and whether its last answer carried a Final-Unit-Indication.
A session is recorded when an INITIAL opens it and forgotten when it ends (TERMINATE, a
command-level failure, an ASR); the oldest go first beyond ``limit`` (their sessions
still charge correctly, they only miss RAR/ASR).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class Held:
    account: str
    peer_host: str
    peer_realm: str
    final_unit: bool = False


class HeldSessions:
    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit
        self._sessions: OrderedDict[str, Held] = OrderedDict()
        self._by_account: dict[str, set[str]] = {}

    def record(self, session_id: str, held: Held) -> None:
        self.forget(session_id)
        self._sessions[session_id] = held
        self._by_account.setdefault(held.account, set()).add(session_id)
        while len(self._sessions) > self.limit:
            self.forget(next(iter(self._sessions)))

    def get(self, session_id: str) -> Held | None:
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

    def of_account(self, account: str) -> list[tuple[str, Held]]:
        return [(sid, self._sessions[sid]) for sid in sorted(self._by_account.get(account, ()))]

    def __len__(self) -> int:
        return len(self._sessions)
