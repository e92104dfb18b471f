"""An embedded redis-server child for when no Redis URL is configured.

It listens on a Unix socket in its data directory only (no TCP port), keeps an
append-only file so balances survive restarts, is restarted if it dies, and is shut
down (which flushes the AOF) when the server stops.

Never two on one directory. Two redis-servers appending to one AOF lose changes, and
clients connected to the wrong one see another database; this happened when a killed
server left its redis-server running and the restarted one started a second. So:

* The server locks ``charging.lock`` in the directory (``flock``) and records its pid
  there; its redis-server inherits the locked descriptor, so the directory stays locked
  until both have exited. A second server on a locked directory whose recorded owner
  is alive refuses to start.
* The redis-server gets SIGTERM (a clean shutdown that flushes the AOF) when the server
  dies, even by SIGKILL: Linux's parent-death signal (``children.py``).
* A server that finds the directory locked by a redis-server whose server died, or a
  redis-server running on the directory without the lock (left by an older version or
  started by hand), stops it, says so in the log, and waits for it to exit before
  starting its own.

Only the server's own user reads it. The directory is 0700; redis-server runs with
umask 077, so its AOF and RDB files are 0600 (files an older version left are set so
at start), and its socket is 0700. No client gets in without the password, generated
once and kept in ``redis.password`` (0600) next to the socket; clients log in as the
ACL user ``charging``; redis-server reads only the password's SHA-256, from ``users.acl``.
``charging worker`` and the CLI, given the socket's ``unix://`` URL without a password,
read the password from that file (``with_password``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import secrets
import shutil
import signal
import stat
from pathlib import Path
from urllib.parse import quote, urlparse

import redis.asyncio as aioredis

from charging.children import dying_with_parent, supervise
from charging.errors import StartupError
from charging.redis_ready import wait_until_ready

log = logging.getLogger("charging.redis")

LOCK_FILE = "charging.lock"
PASSWORD_FILE = "redis.password"
ACL_FILE = "users.acl"
USER = "charging"

INSTALL_HINT = (
    "redis-server was not found. Install it (Debian: apt-get install redis-server) "
    "or point CHARGING_REDIS_URL at a running Redis 7."
)


def redis_command(
    binary: str, directory: Path, appendfsync: str, *, port: int = 0, aclfile: Path | None = None
) -> list[str]:
    """The redis-server command line. ``port`` 0 means Unix socket only; ``aclfile``
    holds its users (else the default user needs no password)."""
    socket = directory / "redis.sock"
    acl = ["--aclfile", str(aclfile)] if aclfile is not None else []
    return [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--unixsocket", str(socket),
        "--unixsocketperm", "700",
        "--dir", str(directory),
        "--appendonly", "yes",
        "--appendfsync", appendfsync,
        "--save", "",
        "--daemonize", "no",
        "--logfile", "redis.log",
        "--protected-mode", "yes",
        *acl,
    ]  # fmt: skip


def password_of(directory: Path) -> str:
    """The embedded Redis's password, generated on first use into a 0600 file."""
    path = directory / PASSWORD_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    return path.read_text().strip()


def with_password(url: str) -> str:
    """``url`` with the embedded Redis's credentials when it names an embedded Redis's
    socket (``unix://.../redis.sock``) without a password and the password file is
    beside it; any other URL as it is. How ``charging worker`` and the CLI log in."""
    u = urlparse(url)
    if u.scheme != "unix" or u.password:
        return url
    path = Path(u.path).parent / PASSWORD_FILE
    try:
        password = path.read_text().strip()
    except OSError:
        return url
    return f"unix://{USER}:{quote(password, safe='')}@{u.path}" + (f"?{u.query}" if u.query else "")


def _private(directory: Path) -> None:
    """Only the owner may enter the directory or read what Redis wrote in it."""
    directory.chmod(0o700)
    for path in (*directory.glob("*.aof"), *directory.glob("*.rdb"), *directory.glob("appendonlydir*/*")):
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            path.chmod(0o600)
    for path in directory.glob("appendonlydir*"):
        path.chmod(0o700)


def _acl(directory: Path, password: str) -> Path:
    """The ACL file: ``charging`` with every right, and the default user behind the same
    password. Only the password's SHA-256 is in it.

    The default user must not be switched off or restricted: redis-server 7.0 replays
    the AOF's MULTI/EXEC blocks with the default user's rights, and refuses them
    (``NOPERM``, in redis.log only) when it has none, so a restart silently loses every
    change made in a transaction."""
    digest = hashlib.sha256(password.encode()).hexdigest()
    path = directory / ACL_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"user default on #{digest} ~* &* +@all\nuser {USER} on #{digest} ~* &* +@all\n")
    return path


def _started_at(pid: int) -> str | None:
    """A live process's start time (clock ticks after boot, from /proc): with the pid it
    names one process, whatever pids are reused. None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def _owner(fd: int) -> tuple[int, str] | None:
    """The pid and start time recorded in the lock file."""
    fields = os.pread(fd, 100, 0).decode(errors="replace").split()
    return (int(fields[0]), fields[1]) if len(fields) == 2 and fields[0].isdigit() else None


def redis_processes(binary: str, directory: Path) -> list[int]:
    """Pids of the redis-server processes working in ``directory`` (redis-server changes
    into its ``--dir``; its command line is rewritten as a process title, so the working
    directory is what names its data directory)."""
    name = Path(binary).name[:15]  # the kernel keeps 15 characters of a command name
    pids: list[int] = []
    if not Path("/proc").is_dir():  # not Linux: the lock alone keeps a second one out
        return pids
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (entry / "comm").read_text().strip() == name and Path(os.readlink(entry / "cwd")) == directory:
                pids.append(int(entry.name))
    return pids


class EmbeddedRedis:
    def __init__(
        self, binary: str, directory: Path, appendfsync: str = "everysec", *, ready_timeout_s: float = 120.0
    ) -> None:
        self.binary = binary
        self.directory = directory.resolve()
        self.appendfsync = appendfsync
        self.ready_timeout_s = ready_timeout_s
        self._proc: asyncio.subprocess.Process | None = None
        self._lock: int | None = None
        self._stopping = False
        self._password = ""

    @property
    def url(self) -> str:
        """The socket's URL with the credentials (redact before showing it)."""
        return f"unix://{USER}:{self._password}@{self.directory / 'redis.sock'}"

    @property
    def name(self) -> str:
        return f"the embedded redis-server in {self.directory}"

    async def start(self) -> str:
        path = shutil.which(self.binary)
        if path is None:
            raise StartupError(INSTALL_HINT)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        _private(self.directory)
        if self._lock is None:
            self._lock = await self._lock_directory()
        self._password = password_of(self.directory)
        # Holding the lock, any redis-server here runs without it: stop it.
        if pids := redis_processes(path, self.directory):
            log.warning(
                "stopping a redis-server found running on the data directory without its lock",
                extra={"pids": pids, "dir": str(self.directory)},
            )
            await self._terminate(pids)
        self._proc = await asyncio.create_subprocess_exec(
            # SIGTERM (a clean shutdown that flushes the AOF) when the server dies; umask
            # 077: the AOF and RDB files it writes are 0600.
            *dying_with_parent(
                redis_command(path, self.directory, self.appendfsync, aclfile=_acl(self.directory, self._password)),
                "TERM",
                umask="077",
            ),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            pass_fds=(self._lock,),
        )
        await self._wait_ready()
        log.info("embedded redis started", extra={"pid": self._proc.pid, "dir": str(self.directory)})
        return self.url

    async def _lock_directory(self) -> int:
        """Lock the data directory and record this process as its owner; when the
        lock is held by what a dead server left behind, stop that first."""
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            await self._acquire(fd)
        except BaseException:
            os.close(fd)
            raise
        me = os.getpid()
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{me} {_started_at(me)}\n".encode(), 0)
        return fd

    async def _acquire(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            owner = _owner(fd)
            if owner and _started_at(owner[0]) == owner[1]:
                raise StartupError(f"data directory {self.directory} is in use by process {owner[0]}")
            if deadline is not None:
                if loop.time() > deadline:
                    raise StartupError(f"data directory {self.directory} stays locked ({LOCK_FILE})")
                await asyncio.sleep(0.05)
                continue
            # A server starting at this very moment may hold the lock without having
            # recorded itself yet: look again before stopping anything.
            await asyncio.sleep(0.1)
            if _owner(fd) != owner:
                continue
            left = redis_processes(self.binary, self.directory)
            log.warning(
                "the server that used the data directory died; stopping the redis-server it left",
                extra={"pids": left, "dir": str(self.directory), "server_pid": owner[0] if owner else None},
            )
            await self._terminate(left)
            deadline = loop.time() + 2.0

    async def _terminate(self, pids: list[int], timeout_s: float = 10.0) -> None:
        """SIGTERM (redis-server flushes its AOF and exits), SIGKILL after ``timeout_s``;
        return once they are gone. They are not our children: poll."""
        alive = {pid: start for pid in pids if (start := _started_at(pid)) is not None}
        loop = asyncio.get_running_loop()
        for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 2.0)):
            for pid in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = loop.time() + wait_s
            while alive and loop.time() < deadline:
                await asyncio.sleep(0.02)
                alive = {pid: start for pid, start in alive.items() if _started_at(pid) == start}
            if not alive:
                return

    async def _wait_ready(self) -> None:
        proc = self._proc
        assert proc is not None

        def running() -> None:
            if proc.returncode is not None:
                raise StartupError(f"redis-server exited with {proc.returncode}; see {self.directory / 'redis.log'}")

        client = aioredis.Redis.from_url(self.url)
        try:
            await wait_until_ready(client, self.name, self.ready_timeout_s, check=running)
            answering = int((await client.info("server"))["process_id"])
        finally:
            await client.aclose()
        if answering != proc.pid:
            raise StartupError(f"another redis-server (pid {answering}) answers on {self.directory / 'redis.sock'}")

    async def supervise(self) -> None:
        """Restart the child if it dies while the server runs (the AOF restores state)."""
        await supervise("redis", self._wait, self.start, lambda: self._stopping)

    async def _wait(self) -> int:
        assert self._proc is not None
        return await self._proc.wait()

    async def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.terminate()  # redis-server flushes the AOF and exits on SIGTERM
            try:
                await asyncio.wait_for(proc.wait(), timeout_s)
            except TimeoutError:
                proc.kill()
                await proc.wait()
            log.info("embedded redis stopped")
        if self._lock is not None:
            os.close(self._lock)  # the directory is free once redis-server has exited too
            self._lock = None
