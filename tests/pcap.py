"""A pcap file of one TCP connection's frames, for ``tshark`` to decode: Ethernet, IPv4
and TCP headers (handshake, sequence and acknowledgement numbers, checksums) written
around the bytes a test client sent and received."""

from __future__ import annotations

import struct
from pathlib import Path

CLIENT = (bytes([127, 0, 0, 1]), 40_000)
SERVER = (bytes([127, 0, 0, 2]), 3868)
SYN, ACK, PSH = 0x02, 0x10, 0x08


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def packet(src: tuple[bytes, int], dst: tuple[bytes, int], seq: int, ack: int, flags: int, payload: bytes) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", src[1], dst[1], seq, ack, 5 << 4, flags, 65535, 0, 0) + payload
    pseudo = src[0] + dst[0] + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, src[0], dst[0])
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    ethernet = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
    return ethernet + ip + tcp


def write(path: Path, frames: list[tuple[bool, bytes]]) -> None:
    """``frames``: (sent by the client, Diameter message) in the order they crossed."""
    seq = {True: 1000, False: 5000}
    packets = [
        packet(CLIENT, SERVER, seq[True] - 1, 0, SYN, b""),
        packet(SERVER, CLIENT, seq[False] - 1, seq[True], SYN | ACK, b""),
        packet(CLIENT, SERVER, seq[True], seq[False], ACK, b""),
    ]
    for from_client, data in frames:
        src, dst = (CLIENT, SERVER) if from_client else (SERVER, CLIENT)
        packets.append(packet(src, dst, seq[from_client], seq[not from_client], PSH | ACK, data))
        seq[from_client] += len(data)
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i, p in enumerate(packets):
        out.append(struct.pack("<IIII", 1_795_000_000, i * 1000, len(p), len(p)) + p)
    path.write_bytes(b"".join(out))
