"""An embedded PostgreSQL child for when no database URL is configured.

Everything lives under one directory (``CHARGING_DATABASE_DIR``, default ``var/postgres``),
owned by the user PostgreSQL runs as, mode 0700::

    data/          the cluster, made by initdb on the first start
    socket/        its Unix socket (listen_addresses is empty: no TCP port at all)
    password       the generated password of the role ``charging`` (0600), the schema's
                   owner: the migrations run as it
    server_password the generated password of ``charging_server`` (0600), the server's
                   login role, a member of ``charging_app`` (charging/database_roles.py)
    postgres.log   what initdb and postgres print
    charging.lock  held by the server using the directory (see below)

PostgreSQL refuses to run as root, and the machines of this project run as root. As root,
initdb and postgres therefore run as the unprivileged ``postgres`` user that Debian's
``postgresql`` package creates; as any other user they run as that user. That user must
be able to reach the directory: every ancestor must be searchable by it (a directory made
by ``mktemp -d`` is not), which ``start`` checks first and names the ancestor in the way.

A postmaster does not notice that its parent died: after a kill -9 of the server it would
go on holding the data directory and the socket. Two things keep that from lasting:

* every child is started through util-linux ``setpriv --pdeathsig INT``, so the kernel
  sends the postmaster SIGINT (fast shutdown) the moment the server process dies;
* the server holds ``charging.lock`` in the directory while it runs, so a second server
  on the same directory refuses to start; should a postmaster still be running on the
  data directory when a server gets that lock (one started by hand, or by a release
  without the above), ``start`` stops it (fast) and logs a warning naming its pid,
  rather than failing on PostgreSQL's own lock file.

The server is the only client; it stops the postmaster with SIGINT (fast shutdown:
open transactions are rolled back, a checkpoint is written) when it stops itself.
"""

from __future__ import annotations

import asyncio
import fcntl
import glob
import logging
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

import psycopg
from psycopg import sql

from charging import database_roles
from charging.children import dying_with_parent, supervise
from charging.errors import InvalidRequest, StartupError
from charging.settings import Settings

log = logging.getLogger("charging.postgres")

INSTALL_HINT = (
    "PostgreSQL was not found. Install it (Debian: apt-get install postgresql), set "
    "CHARGING_POSTGRES_BIN_DIR to the directory holding initdb and postgres, or point "
    "CHARGING_DATABASE_URL at a running PostgreSQL."
)
ROLE = "charging"
SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes with the terminating NUL
DATABASE = "charging"
# Settings for a server nobody else uses: one client process, a Unix socket only.
SERVER_SETTINGS: Mapping[str, str] = {
    "listen_addresses": "",
    "unix_socket_permissions": "0700",
    "max_connections": "100",
    "logging_collector": "off",
}
# Tests trade durability for speed: a crash of the machine may lose the cluster.
UNDURABLE_SETTINGS: Mapping[str, str] = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


@dataclass(frozen=True)
class RunAs:
    """The unprivileged user PostgreSQL runs as when the server runs as root."""

    name: str
    uid: int
    gid: int

    @property
    def gids(self) -> list[int]:
        return os.getgrouplist(self.name, self.gid)


def run_as() -> RunAs | None:
    """``postgres`` when running as root (PostgreSQL refuses root), else None: the current user."""
    if os.geteuid() != 0:
        return None
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise StartupError("running as root, and no postgres user to run PostgreSQL as. " + INSTALL_HINT) from None
    return RunAs(user.pw_name, user.pw_uid, user.pw_gid)


def find_bin_dir(configured: str = "") -> Path:
    """Where initdb and postgres are: the configured directory, else the newest of Debian's
    ``/usr/lib/postgresql/<major>/bin``, else ``pg_config --bindir``, else the PATH."""
    if configured:
        return Path(configured)
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=_major, reverse=True)
    if debian:
        return Path(debian[0]).parent
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if found and (Path(found) / "postgres").exists():
            return Path(found)
    on_path = shutil.which("postgres")
    if on_path is not None:
        return Path(on_path).parent
    raise StartupError(INSTALL_HINT)


def _major(path: str) -> int:
    version = Path(path).parent.parent.name
    return int(version) if version.isdigit() else 0


def as_user(argv: list[str], user: RunAs | None) -> list[str]:
    """``argv`` run as ``user`` (None: as we are), dying with the calling process (SIGINT,
    a fast shutdown). setpriv changes the ids before the exec, and the parent-death signal
    it sets survives the exec (it is cleared by a change of credentials, which setpriv
    makes first)."""
    ids = [] if user is None else ["--reuid", str(user.uid), "--regid", str(user.gid), "--clear-groups"]
    return dying_with_parent(argv, "INT", ids=ids)


def blocking_ancestor(path: Path, uid: int, gids: list[int]) -> Path | None:
    """The first directory on the way to ``path`` that ``uid`` (in ``gids``) cannot search."""
    for directory in reversed([path, *path.parents]):
        if not directory.exists():
            return None
        st = directory.stat()
        if st.st_uid == uid:
            bit = 0o100
        elif st.st_gid in gids:
            bit = 0o010
        else:
            bit = 0o001
        if not st.st_mode & bit:
            return directory
    return None


def private_dir(prefix: str) -> Path:
    """A fresh directory under the system's temporary directory that PostgreSQL can reach
    (owned by its user when running as root): for tests and benchmarks."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    user = run_as()
    if user is not None:
        os.chown(directory, user.uid, user.gid)
    return directory


@dataclass(frozen=True)
class Layout:
    """The files of one embedded cluster, all under ``directory``."""

    directory: Path

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def socket(self) -> Path:
        return self.directory / "socket"

    @property
    def password_file(self) -> Path:
        return self.directory / "password"

    @property
    def server_password_file(self) -> Path:
        return self.directory / "server_password"

    @property
    def log_file(self) -> Path:
        return self.directory / "postgres.log"

    @property
    def lock_file(self) -> Path:
        return self.directory / "charging.lock"

    def url(self, database: str = DATABASE) -> str:
        """A libpq URL over the Unix socket, with the password."""
        password = self.password_file.read_text().strip()
        return f"postgresql://{ROLE}:{quote(password, safe='')}@/{database}?host={quote(str(self.socket), safe='')}"

    def server_url(self, database: str = DATABASE) -> str:
        """The URL the server connects with: its own login role, not the owner
        (``ensure_server_login`` makes it)."""
        password = database_roles.password_in(self.server_password_file)
        login = database_roles.SERVER_LOGIN
        return f"postgresql://{login}:{quote(password, safe='')}@/{database}?host={quote(str(self.socket), safe='')}"

    def ensure_server_login(self, database: str = DATABASE) -> str:
        """Make the server's login role (after the migrations made ``charging_app``);
        the server's URL. Blocking."""
        password = database_roles.password_in(self.server_password_file)
        database_roles.ensure_login(self.url(database), database_roles.SERVER_LOGIN, password)
        return self.server_url(database)


def postgres_command(bin_dir: Path, layout: Layout, settings: Mapping[str, str] = SERVER_SETTINGS) -> list[str]:
    """The postgres command line (before ``as_user``)."""
    args = [str(bin_dir / "postgres"), "-D", str(layout.data), "-k", str(layout.socket)]
    for name, value in settings.items():
        args += ["-c", f"{name}={value}"]
    return args


def prepare(bin_dir: Path, layout: Layout, user: RunAs | None, *, durable: bool = True) -> None:
    """``make_directories``, then ``prepare_cluster``. Blocking."""
    make_directories(layout, user)
    prepare_cluster(bin_dir, layout, user, durable=durable)


def make_directories(layout: Layout, user: RunAs | None) -> None:
    """Make the directories and check that the PostgreSQL user can reach them."""
    for path in (layout.directory, layout.socket):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)
        if user is not None:
            os.chown(path, user.uid, user.gid)
    if user is not None:
        blocked = blocking_ancestor(layout.socket, user.uid, user.gids)
        if blocked is not None:
            raise StartupError(
                f"PostgreSQL runs as the user {user.name}, who cannot enter {blocked}: choose a "
                "CHARGING_DATABASE_DIR it can reach (e.g. /var/lib/charging/postgres) "
                f"or let it in (chmod o+x {blocked})"
            )
    socket_file = layout.socket / ".s.PGSQL.5432"
    if len(os.fsencode(socket_file)) > SOCKET_PATH_MAX:
        raise StartupError(
            f"{socket_file} is longer than a Unix socket path may be: choose a shorter CHARGING_DATABASE_DIR"
        )


def prepare_cluster(bin_dir: Path, layout: Layout, user: RunAs | None, *, durable: bool = True) -> None:
    """initdb on first use; else stop a postmaster left running on the data directory
    (only call this holding the directory's lock, see ``lock_directory``). Blocking."""
    if not (layout.data / "PG_VERSION").exists():
        _initdb(bin_dir, layout, user, durable=durable)
    else:
        stop_stale(bin_dir, layout, user)


def lock_directory(layout: Layout) -> int:
    """Lock ``charging.lock`` in the directory for as long as this server runs (the
    kernel lets go when it dies, even by SIGKILL), recording its pid; the descriptor.

    PostgreSQL keeps a second postmaster off its data directory by itself; this lock
    keeps a second *server* from taking over the first one's: only while holding it is a
    postmaster found running known to be left by a server that died, and safe to stop.
    """
    fd = os.open(layout.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise StartupError(f"the embedded PostgreSQL in {layout.directory} is in use by process {owner}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _initdb(bin_dir: Path, layout: Layout, user: RunAs | None, *, durable: bool) -> None:
    if layout.data.exists():  # an initdb interrupted half-way; nothing can be in it yet
        shutil.rmtree(layout.data)
    fd = os.open(layout.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(24) + "\n")
    if user is not None:
        os.chown(layout.password_file, user.uid, user.gid)
    argv = [
        str(bin_dir / "initdb"),
        "-D", str(layout.data),
        "-U", ROLE,
        "--pwfile", str(layout.password_file),
        "--auth", "scram-sha-256",
        # Not the environment's locale: a bare container has none, which would make the
        # cluster SQL_ASCII.
        "--encoding", "UTF8",
        "--locale", "C.UTF-8",
    ]  # fmt: skip
    if not durable:
        argv.append("--no-sync")
    log.info("initdb", extra={"dir": str(layout.data)})
    _run(as_user(argv, user), layout, "initdb")


def stop_stale(bin_dir: Path, layout: Layout, user: RunAs | None) -> int | None:
    """Stop (fast) a postmaster still running on the data directory; its pid, or None."""
    pid_file = layout.data / "postmaster.pid"
    if not pid_file.exists():
        return None
    pg_ctl = str(bin_dir / "pg_ctl")
    status = subprocess.run(as_user([pg_ctl, "status", "-D", str(layout.data)], user), capture_output=True, check=False)
    if status.returncode != 0:  # 3: not running; postgres removes the stale lock file itself
        return None
    pid = int(pid_file.read_text().split()[0])
    log.warning(
        "a postmaster was left running on the data directory (its server died?); stopping it",
        extra={"pid": pid, "dir": str(layout.data)},
    )
    _run(as_user([pg_ctl, "stop", "-D", str(layout.data), "-m", "fast", "-w", "-t", "60"], user), layout, "pg_ctl stop")
    return pid


def open_log(layout: Layout) -> BinaryIO:
    """The log file for appending, readable only by its owner (statements appear in errors)."""
    return os.fdopen(os.open(layout.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab")


def _run(argv: list[str], layout: Layout, what: str) -> None:
    with open_log(layout) as out:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, check=False)
    if done.returncode != 0:
        raise StartupError(f"{what} failed with {done.returncode}; see {layout.log_file}")


async def wait_ready(url: str, exited: Callable[[], int | None], log_file: Path, timeout_s: float) -> None:
    """Until a connection to ``url`` succeeds; fails at once if the process has exited."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        code = exited()
        if code is not None:
            raise StartupError(f"postgres exited with {code}; see {log_file}")
        try:
            conn = await psycopg.AsyncConnection.connect(url, connect_timeout=2)
        except psycopg.OperationalError:
            if loop.time() > deadline:
                raise StartupError(f"postgres did not start within {timeout_s:g} s; see {log_file}") from None
            await asyncio.sleep(0.05)
        else:
            await conn.close()
            return


async def ensure_database(url: str, name: str) -> None:
    """Create database ``name`` unless it exists (``url`` names another database)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        found = await (await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))).fetchone()
        if found is None:
            await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


class EmbeddedPostgres:
    def __init__(self, directory: Path, bin_dir: str = "", *, durable: bool = True) -> None:
        self.layout = Layout(directory.resolve())
        self.bin_dir = bin_dir
        self.durable = durable
        self._proc: asyncio.subprocess.Process | None = None
        self._lock: int | None = None
        self._stopping = False

    @property
    def url(self) -> str:
        return self.layout.url()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    async def start(self, timeout_s: float = 60.0) -> str:
        """Start (initdb on first use) and answer the URL of the ``charging`` database."""
        bin_dir = find_bin_dir(self.bin_dir)
        user = run_as()
        await asyncio.to_thread(make_directories, self.layout, user)
        if self._lock is None:
            self._lock = lock_directory(self.layout)
        await asyncio.to_thread(prepare_cluster, bin_dir, self.layout, user, durable=self.durable)
        settings = dict(SERVER_SETTINGS) if self.durable else {**SERVER_SETTINGS, **UNDURABLE_SETTINGS}
        out = await asyncio.to_thread(open_log, self.layout)
        with out:
            self._proc = await asyncio.create_subprocess_exec(
                *as_user(postgres_command(bin_dir, self.layout, settings), user),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                # Out of the terminal's process group: Ctrl-C reaches the server, which
                # stops PostgreSQL after its own clients, not at the same moment.
                start_new_session=True,
            )
        proc = self._proc
        await wait_ready(self.layout.url("postgres"), lambda: proc.returncode, self.layout.log_file, timeout_s)
        try:
            await ensure_database(self.layout.url("postgres"), DATABASE)
        except psycopg.OperationalError as exc:  # it died right after answering
            raise StartupError(f"postgres stopped answering: {exc}; see {self.layout.log_file}") from None
        log.info("embedded postgres started", extra={"pid": proc.pid, "dir": str(self.layout.directory)})
        return self.url

    async def supervise(self) -> None:
        """Restart the child if it dies while the server runs (crash recovery restores
        state; backends of the dead postmaster may hold its shared memory for a moment,
        so a start that fails is tried again)."""
        await supervise("postgres", self._wait, self.start, lambda: self._stopping)

    async def _wait(self) -> int:
        assert self._proc is not None
        return await self._proc.wait()

    async def stop(self, timeout_s: float = 30.0) -> None:
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                await asyncio.wait_for(proc.wait(), timeout_s)
            except TimeoutError:
                proc.kill()
                await proc.wait()
            log.info("embedded postgres stopped")
        if self._lock is not None:
            os.close(self._lock)  # after the postmaster is gone
            self._lock = None


def command_database_url(settings: Settings) -> str:
    """The database a command-line tool reaches: ``CHARGING_DATABASE_URL``, else the
    embedded PostgreSQL of ``CHARGING_DATABASE_DIR`` while its server runs."""
    if settings.database_url:
        return settings.database_url
    layout = Layout(settings.database_dir.resolve())
    if not layout.socket.exists() or not layout.password_file.exists():
        raise InvalidRequest(
            "CHARGING_DATABASE_URL", f"not set, and no embedded PostgreSQL is running under {settings.database_dir}"
        )
    # The server's own login role (read-only here) where the server has made it.
    return layout.server_url() if layout.server_password_file.exists() else layout.url()
