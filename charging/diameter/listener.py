"""The Diameter door: the listening socket, and each Credit-Control-Request through the
charging core in this process.

The core is called as the gRPC servicer calls it (``SessionCharging.charge``,
``EventCharging.charge``): one Redis round trip per request once the subscriber is in
the in-process cache, and a request number's answer stored with the change, so a
retransmission (T flag, or the same request on another connection) gets the identical
answer and changes nothing. Errors of the core become result codes here, never a
dropped request: a reused request number with another payload 5004 (Failed-AVP
CC-Request-Number), Redis unavailable 3004 DIAMETER_TOO_BUSY (the client may try
another server), anything unexpected 5012 DIAMETER_UNABLE_TO_COMPLY (logged). Beyond the
process's in-flight limit (``CHARGING_MAX_IN_FLIGHT``, the slots gRPC and Nchf draw on,
``charging/admission.py``) a CCR is answered 3004 DIAMETER_TOO_BUSY at once, having changed
nothing; base-protocol requests (CER, DWR, DPR) are never refused for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, replace

from diameter.message.avp import Avp
from diameter.message.avp.errors import AvpDecodeError

from charging import listening, signals
from charging import metrics as core_metrics
from charging.admission import Admission
from charging.catalogs import CatalogBook
from charging.clock import Clock
from charging.codes import ResultCode
from charging.diameter import answers, credit_control, metrics, relay
from charging.diameter import dictionary as d
from charging.diameter.base import Identity as Me
from charging.diameter.codec import Refused, new, placeholder
from charging.diameter.config import DiameterConfig
from charging.diameter.connection import Connection
from charging.diameter.credit_control import EventCall, Head, SessionCall
from charging.diameter.peers import Peer, PeerTable
from charging.diameter.relay import Relayed
from charging.errors import ChargingError, Conflict, InvalidRequest, LimitExceeded, StorageUnavailable
from charging.events import EventCharging
from charging.held import HeldSessions
from charging.security.server_tls import ServerTls
from charging.sessions import SessionAnswer, SessionCharging
from charging.store import storage_errors
from charging.subscribers import Directory, Identity

log = logging.getLogger("charging.diameter")

COMMANDS = {1: "CCR-I", 2: "CCR-U", 3: "CCR-T", 4: "CCR-E"}
# Sessions whose charged identity is remembered (IMSI or MSISDN, whichever the
# subscriber has), so an UPDATE does not look up an identity nobody has again.
REMEMBERED_SESSIONS = 100_000
# RARs and ASRs under way at once in one process; more are dropped (counted).
MAX_SENDING = 1_000
SERVER_REQUESTS: dict[signals.Action, str] = {"reauth": "RAR", "abort": "ASR"}


@dataclass
class Held:
    """A session open at this door: its peer, for RAR and ASR (``charging/held.py``)."""

    account: str
    peer_host: str
    peer_realm: str
    final_unit: bool = False


class DiameterDoor:
    def __init__(
        self,
        config: DiameterConfig,
        sessions: SessionCharging,
        events: EventCharging,
        directory: Directory,
        catalogs: CatalogBook,
        clock: Clock,
        *,
        max_in_flight: int = 64,
        admission: Admission | None = None,
        signals_from: signals.SignalHub | None = None,
        tls: ServerTls | None = None,
    ) -> None:
        self.config = config
        self.sessions = sessions
        self.events = events
        self.directory = directory
        self.catalogs = catalogs
        self.clock = clock
        # The process's in-flight slots, shared with gRPC and Nchf (charging/admission.py);
        # its own bound of ``max_in_flight`` when none is given.
        self.admission = admission if admission is not None else Admission(max_in_flight)
        # Origin-State-Id: seconds at start, so it goes up with every restart.
        self.me = Me(config.origin_host, config.origin_realm, (clock.now_ms() // 1000) & 0xFFFFFFFF, config.host)
        self.table: PeerTable[Connection] = PeerTable()
        self.port = 0
        self._server: asyncio.Server | None = None
        # TLS from the start (RFC 6733 13) on ``config.tls_address``, when ``tls`` is given.
        self.tls = tls
        self.tls_port = 0
        self._tls_server: asyncio.Server | None = None
        self._connections: set[Connection] = set()
        self._charged_as: OrderedDict[str, Identity] = OrderedDict()
        self.held: HeldSessions[Held] = HeldSessions()
        # RARs and ASRs waiting for their answers (at most MAX_SENDING; more are dropped).
        self._sending: set[asyncio.Task[None]] = set()
        self._hub = signals_from
        if signals_from is not None:
            signals_from.add(self.signalled)
            signals_from.on(relay.CHANNEL, self.relayed)

    async def start(self) -> None:
        address = f"[{self.config.host}]:{self.config.port}" if ":" in self.config.host else None
        sock = listening.listen(
            address or f"{self.config.host}:{self.config.port}", "Diameter", shared=self.config.shared
        )
        self._server = await asyncio.start_server(self._accept, sock=sock)
        self.port = self._server.sockets[0].getsockname()[1]
        if self.tls is not None and self.config.tls_address is not None:
            host, port = self.config.tls_address
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            tls_sock = listening.listen(where, "Diameter TLS", shared=self.config.shared)
            self._tls_server = await asyncio.start_server(
                self._accept, sock=tls_sock, ssl=self.tls.context, ssl_handshake_timeout=10.0
            )
            self.tls_port = self._tls_server.sockets[0].getsockname()[1]
        log.info("diameter: listening", extra={"diameter_port": self.port})

    async def stop(self) -> None:
        """Stop accepting, say DPR to every open peer (each waits at most
        ``answer_timeout_s`` for its DPA), close every connection."""
        for task in list(self._sending):  # a RAR or ASR still waiting: its peer is going
            task.cancel()
        if self._server is not None:
            self._server.close()
        if self._tls_server is not None:
            self._tls_server.close()
        await asyncio.gather(*(c.disconnect() for c in list(self._connections)), return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._tls_server is not None:
            await self._tls_server.wait_closed()
            self._tls_server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = Connection(self, reader, writer)
        self._connections.add(connection)
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)

    async def credit_control(self, me: Me, peer: Peer | None, avps: list[Avp]) -> tuple[int, list[Avp], str]:
        """The result code, the CCA's AVPs and the command name of one CCR."""
        started = time.perf_counter()
        try:
            head = credit_control.head_of(avps)
        except Refused as exc:
            head = credit_control.partial_head(avps)
            return (
                exc.code,
                answers.refusal(head, me, exc.code, exc.failed, exc.message),
                COMMANDS.get(head.request_type, "CCR"),
            )
        command = COMMANDS[head.request_type]
        if not self.admission.enter():
            core_metrics.ADMISSION_REJECTIONS.labels(f"Diameter.{command}", "in_flight").inc()
            return d.Code.TOO_BUSY, answers.refusal(head, me, d.Code.TOO_BUSY, None), command
        try:
            code, answer = await self._charge(head, me, peer, avps)
        finally:
            self.admission.leave()
            metrics.LATENCY.labels(command).observe(time.perf_counter() - started)
        return code, answer, command

    async def _charge(self, head: Head, me: Me, peer: Peer | None, avps: list[Avp]) -> tuple[int, list[Avp]]:
        try:
            call = credit_control.read(head, avps, self.config.default_rating_groups)
            with storage_errors():
                if isinstance(call, SessionCall):
                    return await self._session(head, me, peer, call)
                return await self._event(head, me, call)
        except Refused as exc:
            return exc.code, answers.refusal(head, me, exc.code, exc.failed, exc.message)
        except Conflict:
            number = d.find(avps, d.CC_REQUEST_NUMBER) or placeholder(d.CC_REQUEST_NUMBER)
            code = d.Code.INVALID_AVP_VALUE
            message = "CC-Request-Number already used in this session with another payload"
            return code, answers.refusal(head, me, code, number, message)
        except StorageUnavailable as exc:
            core_metrics.REDIS_ERRORS.labels("diameter").inc()
            log.warning("diameter: storage unavailable", extra={"error": str(exc)})
            return d.Code.TOO_BUSY, answers.refusal(head, me, d.Code.TOO_BUSY, None)
        except (LimitExceeded, InvalidRequest) as exc:
            code = d.Code.UNABLE_TO_COMPLY if isinstance(exc, LimitExceeded) else d.Code.INVALID_AVP_VALUE
            return code, answers.refusal(head, me, code, None, str(exc)[:200])
        except ChargingError as exc:
            log.warning("diameter: request refused", extra={"error": type(exc).__name__})
            return d.Code.UNABLE_TO_COMPLY, answers.refusal(head, me, d.Code.UNABLE_TO_COMPLY, None)
        except Exception:
            log.exception("diameter: unexpected error")
            return d.Code.UNABLE_TO_COMPLY, answers.refusal(head, me, d.Code.UNABLE_TO_COMPLY, None)

    async def _session(self, head: Head, me: Me, peer: Peer | None, call: SessionCall) -> tuple[int, list[Avp]]:
        identity = await self._identity(head.session_id, call.identities, remember=call.request.kind != "T")
        if call.request.kind == "T":
            self._charged_as.pop(head.session_id, None)
        answer = await self.sessions.charge(replace(call.request, identity=identity))
        if answer.replayed:
            metrics.RETRANSMISSIONS.inc()
        elif answer.session_delta > 0:
            core_metrics.SESSIONS_OPENED.inc()
        elif answer.session_delta < 0:
            core_metrics.SESSIONS_CLOSED.labels("terminate" if call.request.kind == "T" else "refused").inc()
        await self._hold(head.session_id, identity, peer, call, answer)
        return answer.result_code, answers.session_cca(head, me, call, answer)

    async def _hold(
        self, session_id: str, identity: Identity, peer: Peer | None, call: SessionCall, answer: SessionAnswer
    ) -> None:
        """Remember an open session's peer and final-unit state for RAR and ASR."""
        open_ = answer.result_code == ResultCode.SUCCESS and call.request.kind != "T"
        if not open_ or peer is None:
            self.held.forget(session_id)
            return
        final_unit = any(g.final_unit is not None for g in answer.rating_groups)
        held = self.held.get(session_id)
        if held is None:
            account = await self.directory.resolve(identity)  # cached: the core just used it
            if account is None:
                return
            held = Held(account, peer.host, peer.realm)
            self.held.record(session_id, held)
        held.final_unit = final_unit

    async def signalled(self, kind: signals.Kind, account: str) -> None:
        """RAR to the sessions of ``account`` that got a final-unit indication (credit),
        or ASR to all of them (blocked). Each request is sent once; what the peer does
        with it is counted, never retried. Their answers are not waited for here: a peer
        that does not answer holds up neither the signal hub nor the next signal
        (``settled`` waits for them)."""
        for session_id, held in self.held.of_account(account):
            action = signals.due(kind, held.final_unit)
            if action == "reauth":
                held.final_unit = False
            elif action == "abort":
                self.held.forget(session_id)
            else:
                continue
            self._start(Relayed(action, held.peer_host, held.peer_realm, session_id))

    async def relayed(self, message: str) -> None:
        """A RAR or ASR another process decided for a peer it has no connection to
        (``relay.py``): sent from here when this process has one and claims it first."""
        request = Relayed.decode(message)
        if request is not None and self.table.connections(request.peer_host):
            self._start(request)

    def _start(self, request: Relayed) -> None:
        if len(self._sending) >= MAX_SENDING:
            metrics.SENT.labels(SERVER_REQUESTS[request.action], "dropped").inc()
            return
        task = asyncio.create_task(self._server_request(request))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def settled(self) -> None:
        """Until every RAR and ASR under way has been answered or has timed out."""
        while self._sending:
            await asyncio.wait(set(self._sending))

    async def _server_request(self, request: Relayed) -> None:
        name = SERVER_REQUESTS[request.action]
        try:
            await self._send_server_request(request, name)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the door is stopping
            # The connection closed before the answer came (it cancels what it waits for).
            metrics.SENT.labels(name, "unanswered").inc()
        except Exception:
            log.exception("diameter: sending a server-initiated request failed", extra={"command": name})

    async def _send_server_request(self, request: Relayed, name: str) -> None:
        connections = self.table.connections(request.peer_host)
        if not connections:
            # Decided here, the peer connected elsewhere: relayed once, never twice.
            if not request.relayed and self._hub is not None:
                if await self._hub.send(relay.CHANNEL, request.encode()):
                    metrics.SENT.labels(name, "relayed").inc()
                    return
            metrics.SENT.labels(name, "no_connection").inc()
            return
        claim = relay.claim_key(request.action, request.session_id)
        if self._hub is not None and not await self._hub.claim(claim, relay.CLAIM_TTL_S):
            metrics.SENT.labels(name, "elsewhere").inc()  # another process sends it
            return
        if request.action == "reauth":
            command, extra = d.RE_AUTH, [new(d.RE_AUTH_REQUEST_TYPE, 0)]
        else:
            command, extra = d.ABORT_SESSION, []
        avps = [
            new(d.SESSION_ID, request.session_id),
            *self.me.origin(),
            new(d.DESTINATION_REALM, request.peer_realm.encode()),
            new(d.DESTINATION_HOST, request.peer_host.encode()),
            new(d.AUTH_APPLICATION_ID, d.CREDIT_CONTROL_APP),
            *extra,
        ]
        answer = await connections[-1].send_request(command, d.CREDIT_CONTROL_APP, avps)
        if answer is None:
            log.warning("diameter: peer did not answer", extra={"command": name, "peer_realm": request.peer_realm})
            return
        code = result_of(answer[1])
        if code != d.Code.SUCCESS:
            metrics.SENT.labels(name, "refused").inc()
            log.warning("diameter: peer refused", extra={"command": name, "result_code": code})

    async def _event(self, head: Head, me: Me, call: EventCall) -> tuple[int, list[Avp]]:
        identity = await self._identity(head.session_id, call.identities, remember=False)
        answer = await self.events.charge(replace(call.request, identity=identity))
        if answer.replayed:
            metrics.RETRANSMISSIONS.inc()
        currency = await self._currency(identity) if call.request.action == "P" else ""
        return answer.result_code, answers.event_cca(head, me, call, answer, currency)

    async def _identity(self, session_id: str, identities: tuple[Identity, ...], *, remember: bool) -> Identity:
        """The first identity of the request a subscriber has (Open5GS sends the IMSI,
        then the MSISDN); the first one when nobody has any (the core answers 5030)."""
        known = self._charged_as.get(session_id)
        if known is not None and known in identities:
            return known
        chosen = identities[0]
        if len(identities) > 1:
            for identity in identities:
                if await self.directory.resolve(identity) is not None:
                    chosen = identity
                    break
        if remember:
            self._charged_as[session_id] = chosen
            if len(self._charged_as) > REMEMBERED_SESSIONS:
                self._charged_as.popitem(last=False)
        return chosen

    async def _currency(self, identity: Identity) -> str:
        account = await self.directory.resolve(identity)
        if account is None:
            return ""
        plan = self.catalogs.current.plan_of(self.directory.plan_hint(account))
        return plan.currency if plan is not None else ""


def result_of(avps: list[Avp]) -> int:
    """Result-Code, else Experimental-Result's Experimental-Result-Code (0: neither)."""
    result = d.find(avps, d.RESULT_CODE)
    if result is None:
        experimental = d.find(avps, d.EXPERIMENTAL_RESULT)
        result = d.find(experimental.value, d.EXPERIMENTAL_RESULT_CODE) if experimental is not None else None
    try:
        return int(result.value) if result is not None else 0
    except (AvpDecodeError, TypeError, ValueError):
        return 0
