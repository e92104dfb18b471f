"""What Redis ran, as ``MONITOR`` shows it on each primary: every command a client sent
and every command a script ran (``[0 lua]``), in order. A script runs atomically, so the
commands it ran follow its ``EVALSHA`` on the same primary. For tests, on a small load
(MONITOR costs the server a write per command to each monitor)."""

from __future__ import annotations

import re
import socket
import threading
from dataclasses import dataclass, field

import redis

from charging.cluster_link import ClusterUrl

LINE = re.compile(r"^\+?[\d.]+ \[\d+ ([^\]]+)\] (.*)$")
ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Command:
    port: int  # the primary that ran it
    by_script: bool
    args: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.args[0].upper() if self.args else ""


@dataclass(frozen=True)
class ScriptRun:
    port: int
    sha: str
    keys: tuple[str, ...]  # its KEYS
    touched: tuple[str, ...]  # the first argument of each command it ran (the key)


def primaries(url: str) -> list[int]:
    """The ports of the primaries behind a redis:// or a cluster URL."""
    cluster = ClusterUrl.parse(url)
    if cluster is None:
        return [int(redis.Redis.from_url(url).connection_pool.connection_kwargs["port"])]
    found = []
    for host, port in cluster.seeds:
        with redis.Redis(host=host, port=port, socket_timeout=2) as client:
            if client.execute_command("ROLE")[0] in (b"master", "master"):
                found.append(port)
    return found


@dataclass
class Monitor:
    ports: list[int]
    commands: list[Command] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _ready: threading.Barrier | None = None

    def __enter__(self) -> Monitor:
        self._ready = threading.Barrier(len(self.ports) + 1, timeout=10)
        self._threads = [threading.Thread(target=self._watch, args=(p,), daemon=True) for p in self.ports]
        for t in self._threads:
            t.start()
        self._ready.wait()  # every MONITOR answered +OK: what follows is seen
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _watch(self, port: int) -> None:
        assert self._ready is not None
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"MONITOR\r\n")
            buffer = b""
            while b"\r\n" not in buffer:
                buffer += s.recv(4096)
            buffer = buffer.split(b"\r\n", 1)[1]  # past +OK
            self._ready.wait()
            s.settimeout(0.05)
            while not self._stop.is_set():
                # A ping through MONITOR's own connection would not show: the last commands
                # before the stop are in the socket by the time the test stops (it awaited them).
                try:
                    chunk = s.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                buffer += chunk
            s.settimeout(0.2)
            try:
                while chunk := s.recv(65536):
                    buffer += chunk
            except TimeoutError:
                pass
        for raw in buffer.decode(errors="replace").split("\r\n"):
            m = LINE.match(raw)
            if m:
                args = tuple(a.replace('\\"', '"') for a in ARG.findall(m.group(2)))
                self.commands.append(Command(port, m.group(1) == "lua", args))

    def script_runs(self, *shas: str) -> list[ScriptRun]:
        """Each run of a script with one of these SHAs, with the keys its commands named."""
        runs: list[ScriptRun] = []
        for port in self.ports:
            current: tuple[str, tuple[str, ...], list[str]] | None = None
            for c in (c for c in self.commands if c.port == port):
                if c.by_script:
                    if current is not None and len(c.args) > 1:
                        current[2].append(c.args[1])
                    continue
                if current is not None:
                    runs.append(ScriptRun(port, current[0], current[1], tuple(current[2])))
                    current = None
                if c.name == "EVALSHA" and c.args[1] in shas:
                    count = int(c.args[2])
                    current = (c.args[1], c.args[3 : 3 + count], [])
            if current is not None:
                runs.append(ScriptRun(port, current[0], current[1], tuple(current[2])))
        return runs
