"""A Diameter Gy client for the tests, built from python-diameter's messages and codec
(``CapabilitiesExchangeRequest``, ``CreditControlRequest``, ``Message.from_bytes``), over
an asyncio TCP connection. Every frame sent and received is kept in ``exchanged`` for the
capture that ``tshark`` decodes."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field

from diameter.message import Message
from diameter.message import constants as c
from diameter.message.avp import Avp
from diameter.message.commands import (
    CapabilitiesExchangeRequest,
    CreditControlRequest,
    DeviceWatchdogRequest,
    DisconnectPeerRequest,
)

GY = c.APP_DIAMETER_CREDIT_CONTROL_APPLICATION
DATA_CONTEXT = "32251@3gpp.org"


def find(avps: list[Avp], code: int, vendor: int = 0) -> Avp | None:
    return next((a for a in avps if a.code == code and a.vendor_id == vendor), None)


def find_all(avps: list[Avp], code: int, vendor: int = 0) -> list[Avp]:
    return [a for a in avps if a.code == code and a.vendor_id == vendor]


@dataclass
class Client:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    origin_host: str = "pgw.test.example"
    origin_realm: str = "test.example"
    exchanged: list[tuple[bool, bytes]] = field(default_factory=list)  # (sent by us, frame)
    incoming: asyncio.Queue[Message] = field(default_factory=asyncio.Queue)
    _pending: dict[int, asyncio.Future[Message]] = field(default_factory=dict)
    _next: int = 0x1000
    _reader_task: asyncio.Task[None] | None = None

    @staticmethod
    async def connect(port: int, tls: ssl.SSLContext | None = None, **kw: str) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
        client = Client(reader, writer, **kw)
        client._reader_task = asyncio.create_task(client._read())
        return client

    async def _read(self) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            while True:
                head = await self.reader.readexactly(20)
                length = int.from_bytes(head[1:4], "big")
                raw = head + await self.reader.readexactly(length - 20)
                self.exchanged.append((False, raw))
                msg = Message.from_bytes(raw, plain_msg=True)
                if msg.header.is_request:
                    await self.incoming.put(msg)
                    continue
                future = self._pending.pop(msg.header.hop_by_hop_identifier, None)
                if future is not None:
                    future.set_result(msg)

    @property
    def closed(self) -> bool:
        return self._reader_task is not None and self._reader_task.done()

    async def wait_closed(self) -> None:
        """Until the server closes the connection; then close our end."""
        assert self._reader_task is not None
        await asyncio.wait_for(self._reader_task, 10)
        await self.close()

    def _ids(self) -> int:
        self._next += 1
        return self._next

    async def send_raw(self, raw: bytes) -> Message:
        """Send an encoded request as it is (its hop-by-hop id must be new) and wait for its answer."""
        hop = int.from_bytes(raw[12:16], "big")
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[hop] = future
        self.exchanged.append((True, raw))
        self.writer.write(raw)
        await self.writer.drain()
        return await asyncio.wait_for(future, 10)

    def encode(self, msg: Message, *, application: int = 0) -> bytes:
        hop = self._ids()
        msg.header.hop_by_hop_identifier = hop
        msg.header.end_to_end_identifier = hop
        msg.header.application_id = application
        return bytes(msg.as_bytes())

    async def send(self, msg: Message, *, application: int = 0) -> Message:
        return await self.send_raw(self.encode(msg, application=application))

    async def retransmit(self, raw: bytes) -> Message:
        """The same request again with the T flag and a new hop-by-hop id (RFC 6733 3)."""
        copy = bytearray(raw)
        copy[4] |= 0x10
        copy[12:16] = self._ids().to_bytes(4, "big")
        return await self.send_raw(bytes(copy))

    async def answer(self, request: Message, avps: list[Avp]) -> None:
        """Answer a request the server sent (DWR, DPR, RAR, ASR)."""
        answer = request.to_answer()
        answer.header.is_request = False
        answer.avps = avps
        raw = bytes(Message(answer.header, avps).as_bytes())
        self.exchanged.append((True, raw))
        self.writer.write(raw)
        await self.writer.drain()

    def origin(self) -> list[Avp]:
        return [
            Avp.new(c.AVP_ORIGIN_HOST, value=self.origin_host.encode()),
            Avp.new(c.AVP_ORIGIN_REALM, value=self.origin_realm.encode()),
        ]

    async def cer(self, *, application: int = GY, state_id: int = 1) -> Message:
        cer = CapabilitiesExchangeRequest()
        cer.origin_host = self.origin_host.encode()
        cer.origin_realm = self.origin_realm.encode()
        cer.host_ip_address = ["127.0.0.1"]
        cer.vendor_id = 0
        cer.product_name = "python-diameter test client"
        cer.origin_state_id = state_id
        cer.supported_vendor_id = [c.VENDOR_TGPP]
        cer.auth_application_id = [application]
        cer.firmware_revision = 1
        return await self.send(cer)

    async def dwr(self) -> Message:
        dwr = DeviceWatchdogRequest()
        dwr.origin_host = self.origin_host.encode()
        dwr.origin_realm = self.origin_realm.encode()
        dwr.origin_state_id = 1
        return await self.send(dwr)

    async def dpr(self) -> Message:
        dpr = DisconnectPeerRequest()
        dpr.origin_host = self.origin_host.encode()
        dpr.origin_realm = self.origin_realm.encode()
        dpr.disconnect_cause = c.E_DISCONNECT_CAUSE_REBOOTING
        return await self.send(dpr)

    def ccr(
        self, session_id: str, request_type: int, number: int, *, context: str = DATA_CONTEXT
    ) -> CreditControlRequest:
        """A CCR with its head filled in; add MSCCs, Subscription-Ids and the rest."""
        ccr = CreditControlRequest()
        ccr.session_id = session_id
        ccr.origin_host = self.origin_host.encode()
        ccr.origin_realm = self.origin_realm.encode()
        ccr.destination_realm = b"localdomain"
        ccr.auth_application_id = GY
        ccr.service_context_id = context
        ccr.cc_request_type = request_type
        ccr.cc_request_number = number
        return ccr

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task


def result_code(msg: Message | Avp) -> int:
    avps = msg.avps if isinstance(msg, Message) else msg.value
    avp = find(avps, c.AVP_RESULT_CODE)
    assert avp is not None, "no Result-Code"
    return int(avp.value)


def msccs(msg: Message) -> list[list[Avp]]:
    return [a.value for a in find_all(msg.avps, c.AVP_MULTIPLE_SERVICES_CREDIT_CONTROL)]


def granted(mscc: list[Avp]) -> dict[str, int]:
    """The Granted-Service-Unit of an MSCC as {AVP name: value}."""
    gsu = find(mscc, c.AVP_GRANTED_SERVICE_UNIT)
    return {} if gsu is None else {a.name: a.value for a in gsu.value if not isinstance(a.value, list)}
