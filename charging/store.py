"""The connection to Redis and how its failures surface in the domain."""

from __future__ import annotations

from types import TracebackType
from typing import cast

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.driver_info import DriverInfo
from redis.utils import get_lib_version

from charging.cluster_link import ClusterLink, ClusterUrl
from charging.errors import StorageUnavailable
from charging.redis_link import RedisLink, RedisTls

# What each connection tells Redis it is (CLIENT SETINFO), worked out once: left to
# redis-py, every new pooled connection looks its own version up in the installed
# packages' metadata (importlib.metadata), which stopped the event loop for up to 55 ms
# under load when a burst needed one more connection.
DRIVER = DriverInfo(name="redis-py", lib_version=get_lib_version())  # type: ignore[no-untyped-call]


def connect(
    url: str, *, max_connections: int = 64, timeout_s: float = 5.0, tls: RedisTls | None = None
) -> aioredis.Redis:
    """A pooled client; replies decoded as UTF-8 strings. ``rediss://`` verifies the
    server's certificate (``RedisTls``).

    When every connection is in use a call waits up to ``timeout_s`` for one to come
    back (a blocking pool): redis-py's plain pool would fail at once with "Too many
    connections", which is a burst of our own making, not Redis being unavailable.

    A cluster URL (``redis+cluster://host:port,...``, ``cluster_link.ClusterUrl``) gives
    redis-py's ``RedisCluster`` instead, typed as ``Redis``: it answers the same commands
    for keys of one slot, which is all this code sends it."""
    cluster = ClusterUrl.parse(url)
    if cluster is not None:
        return cast(aioredis.Redis, _cluster_client(cluster, max_connections, timeout_s, tls or RedisTls()))
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        **(tls or RedisTls()).pool_options(url),
        decode_responses=True,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        health_check_interval=30,
        driver_info=DRIVER,
    )
    return aioredis.Redis.from_pool(pool)


def _cluster_client(url: ClusterUrl, max_connections: int, timeout_s: float, tls: RedisTls) -> RedisCluster:
    options = tls.pool_options("rediss://") if url.tls else {}
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in url.seeds],
        username=url.username or None,
        password=url.password or None,
        ssl=url.tls,
        decode_responses=True,
        max_connections=max_connections,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        driver_info=DRIVER,
        **options,
    )


def link(url: str, *, timeout_s: float = 5.0, tls: RedisTls | None = None) -> RedisLink | ClusterLink:
    """The pipelined hot-path link: one socket, or one per primary of a cluster."""
    cluster = ClusterUrl.parse(url)
    if cluster is not None:
        return ClusterLink(cluster, timeout_s=timeout_s, tls=tls)
    return RedisLink(url, timeout_s=timeout_s, tls=tls)


def unavailable(exc: BaseException) -> str:
    """Why Redis cannot answer now, or "" when the error means "wrong" rather than "not
    now". The same call succeeds later: after a reconnection, once a restart has read the
    dataset (LOADING; redis-py's BusyLoadingError is a ConnectionError), a script has
    ended (BUSY), a failover or resharding is over (MASTERDOWN, CLUSTERDOWN, TRYAGAIN)."""
    if isinstance(exc, redis_errors.BusyLoadingError):
        return "loading its dataset"
    if isinstance(exc, (redis_errors.ClusterDownError, redis_errors.TryAgainError)):
        return "without its master" if isinstance(exc, redis_errors.MasterDownError) else "reconfiguring"
    if isinstance(exc, redis_errors.TimeoutError):
        return "not answering in time"
    if isinstance(exc, redis_errors.ConnectionError):
        return "not reachable"
    if isinstance(exc, redis_errors.ResponseError) and str(exc).startswith("BUSY "):
        return "busy running a script"
    return ""


class _StorageErrors:
    """``storage_errors``'s context manager: stateless, so one instance serves every
    ``with`` (a class rather than ``@contextmanager``: it wraps every charging request)."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if isinstance(exc, redis_errors.RedisError) and (reason := unavailable(exc)):
            raise StorageUnavailable(f"redis unavailable: {reason}") from exc


_STORAGE_ERRORS = _StorageErrors()


def storage_errors() -> _StorageErrors:
    """Turn "Redis cannot answer now" (``unavailable``) into ``StorageUnavailable``;
    script bugs and other Redis replies stay internal errors."""
    return _STORAGE_ERRORS


def as_text(value: object) -> str:
    """A Redis reply as text, whichever way the client decodes: bytes decoded, None (no
    such field) as '' (the start-time moves read with either kind of client)."""
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)
