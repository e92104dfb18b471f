"""One peer connection: the asyncio state machine of RFC 6733 section 5.6, responder side.

    WAIT_CER --CER accepted--> OPEN --DPR/DPA either way--> CLOSED
        |                        |
        +--refused, no CER ------+--read error, watchdog (no DWA in Tw)--> CLOSED

* **WAIT_CER.** The first message must be a CER, within ``watchdog_s``; anything else, or
  a CER refused by ``base.check_cer``, closes the connection (a refused CER after its CEA).
  When the CEA chooses Inband-Security-Id TLS (``base.inband_security``), the TLS
  handshake follows on the same connection (we are the TLS server, the peer must present
  a certificate naming its Origin-Host); the connection is OPEN only after it, and a
  failed handshake or a certificate naming someone else closes it.
* **OPEN.** DWR is answered DWA, DPR DPA (then we close), and each Credit-Control-Request
  is answered by its own task, so a slow request does not hold up the next; answers go
  out in whichever order they are ready, matched by the peer on hop-by-hop id. Other
  requests: 3001 DIAMETER_COMMAND_UNSUPPORTED; a CCR outside application 4: 3007.
* **Watchdog (RFC 3539).** After ``watchdog_s`` without a message from the peer we send a
  DWR; after another ``watchdog_s`` without any message the connection is closed and
  counted (``charging_diameter_connects_total{outcome="watchdog"}``). Any message from
  the peer proves it alive.
* **Requests we send** (DWR, DPR, and RAR/ASR for the server) wait at most
  ``answer_timeout_s`` for their answer; unanswered ones are counted, never retried here.

A message whose length cannot be trusted ends the connection (the stream cannot be
re-synchronised); an AVP with a bad length is answered 5014 and the connection goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
from dataclasses import replace
from enum import Enum
from typing import TYPE_CHECKING

from diameter.message import MessageHeader
from diameter.message.avp import Avp

from charging.diameter import base, metrics
from charging.diameter import dictionary as d
from charging.diameter.codec import (
    FramingError,
    Refused,
    answer_header,
    decode,
    encode,
    new,
    read_frame,
    request_header,
)
from charging.diameter.config import InbandTls
from charging.diameter.peers import Peer
from charging.security.server_tls import names

if TYPE_CHECKING:
    from charging.diameter.listener import DiameterDoor

log = logging.getLogger("charging.diameter")

Answer = tuple[MessageHeader, list[Avp]]
NAMES = {d.CAPABILITIES_EXCHANGE: "CER", d.DEVICE_WATCHDOG: "DWR", d.DISCONNECT_PEER: "DPR"}


class State(Enum):
    WAIT_CER = "wait_cer"
    OPEN = "open"
    CLOSED = "closed"


class Connection:
    def __init__(self, door: DiameterDoor, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.door = door
        self.reader = reader
        self.writer = writer
        peername = writer.get_extra_info("peername") or ("", 0)
        sockname = writer.get_extra_info("sockname") or ("127.0.0.1", 0)
        self.remote_ip = str(peername[0])
        # TLS: the DNS names of the peer's (verified) certificate; cleartext: None.
        self.certified: frozenset[str] | None = None
        if writer.get_extra_info("ssl_object") is not None:
            self.certified = frozenset(n.lower() for n in names(writer.get_extra_info("peercert") or {})[1])
        self.me = replace(door.me, host_ip=str(sockname[0]))
        self.state = State.WAIT_CER
        self.peer: Peer | None = None
        self._pending: dict[int, asyncio.Future[Answer]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._write_lock = asyncio.Lock()
        self._next_id = secrets.randbits(32)
        self._dwr_outstanding = False
        self._outcome = "closed_by_peer"

    # -- reading ---------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it closes."""
        try:
            while self.state is not State.CLOSED:
                try:
                    raw = await read_frame(self.reader, self.door.config.watchdog_s)
                except TimeoutError:
                    if not await self._idle():
                        break
                    continue
                self._dwr_outstanding = False
                await self._dispatch(raw)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except FramingError as exc:
            self._outcome = "framing"
            log.warning("diameter: unreadable message, closing", extra={"error": str(exc)})
        finally:
            await self._close()

    async def _idle(self) -> bool:
        """``watchdog_s`` passed without a message: send a DWR, or give up when the last
        one is still unanswered (or the peer never sent its CER)."""
        if self.state is State.WAIT_CER:
            self._outcome = "no_cer"
            return False
        if self._dwr_outstanding:
            metrics.SENT.labels("DWR", "unanswered").inc()
            self._outcome = "watchdog"
            log.warning("diameter: peer does not answer its watchdog, closing")
            return False
        self._dwr_outstanding = True
        await self.send_request(d.DEVICE_WATCHDOG, 0, base.watchdog_request(self.me), wait=False)
        return True

    async def _dispatch(self, raw: bytes) -> None:
        try:
            header, avps = decode(raw)
        except Refused as exc:
            header = MessageHeader.from_bytes(raw)
            if header.is_request:
                await self._answer(header, exc.code, base.result(exc.code, self.me, exc.failed, exc.message))
            return
        if not header.is_request:
            future = self._pending.pop(header.hop_by_hop_identifier, None)
            if future is not None and not future.done():
                future.set_result((header, avps))
            return
        command = header.command_code
        if self.state is State.WAIT_CER:
            if command != d.CAPABILITIES_EXCHANGE:
                self._outcome = "no_cer"
                self.state = State.CLOSED
                return
            await self._capabilities(header, avps)
        elif command == d.CREDIT_CONTROL:
            task = asyncio.create_task(self._credit_control(header, avps))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif command == d.DEVICE_WATCHDOG:
            await self._answer(header, d.Code.SUCCESS, base.watchdog_answer(self.me))
        elif command == d.DISCONNECT_PEER:
            await self._answer(header, d.Code.SUCCESS, base.result(d.Code.SUCCESS, self.me))
            self._outcome = "disconnected"
            self.state = State.CLOSED
        elif command == d.CAPABILITIES_EXCHANGE:
            # A second CER on an open connection: refused, the connection stays as it is.
            await self._answer(header, d.Code.UNABLE_TO_COMPLY, base.result(d.Code.UNABLE_TO_COMPLY, self.me))
        else:
            code = d.Code.COMMAND_UNSUPPORTED
            await self._answer(header, code, base.result(code, self.me))

    async def _capabilities(self, header: MessageHeader, avps: list[Avp]) -> None:
        try:
            peer = base.check_cer(avps, self.door.config, self.remote_ip, self.certified)
            security = base.inband_security(avps, self._inband_mode())
        except Refused as exc:
            log.warning("diameter: capabilities exchange refused", extra={"result_code": exc.code})
            await self._answer(header, exc.code, base.result(exc.code, self.me, exc.failed, exc.message))
            self._outcome = "refused"
            self.state = State.CLOSED
            return
        cea = [new_result(d.Code.SUCCESS), *base.capabilities(self.me)]
        if security == base.TLS:
            cea.append(new(d.INBAND_SECURITY_ID, base.TLS))
        await self._answer(header, d.Code.SUCCESS, cea)
        if security == base.TLS and not await self._start_tls(peer):
            self._outcome = "tls_failed"
            self.state = State.CLOSED
            return
        self.peer = peer
        self.state = State.OPEN
        if self.door.table.add(peer, self):
            metrics.PEER_RESTARTS.inc()
            log.info("diameter: peer restarted (higher Origin-State-Id)", extra={"peer_realm": peer.realm})
        metrics.CONNECTIONS.inc()
        metrics.CONNECTS.labels("accepted").inc()
        log.info("diameter: peer connected", extra={"peer_realm": peer.realm})

    def _inband_mode(self) -> InbandTls:
        """TLS after CER as configured; never on a connection already under TLS (the TLS
        port), nor when the door has no TLS context."""
        if self.certified is not None or self.door.tls is None:
            return "off"
        return self.door.config.inband_tls

    async def _start_tls(self, peer: Peer) -> bool:
        """The TLS handshake after our CEA chose TLS (we are the server), and the peer's
        certificate naming its Origin-Host (RFC 6733 13.1); False: close the connection."""
        assert self.door.tls is not None  # _inband_mode: no TLS context, no TLS chosen
        try:
            await self.writer.start_tls(self.door.tls.context, ssl_handshake_timeout=self.door.config.watchdog_s)
        except (ssl.SSLError, ConnectionError, OSError, TimeoutError) as exc:
            log.warning("diameter: TLS handshake after CER failed", extra={"error": str(exc)[:200]})
            return False
        self.certified = frozenset(n.lower() for n in names(self.writer.get_extra_info("peercert") or {})[1])
        if peer.host.lower() not in self.certified:
            log.warning("diameter: Origin-Host is not named by the peer's certificate, closing")
            return False
        return True

    async def _credit_control(self, header: MessageHeader, avps: list[Avp]) -> None:
        if header.application_id != d.CREDIT_CONTROL_APP:
            unsupported = d.Code.APPLICATION_UNSUPPORTED
            await self._answer(header, unsupported, base.result(unsupported, self.me), command="CCR")
            return
        # A retransmission (T flag) needs nothing special: the core answers a request
        # number it has seen with the stored answer.
        code, answer, command = await self.door.credit_control(self.me, self.peer, avps)
        await self._answer(header, code, answer, command=command)

    # -- writing ---------------------------------------------------------------------

    async def _answer(self, request: MessageHeader, code: int, avps: list[Avp], command: str = "") -> None:
        name = command or NAMES.get(request.command_code, "other")
        metrics.REQUESTS.labels(name, str(code)).inc()
        error = 3000 <= code < 4000
        await self._write(encode(answer_header(request, error=error), avps))

    async def _write(self, data: bytes) -> None:
        if self.writer.is_closing():
            return
        async with self._write_lock:
            self.writer.write(data)
            with contextlib.suppress(ConnectionError):
                await self.writer.drain()

    async def send_request(
        self, command: int, application: int, avps: list[Avp], *, wait: bool = True
    ) -> Answer | None:
        """Send a request to the peer; with ``wait``, its answer or None when none came
        within ``answer_timeout_s`` (counted; never retried here)."""
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        hop = self._next_id
        name = {d.DEVICE_WATCHDOG: "DWR", d.DISCONNECT_PEER: "DPR", d.RE_AUTH: "RAR", d.ABORT_SESSION: "ASR"}.get(
            command, "other"
        )
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._pending[hop] = future
        await self._write(encode(request_header(command, application, hop, secrets.randbits(32)), avps))
        if not wait:
            # Counted when its answer comes; a connection closed first cancels it (the
            # watchdog has counted it unanswered).
            future.add_done_callback(lambda f: None if f.cancelled() else metrics.SENT.labels(name, "answered").inc())
            return None
        try:
            answer = await asyncio.wait_for(future, self.door.config.answer_timeout_s)
        except TimeoutError:
            self._pending.pop(hop, None)
            metrics.SENT.labels(name, "unanswered").inc()
            return None
        metrics.SENT.labels(name, "answered").inc()
        return answer

    async def disconnect(self) -> None:
        """Our side ends the connection: DPR, its DPA (or the timeout), then close."""
        if self.state is State.OPEN:
            self.state = State.CLOSED
            await self.send_request(d.DISCONNECT_PEER, 0, base.disconnect_request(self.me))
        self.state = State.CLOSED
        self.writer.close()

    async def _close(self) -> None:
        if self.peer is not None:
            self.door.table.remove(self.peer, self)
            metrics.CONNECTIONS.dec()
            self.peer = None
        metrics.CONNECTS.labels(self._outcome).inc()
        self.state = State.CLOSED
        if self._tasks:
            # Requests already with the core complete (their answers are stored for a
            # retransmission on another connection); their answers go nowhere.
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


def new_result(code: int) -> Avp:
    return new(d.RESULT_CODE, code)
