"""The embedded PostgreSQL: runs as the postgres user when root, on a Unix socket only,
keeps its data across restarts, and is not left behind by a server killed with -9."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psycopg
import pytest

from charging.embedded_postgres import (
    SERVER_SETTINGS,
    EmbeddedPostgres,
    Layout,
    blocking_ancestor,
    find_bin_dir,
    postgres_command,
    run_as,
)
from charging.errors import StartupError


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie has exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pid: int, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def uid_of(pid: int) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("Uid:"))
    return int(line.split()[1])


async def test_runs_unprivileged_on_a_socket_only_and_keeps_its_data(postgres_dir: Path) -> None:
    pg = EmbeddedPostgres(postgres_dir, durable=False)
    url = await pg.start()
    try:
        assert pg.pid is not None
        user = run_as()
        assert uid_of(pg.pid) == (os.getuid() if user is None else user.uid)
        assert uid_of(pg.pid) != 0
        assert stat.S_IMODE(pg.layout.socket.stat().st_mode) == 0o700
        assert stat.S_IMODE(pg.layout.password_file.stat().st_mode) == 0o600
        async with await psycopg.AsyncConnection.connect(url) as conn:
            assert await (await conn.execute("SHOW listen_addresses")).fetchone() == ("",)
            await conn.execute("CREATE TABLE kept (x int)")
            await conn.execute("INSERT INTO kept VALUES (42)")
        second = EmbeddedPostgres(postgres_dir, durable=False)  # another server, same directory
        with pytest.raises(StartupError, match=f"in use by process {os.getpid()}"):
            await second.start()
        await second.stop()
        async with await psycopg.AsyncConnection.connect(url) as conn:  # the first one unharmed
            assert await (await conn.execute("SELECT x FROM kept")).fetchall() == [(42,)]
        with pytest.raises(psycopg.OperationalError):  # the password is required
            psycopg.connect(f"host={pg.layout.socket} dbname=charging user=charging password=wrong").close()
    finally:
        first = pg.pid
        await pg.stop()
    assert first is not None and not alive(first)

    again = EmbeddedPostgres(postgres_dir, durable=False)
    assert await again.start() == url  # the same password, kept
    supervisor = asyncio.create_task(again.supervise())
    try:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            assert await (await conn.execute("SELECT x FROM kept")).fetchall() == [(42,)]
        # Supervised: a postmaster that dies is started again, after crash recovery.
        crashed = again.pid
        assert crashed is not None
        os.kill(crashed, signal.SIGKILL)
        for _ in range(600):
            if again.pid != crashed:
                try:
                    async with await psycopg.AsyncConnection.connect(url) as conn:
                        assert await (await conn.execute("SELECT x FROM kept")).fetchall() == [(42,)]
                    break
                except psycopg.OperationalError:
                    pass
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the embedded postgres was not restarted")
    finally:
        supervisor.cancel()  # first, as the server does: no restart while stopping
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
        await again.stop()


def test_a_postmaster_left_running_is_stopped_at_start(postgres_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    asyncio.run(start_and_query(postgres_dir))
    # A postmaster without the parent-death signal, as one started by hand would be.
    user = run_as()
    layout = Layout(postgres_dir)
    left = subprocess.Popen(
        postgres_command(find_bin_dir(), layout, SERVER_SETTINGS),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        user=None if user is None else user.uid,
        group=None if user is None else user.gid,
        extra_groups=None if user is None else [],
    )
    try:
        for _ in range(200):
            try:
                psycopg.connect(layout.url()).close()
                break
            except psycopg.OperationalError:
                time.sleep(0.05)
        with caplog.at_level(logging.WARNING, logger="charging.postgres"):
            asyncio.run(start_and_query(postgres_dir))
        assert left.wait(30) == 0
        warned = [r for r in caplog.records if "left running" in r.getMessage()]
        assert [getattr(r, "pid", None) for r in warned] == [left.pid]
    finally:
        if left.poll() is None:
            left.send_signal(signal.SIGINT)
            left.wait(30)


KILLED_SERVER = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from charging.embedded_postgres import EmbeddedPostgres

    async def main():
        pg = EmbeddedPostgres(Path(sys.argv[1]), durable=False)
        await pg.start()
        print(pg.pid, flush=True)
        await asyncio.sleep(300)

    asyncio.run(main())
    """
)


async def start_and_query(directory: Path) -> None:
    """Start an embedded PostgreSQL on ``directory``, answer a query, stop it."""
    pg = EmbeddedPostgres(directory, durable=False)
    url = await pg.start()
    try:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
    finally:
        await pg.stop()


def test_the_postmaster_dies_with_a_server_killed_by_sigkill(postgres_dir: Path) -> None:
    server = subprocess.Popen(
        [sys.executable, "-c", KILLED_SERVER, str(postgres_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        postmaster = int(server.stdout.readline())
        assert alive(postmaster)
    finally:
        server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()
    assert wait_gone(postmaster), "the postmaster outlived its server"
    asyncio.run(start_and_query(postgres_dir))  # starts again on the same data directory


def test_blocking_ancestor_names_the_directory_in_the_way() -> None:
    base = Path(tempfile.mkdtemp())
    try:
        base.chmod(0o755)
        inner = base / "a" / "b"
        inner.mkdir(parents=True)
        (base / "a").chmod(0o700)
        stranger = 65_534
        assert blocking_ancestor(inner, stranger, [stranger]) == base / "a"
        (base / "a").chmod(0o711)
        assert blocking_ancestor(inner, stranger, [stranger]) is None
        assert blocking_ancestor(inner, os.getuid(), [os.getgid()]) is None
    finally:
        shutil.rmtree(base)


def test_the_configured_bin_dir_wins_and_debian_is_found() -> None:
    assert find_bin_dir("/opt/pg/bin") == Path("/opt/pg/bin")
    assert (find_bin_dir() / "initdb").exists()
