"""Who may reach Redis, and how: the embedded redis-server's password and private files,
a restricted ACL user on an external Redis, and rediss:// with certificates verified."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from charging import store
from charging.clock import ManualClock
from charging.embedded_redis import PASSWORD_FILE, EmbeddedRedis, with_password
from charging.errors import StartupError
from charging.redis_link import RedisLink, RedisTls
from charging.server import App
from charging.settings import Settings
from tests.conftest import DATA_KEY, INITIAL, Stubs, session_request
from tests.redis_servers import acl_redis, make_pki, tls_redis

# The ACL rules README "Data at rest and secrets" gives for the server's user.
SERVER_RULES = "~* &* +@all -@dangerous +info"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_embedded_redis_needs_its_password_and_keeps_its_files_private(tmp_path: Path) -> None:
    directory = tmp_path / "redis"
    embedded = EmbeddedRedis("redis-server", directory, appendfsync="always")
    url = await embedded.start()
    try:
        socket = directory / "redis.sock"
        anonymous = aioredis.Redis(unix_socket_path=str(socket))
        with pytest.raises(redis_errors.ConnectionError, match=r"(?i)authenticat"):
            await anonymous.set("k", "v")
        await anonymous.aclose()
        # The worker and the CLI, given the socket's URL alone, find the password beside it.
        found = with_password(f"unix://{socket}")
        assert found == url and "charging:" in found
        client = store.connect(found)
        await client.set("k", "v")
        await client.save()  # an RDB file too
        await client.aclose()
    finally:
        await embedded.stop()
    assert mode(directory) == 0o700
    assert mode(directory / PASSWORD_FILE) == 0o600
    password = (directory / PASSWORD_FILE).read_text().strip()
    assert password not in (directory / "users.acl").read_text()  # only its hash
    written = [*directory.glob("*.rdb"), *directory.glob("appendonlydir/*")]
    assert any(p.suffix == ".rdb" for p in written) and any(".aof" in p.name for p in written)
    assert {p.name: mode(p) for p in written} == {p.name: 0o600 for p in written}
    assert mode(directory / "appendonlydir") == 0o700


async def test_files_an_older_version_left_readable_become_private(tmp_path: Path) -> None:
    directory = tmp_path / "redis"
    directory.mkdir(mode=0o755)
    old = directory / "dump.rdb"
    old.write_bytes(b"")
    old.chmod(0o644)
    embedded = EmbeddedRedis("redis-server", directory)
    try:
        await embedded.start()
    finally:
        await embedded.stop()
    assert (mode(directory), mode(old)) == (0o700, 0o600)


def test_urls_other_than_an_embedded_socket_are_kept(tmp_path: Path) -> None:
    (tmp_path / PASSWORD_FILE).write_text("pw\n")
    for url in ("redis://127.0.0.1:6379/0", f"unix://u:own@{tmp_path}/redis.sock", f"unix://{tmp_path}/x/redis.sock"):
        assert with_password(url) == url
    assert with_password(f"unix://{tmp_path}/redis.sock?db=2") == f"unix://charging:pw@{tmp_path}/redis.sock?db=2"


async def charge_once(app: App) -> None:
    """Create a subscriber and run a session on it: the pooled client and the pipelined link."""
    import grpc

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
    try:
        stubs = Stubs.on(channel)
        await stubs.subscriber(balance=5_000_000)
        answer = await stubs.charging.ChargeSession(
            session_request("s-1", INITIAL, 0, [{"rating_group": 10, "requested": {}}])
        )
        assert answer.result_code == 2001
    finally:
        await channel.close()


async def test_the_server_works_with_a_restricted_acl_user(
    tmp_path: Path, clock: ManualClock, app_database_url: str
) -> None:
    # The default user keeps its rights behind a password (README: redis-server replays the
    # AOF's transactions with them), nobody logs in as it.
    users = (
        "user default on >default-pw ~* &* +@all\n"
        "user admin on >admin-pw ~* &* +@all\n"
        f"user server on >server-pw {SERVER_RULES}\n"
    )
    with acl_redis(tmp_path, users) as port:
        settings = Settings(
            grpc_address="127.0.0.1:0",
            metrics_address="",
            nchf_address="",
            database_url=app_database_url,
            data_key=DATA_KEY,
            redis_url=f"redis://server:server-pw@127.0.0.1:{port}/0",
        )
        app = App(settings, clock=clock, run_background=False)
        await app.start()
        try:
            await charge_once(app)
            assert app.redis is not None
            with pytest.raises(redis_errors.NoPermissionError):
                await app.redis.flushall()
        finally:
            await app.stop()


async def test_the_server_runs_on_a_tls_redis(tmp_path: Path, clock: ManualClock, app_database_url: str) -> None:
    pki = make_pki(tmp_path)
    with tls_redis(tmp_path, pki, auth_clients=True) as port:
        settings = Settings(
            grpc_address="127.0.0.1:0",
            metrics_address="",
            nchf_address="",
            database_url=app_database_url,
            data_key=DATA_KEY,
            redis_url=f"rediss://localhost:{port}/0",
            redis_tls_ca_file=str(pki.ca.cert),
            redis_tls_cert_file=str(pki.client.cert),
            redis_tls_key_file=str(pki.client.key),
        )
        app = App(settings, clock=clock, run_background=False)
        await app.start()
        try:
            await charge_once(app)
        finally:
            await app.stop()


async def test_a_tls_redis_under_a_wrong_ca_is_refused(
    tmp_path: Path, clock: ManualClock, app_database_url: str
) -> None:
    pki = make_pki(tmp_path)
    with tls_redis(tmp_path, pki) as port:
        url = f"rediss://localhost:{port}/0"
        link = RedisLink(url, tls=RedisTls(ca_file=str(pki.other_ca.cert)))
        with pytest.raises(redis_errors.ConnectionError, match="SSLCertVerificationError"):
            await link.execute("PING")
        await link.aclose()
        # The same link with the right CA, to show the refusal is the certificate's.
        link = RedisLink(url, tls=RedisTls(ca_file=str(pki.ca.cert)))
        assert await link.execute("PING") == "PONG"
        await link.aclose()
        # Checked against the host name too: the certificate names localhost and 127.0.0.1 only.
        link = RedisLink(f"rediss://127.0.0.2:{port}/0", tls=RedisTls(ca_file=str(pki.ca.cert)))
        with pytest.raises(redis_errors.ConnectionError):
            await link.execute("PING")
        await link.aclose()
        settings = Settings(
            grpc_address="127.0.0.1:0",
            metrics_address="",
            nchf_address="",
            database_url=app_database_url,
            data_key=DATA_KEY,
            redis_url=url,
            redis_tls_ca_file=str(pki.other_ca.cert),
            redis_ready_timeout_s=5,
        )
        app = App(settings, clock=clock, run_background=False)
        try:
            with pytest.raises(StartupError, match="certificate"):
                await app.start()
        finally:
            await app.stop()
