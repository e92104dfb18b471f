"""RAR and ASR for a peer whose connection another process holds, and sent once by one
process (pure: the message and its Redis names; the door publishes and acts on them,
``listener.py``).

A session's RAR or ASR is decided by the process that answered the session
(``charging/held.py``) and sent on that process's connection to the session's peer.
With several workers (``charging serve --workers N``) or servers on one Redis, the peer
may have reconnected to another process since: then the deciding process publishes the
request on ``CHANNEL`` (through the signal hub's subscription, ``SignalHub.on``), and
every process with an open connection to that Origin-Host hears it. A relayed request is
never relayed again.

Several processes may decide the same request (a peer whose requests for one session
went over connections to two workers: each answered some, each holds the session), and
a relayed request reaches every process connected to the peer. So whoever is about to
send claims it first (SET NX on ``claim_key``, one Redis write per RAR/ASR, kept
``CLAIM_TTL_S``): one sends, the others count ``elsewhere``. A session re-authorized
again within those seconds gets no second RAR: its next CCR-U is answered from the
account all the same. When Redis cannot say, the request is sent.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from charging.signals import Action

CHANNEL = "signals:diameter"
# Longer than one pub/sub delivery to every process, shorter than a peer's re-authorization.
CLAIM_TTL_S = 5


def claim_key(action: Action, session_id: str) -> str:
    return f"signals:diameter:claim:{action}:{session_id}"


@dataclass(frozen=True)
class Relayed:
    """A RAR (``reauth``) or ASR (``abort``) for a session of a peer; ``relayed`` when it
    came from another process."""

    action: Action
    peer_host: str
    peer_realm: str
    session_id: str
    relayed: bool = False

    def encode(self) -> str:
        return orjson.dumps([self.action, self.peer_host, self.peer_realm, self.session_id]).decode()

    @staticmethod
    def decode(text: str) -> Relayed | None:
        """The relayed request, or None for a message this version does not know."""
        try:
            action, host, realm, session_id = orjson.loads(text)
        except (orjson.JSONDecodeError, TypeError, ValueError):
            return None
        if action not in ("reauth", "abort") or not all(isinstance(f, str) and f for f in (host, realm, session_id)):
            return None
        return Relayed(action, host, realm, session_id, relayed=True)
