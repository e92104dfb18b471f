"""Who may connect, and the open peer connections (pure: no sockets here).

A peer is known by the Origin-Host and Origin-Realm of its CER. Several connections of one
peer may be open at once (a PGW with several Diameter stacks, or a reconnect racing the
old connection's close); each stays in the table until it closes. The table is what a
server-initiated request (RAR, ASR) is routed with: the session's peer by Origin-Host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from charging.diameter.config import DiameterConfig, is_loopback_peer

C = TypeVar("C")


@dataclass(frozen=True)
class Peer:
    host: str
    realm: str
    # The peer's Origin-State-Id (0: not sent): a higher one means it restarted.
    state_id: int = 0


def admits(config: DiameterConfig, host: str, realm: str, remote_ip: str) -> bool:
    """Whether a CER from ``host``/``realm`` on ``remote_ip`` may open a connection."""
    if config.loopback_only:
        return is_loopback_peer(remote_ip)
    return any(rule.admits(host, realm) for rule in config.peers)


class PeerTable(Generic[C]):
    """Open connections by Origin-Host (lower case), and the last Origin-State-Id seen."""

    def __init__(self) -> None:
        self._open: dict[str, list[C]] = {}
        self._state_ids: dict[str, int] = {}

    def add(self, peer: Peer, connection: C) -> bool:
        """Record an open connection; True when the peer's Origin-State-Id went up (it
        restarted, and every session it had is gone on its side)."""
        host = peer.host.lower()
        self._open.setdefault(host, []).append(connection)
        before = self._state_ids.get(host)
        if peer.state_id:
            self._state_ids[host] = peer.state_id
        return before is not None and peer.state_id > before

    def remove(self, peer: Peer, connection: C) -> None:
        host = peer.host.lower()
        held = self._open.get(host, [])
        if connection in held:
            held.remove(connection)
        if not held:
            self._open.pop(host, None)

    def connections(self, host: str) -> list[C]:
        """The open connections of a peer, most recent last."""
        return list(self._open.get(host.lower(), []))

    def all(self) -> list[C]:
        return [c for held in self._open.values() for c in held]

    def __len__(self) -> int:
        return sum(len(held) for held in self._open.values())
