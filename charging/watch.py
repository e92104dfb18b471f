"""The gRPC door's side of account signals (``signals.py``): which gateway must
re-authorize or abort which of its sessions, told over ``Charging.WatchSessions``.

**Who a session belongs to.** A gateway is the authenticated caller (its certificate's
SAN or token name, ``security/identity.py``) together with an optional label the caller
sends in the call metadata ``charging-gateway`` (``[A-Za-z0-9._:-]``, at most 64
characters), for several gateways sharing one credential (and for development, where
every local caller is ``local``). ``ChargeSession`` records each open session under the
gateway that charged it; ``WatchSessions`` with the same identity and label receives the
signals of those sessions, and no other caller can: the identity part comes from the
credential, not from the request.

**What is sent.** ``REAUTHORIZE`` for an open session whose last answer carried a
final-unit indication when its account gets credit (a top-up, a bundle bought), once;
``ABORT`` for every open session of a line barred, suspended or terminated, after which
the session is forgotten. Every open stream of the gateway gets each signal. A signal for
a gateway without an open stream is counted (``no_watcher``) and not kept: the next
update of the session is answered from the account as it is all the same. A stream that
does not keep up loses signals beyond ``QUEUE_SIZE`` (counted ``dropped``), so one slow
gateway never holds up the others.

**Several worker processes.** Sessions are held by the process that charged them, and
that process tells its own streams: a gateway keeps its charging calls and its watch on
one channel (one HTTP/2 connection, so one worker), as gRPC clients do by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from charging import metrics
from charging.codes import ResultCode
from charging.errors import InvalidRequest
from charging.held import HeldSessions
from charging.security.identity import caller
from charging.sessions import RequestKind, SessionAnswer
from charging.signals import Action, Kind, SignalHub, due
from charging.subscribers import Directory, Identity

GATEWAY_HEADER = "charging-gateway"
GATEWAY_LABEL = re.compile(r"^[A-Za-z0-9._:-]{0,64}$")
# Signals waiting for one stream before further ones are dropped.
QUEUE_SIZE = 1_000
# Open streams per process before more are refused RESOURCE_EXHAUSTED.
MAX_WATCHERS = 1_000


@dataclass
class Watched:
    """A session charged over gRPC: the gateway to tell (``charging/held.py``)."""

    account: str
    gateway: str
    final_unit: bool = False


@dataclass(frozen=True)
class SessionSignal:
    session_id: str
    action: Action


# Put in a stream's queue when the server stops: the stream ends.
CLOSED = SessionSignal("", "abort")


def gateway_of(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The gateway of the call being served: the caller's identity name and the label of
    the ``charging-gateway`` metadata (InvalidRequest naming it when malformed)."""
    label = ""
    for key, value in metadata or ():
        if key == GATEWAY_HEADER:
            label = value if isinstance(value, str) else ""
            if not GATEWAY_LABEL.match(label):
                raise InvalidRequest(GATEWAY_HEADER, "must be at most 64 characters of A-Z a-z 0-9 . _ : -")
    who = caller()
    return f"{who.name if who is not None else 'local'}#{label}"


class SessionWatch:
    def __init__(self, directory: Directory, hub: SignalHub | None = None, *, limit: int = 200_000) -> None:
        self.directory = directory
        self.held: HeldSessions[Watched] = HeldSessions(limit)
        self._streams: dict[str, set[asyncio.Queue[SessionSignal]]] = {}
        self._open = 0
        if hub is not None:
            hub.add(self.signalled)

    async def hold(
        self, gateway: str, session_id: str, identity: Identity, kind: RequestKind, answer: SessionAnswer
    ) -> None:
        """Remember an open session's gateway and final-unit state (as the Diameter door
        remembers its peer)."""
        if answer.result_code != ResultCode.SUCCESS or kind == "T":
            self.held.forget(session_id)
            return
        held = self.held.get(session_id)
        if held is None or held.gateway != gateway:
            account = await self.directory.resolve(identity)  # cached: the core just used it
            if account is None:
                return
            held = Watched(account, gateway)
            self.held.record(session_id, held)
        held.final_unit = any(g.final_unit is not None for g in answer.rating_groups)

    @contextlib.contextmanager
    def watching(self, gateway: str) -> Iterator[asyncio.Queue[SessionSignal]]:
        """A queue receiving the signals of ``gateway``'s sessions while the block runs."""
        if self._open >= MAX_WATCHERS:
            raise OverflowError("too many open WatchSessions streams")
        queue: asyncio.Queue[SessionSignal] = asyncio.Queue(QUEUE_SIZE)
        self._streams.setdefault(gateway, set()).add(queue)
        self._open += 1
        metrics.WATCHERS.inc()
        try:
            yield queue
        finally:
            self._open -= 1
            metrics.WATCHERS.dec()
            queues = self._streams.get(gateway)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del self._streams[gateway]

    async def signalled(self, kind: Kind, account: str) -> None:
        for session_id, held in self.held.of_account(account):
            action = due(kind, held.final_unit)
            if action is None:
                continue
            if action == "reauth":
                held.final_unit = False
            else:
                self.held.forget(session_id)
            queues = self._streams.get(held.gateway)
            if not queues:
                metrics.WATCH_SIGNALS.labels(action, "no_watcher").inc()
                continue
            for queue in queues:
                try:
                    queue.put_nowait(SessionSignal(session_id, action))
                    metrics.WATCH_SIGNALS.labels(action, "sent").inc()
                except asyncio.QueueFull:
                    metrics.WATCH_SIGNALS.labels(action, "dropped").inc()

    def close(self) -> None:
        """End every open stream (the server is stopping)."""
        for queues in self._streams.values():
            for queue in queues:
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(CLOSED)
