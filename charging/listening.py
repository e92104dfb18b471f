"""Listening sockets of the server's doors other than gRPC (Nchf, the console, Diameter).

Bound when the server starts, before Redis, so that a taken address stops it at once
with one line naming the door. Under ``charging serve --workers N`` every worker serves
every door on the same port: each binds with SO_REUSEPORT (``shared``) and the kernel
spreads the connections. A single process binds without it, so it cannot join a port
that workers hold, nor they one it holds.
"""

from __future__ import annotations

import socket

from charging.errors import StartupError


def listen(address: str, door: str, *, shared: bool = False, backlog: int = 1024) -> socket.socket:
    """A non-blocking socket listening on ``host:port`` (``[v6]:port`` too; port 0 picks one)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if shared:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, int(port)))
    except (OSError, ValueError) as exc:
        sock.close()
        raise StartupError(
            f"cannot listen on {door} address {address}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    sock.listen(backlog)
    sock.setblocking(False)
    return sock
