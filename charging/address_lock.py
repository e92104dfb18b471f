"""The address lock of a supervisor (``supervisor.py``): its gRPC address, bound with
``SO_REUSEPORT`` for its workers alone.

Workers of one supervisor share a port on purpose; nothing else may join it. A
single-process server binds without ``SO_REUSEPORT`` and cannot join; another supervisor
would bind with it like its own workers, so the address is also locked: ``flock`` on a
file named after its port, in one place per user (only processes of one user can share a
port).
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from charging.errors import StartupError


def lock_directory() -> Path:
    """Where address locks live: one place per user (only processes of one user can share
    a port), whatever TMPDIR each process has."""
    return Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp")


class AddressLock:
    """The gRPC address, bound with SO_REUSEPORT (not listening) and locked for this
    supervisor alone. ``port`` is the bound port (port 0 picks one)."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.host = host.strip("[]") or "0.0.0.0"
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            self._socket.bind((self.host, int(port)))
        except OSError as exc:
            self._socket.close()
            raise StartupError(f"gRPC address {address} is in use ({exc.strerror})") from None
        self.port: int = self._socket.getsockname()[1]
        # Named after the port alone: 0.0.0.0:P and 127.0.0.1:P overlap, and SO_REUSEPORT
        # would let a second supervisor bind one beside the other.
        self.path = lock_directory() / f"charging-grpc-port-{self.port}.lock"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip()
            self.close()
            raise StartupError(
                f"gRPC address {self.address} is in use by another charging server (supervisor pid {holder or '?'})"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def close(self) -> None:
        """Give the address up (the lock file stays: removing it would race a new holder)."""
        self._socket.close()
        os.close(self._fd)
