"""Diameter messages on a byte stream: framing (ours), AVP codec and dictionary
(python-diameter's).

What we take from python-diameter: ``MessageHeader`` and ``Avp`` with its typed
subclasses (Unsigned32/64, Integer32, UTF8String, OctetString, Address, Time, Grouped),
``Avp.new`` (type and M flag from the dictionary) and the encoder. What we do ourselves
and why (README "Diameter Gy/Ro"):

* **Framing.** The library reads from blocking sockets in its own threads; here a frame
  is read from an asyncio stream: the 20-byte header, its length checked (at least 20, a
  multiple of 4, at most ``MAX_LENGTH``) before the rest is read, so a bad or hostile
  length never makes us buffer gigabytes or wait forever.
* **AVP lengths.** ``Message.from_bytes`` trusts every AVP length: one shorter than its
  header is read as an empty AVP and the next AVP starts in the middle of this one. We walk
  the AVP headers first, grouped AVPs included, and answer 5014 DIAMETER_INVALID_AVP_LENGTH
  naming the AVP, as RFC 6733 section 7.1.5 asks.
* **Values.** A value that does not decode (a 3-byte Unsigned32) raises the library's
  ``AvpDecodeError`` when read; ``value`` turns it into the same 5014 refusal.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from diameter.message import Message, MessageHeader
from diameter.message.avp import Avp, AvpGrouped
from diameter.message.avp.avp import get_avp_dictionary_entry
from diameter.message.avp.errors import AvpDecodeError

from charging.diameter.dictionary import Code

HEADER_LENGTH = 20
# Far above any CCR a PGW sends (a few KB), far below what would hurt this process.
MAX_LENGTH = 1 << 20
MAX_DEPTH = 8

FLAG_REQUEST = 0x80
FLAG_PROXIABLE = 0x40
FLAG_ERROR = 0x20
FLAG_RETRANSMIT = 0x10
AVP_FLAG_VENDOR = 0x80


class FramingError(Exception):
    """The stream cannot be read further (a bad message length): close the connection."""


class Refused(Exception):
    """A request answered with a failure ``code``, naming the offending AVP when known."""

    def __init__(self, code: int, failed: Avp | None = None, message: str = "") -> None:
        super().__init__(message or str(code))
        self.code = code
        self.failed = failed
        self.message = message


async def read_frame(reader: asyncio.StreamReader, idle_s: float) -> bytes:
    """One whole message; ``TimeoutError`` when none starts within ``idle_s`` (nothing is
    consumed then), ``asyncio.IncompleteReadError`` at the end of the stream.

    Only the wait for a header is bounded by ``idle_s``: a timeout that cancelled the read
    of a body would drop the header already consumed and leave the stream mid-message. A
    body has ``idle_s`` more to arrive in full, else the connection cannot go on."""
    head = await asyncio.wait_for(reader.readexactly(HEADER_LENGTH), idle_s)
    length = int.from_bytes(head[1:4], "big")
    if length < HEADER_LENGTH or length % 4 or length > MAX_LENGTH:
        raise FramingError(f"message length {length}")
    try:
        return head + await asyncio.wait_for(reader.readexactly(length - HEADER_LENGTH), idle_s)
    except TimeoutError:
        raise FramingError(f"a message of {length} bytes did not arrive in full") from None


def decode(raw: bytes) -> tuple[MessageHeader, list[Avp]]:
    """Header and top-level AVPs of a framed message. ``Refused`` (5011, 5014) when the
    version is not 1 or an AVP's length does not fit, at any depth."""
    header = MessageHeader.from_bytes(raw)
    if header.version != 1:
        raise Refused(Code.UNSUPPORTED_VERSION)
    return header, _avps(raw, HEADER_LENGTH, len(raw), 0)


def _avps(buf: bytes, start: int, end: int, depth: int) -> list[Avp]:
    out: list[Avp] = []
    pos = start
    while pos < end:
        if end - pos < 8:
            raise Refused(Code.INVALID_AVP_LENGTH, message="trailing bytes shorter than an AVP header")
        code, flags_length = struct.unpack_from("!II", buf, pos)
        flags, length = flags_length >> 24, flags_length & 0xFFFFFF
        vendor = struct.unpack_from("!I", buf, pos + 8)[0] if flags & AVP_FLAG_VENDOR and end - pos >= 12 else 0
        header = 12 if flags & AVP_FLAG_VENDOR else 8
        padded = (length + 3) & ~3
        if length < header or pos + length > end:
            raise Refused(Code.INVALID_AVP_LENGTH, Avp(code, vendor, b"", flags), f"AVP {code} length {length}")
        avp = Avp.from_bytes(buf[pos : pos + length] + b"\0" * (padded - length))
        if isinstance(avp, AvpGrouped):
            if depth >= MAX_DEPTH:
                raise Refused(Code.INVALID_AVP_VALUE, avp, "grouped AVPs nested too deep")
            avp.value = _avps(buf, pos + header, pos + length, depth + 1)
        out.append(avp)
        pos += padded
    return out


def value(avp: Avp) -> Any:
    """The AVP's typed value; ``Refused`` 5014 when its payload does not decode."""
    try:
        return avp.value
    except AvpDecodeError:
        raise Refused(Code.INVALID_AVP_LENGTH, avp) from None


def new(key: tuple[int, int], value: Any) -> Avp:
    """An AVP from the dictionary, with its type and M flag."""
    return Avp.new(key[0], key[1], value=value)


def grouped(key: tuple[int, int], members: list[Avp]) -> Avp:
    return Avp.new(key[0], key[1], value=members)


def placeholder(key: tuple[int, int]) -> Avp:
    """A missing AVP as RFC 6733 7.5 puts it in Failed-AVP: its code, an empty value."""
    entry = get_avp_dictionary_entry(*key)
    avp = Avp(key[0], key[1], b"")
    if entry is not None:
        avp.name = entry["name"]
        avp.is_mandatory = bool(entry.get("mandatory"))
    return avp


def answer_header(request: MessageHeader, *, error: bool = False) -> MessageHeader:
    flags = request.command_flags & FLAG_PROXIABLE
    if error:
        flags |= FLAG_ERROR
    return MessageHeader(
        1,
        0,
        flags,
        request.command_code,
        request.application_id,
        request.hop_by_hop_identifier,
        request.end_to_end_identifier,
    )


def request_header(command: int, application: int, hop_by_hop: int, end_to_end: int) -> MessageHeader:
    return MessageHeader(1, 0, FLAG_REQUEST | FLAG_PROXIABLE, command, application, hop_by_hop, end_to_end)


def encode(header: MessageHeader, avps: list[Avp]) -> bytes:
    return bytes(Message(header, avps).as_bytes())
