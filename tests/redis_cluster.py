"""A real local Redis Cluster for tests: 3 primaries and 3 replicas, each a redis-server
in cluster mode on a free loopback port in a directory of its own (append-only file on),
joined with ``redis-cli --cluster create``. Every wait is bounded."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.crc import key_slot

from charging.embedded_redis import redis_command
from tests.conftest import free_port

PRIMARIES = 3
READY_S = 60.0


@dataclass
class Node:
    port: int
    directory: Path
    command: list[str]
    proc: subprocess.Popen[bytes]

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=2, decode_responses=True)


@dataclass
class LocalCluster:
    nodes: list[Node] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The cluster's URL, as ``CHARGING_REDIS_URL`` takes it: every node a seed."""
        seeds = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes if n.proc.poll() is None)
        return f"redis+cluster://{seeds}/"

    def primaries(self) -> list[Node]:
        found = []
        for node in self.nodes:
            if node.proc.poll() is not None:
                continue
            try:
                if node.client().execute_command("ROLE")[0] == "master":
                    found.append(node)
            except redis.RedisError:
                continue
        return found

    def flush(self) -> None:
        for node in self.primaries():
            node.client().flushall()

    def kill(self, node: Node) -> None:
        """kill -9: no AOF flush, no goodbye to the other nodes."""
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(10)

    def restart(self, node: Node) -> None:
        """Start a killed node again on its port and directory: it reads its AOF and its
        nodes.conf, and rejoins (as a replica, when its replica took over meanwhile)."""
        node.proc = subprocess.Popen(node.command, stdout=subprocess.DEVNULL, cwd=node.directory)

    def primary_of(self, key: str) -> Node:
        """The node serving ``key``'s slot now, as the live nodes see it."""
        slot = int(key_slot(key.encode()))
        for node in self.nodes:
            if node.proc.poll() is not None:
                continue
            client = node.client()
            try:
                for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if int(start) <= slot <= int(end):
                        return next(n for n in self.nodes if n.port == int(primary[1]))
            except redis.RedisError:
                continue
            finally:
                client.close()
        raise LookupError("no live node answers CLUSTER SLOTS")

    def wait_ok(self, timeout_s: float = READY_S) -> None:
        """Until every live node says ``cluster_state:ok`` and agrees on three primaries."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if all(_ok(n) for n in self.nodes if n.proc.poll() is None):
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise TimeoutError("the redis cluster did not become ok in time")


def _ok(node: Node) -> bool:
    """The node says ``cluster_state:ok``, knows three primaries that serve slots and,
    if a replica, has finished its sync."""
    client = node.client()
    try:
        info = str(client.execute_command("CLUSTER", "INFO"))
        if "cluster_state:ok" not in info:
            return False
        lines = str(client.execute_command("CLUSTER", "NODES")).splitlines()
        # <id> <ip:port@bus> <flags> <primary> <ping> <pong> <epoch> <link> <slot>...
        serving = [f for f in (line.split() for line in lines) if "master" in f[2] and "fail" not in f[2] and f[8:]]
        if len(serving) != PRIMARIES:
            return False
        role = client.execute_command("ROLE")
        return role[0] == "master" or role[3] == "connected"  # a replica in sync with its primary
    finally:
        client.close()


def _start(binary: str, directory: Path, *, own_session: bool = False) -> Node:
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    command = [
        *redis_command(binary, directory, "everysec", port=port),
        "--cluster-enabled", "yes",
        "--cluster-config-file", str(directory / "nodes.conf"),
        "--cluster-port", str(free_port()),  # the bus; else port + 10000, which may be taken or too high
        "--cluster-node-timeout", "1000",
        "--cluster-replica-validity-factor", "0",
        "--repl-diskless-sync-delay", "0",
    ]  # fmt: skip
    # own_session: a Ctrl-C in the terminal reaches the server, not the cluster under it.
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, cwd=directory, start_new_session=own_session)
    node = Node(port, directory, command, proc)
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        try:
            node.client().ping()
            return node
        except redis.ConnectionError:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: see {directory / 'redis.log'}") from None
            time.sleep(0.05)
    proc.kill()
    raise TimeoutError("redis-server did not start")


@contextmanager
def local_cluster(directory: Path, *, own_session: bool = False) -> Iterator[LocalCluster]:
    binary = shutil.which("redis-server")
    cli = shutil.which("redis-cli")
    if binary is None or cli is None:
        raise RuntimeError("redis-server and redis-cli are needed (make test installs them)")
    cluster = LocalCluster()
    try:
        for i in range(PRIMARIES * 2):
            cluster.nodes.append(_start(binary, directory / f"node{i}", own_session=own_session))
        addresses = [f"127.0.0.1:{n.port}" for n in cluster.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=READY_S,
        )
        cluster.wait_ok()
        yield cluster
    finally:
        for node in cluster.nodes:
            if node.proc.poll() is None:
                node.proc.terminate()
        for node in cluster.nodes:
            try:
                node.proc.wait(10)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait(10)


def main() -> None:
    """``make cluster``: a local cluster under var/cluster (made afresh) and ``charging
    serve`` on it, until Ctrl-C (or SIGTERM); then both stop."""
    import sys

    directory = Path("var/cluster")
    shutil.rmtree(directory, ignore_errors=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    with local_cluster(directory.absolute(), own_session=True) as cluster:
        url = cluster.url
        print(f"redis cluster ready: CHARGING_REDIS_URL={url}", flush=True)
        charging = str(Path(sys.executable).with_name("charging"))
        server = subprocess.Popen([charging, "serve"], env={**os.environ, "CHARGING_REDIS_URL": url})
        try:
            server.wait()
        except KeyboardInterrupt:
            server.send_signal(signal.SIGTERM)
            server.wait(30)


if __name__ == "__main__":
    main()
