"""The system under test as real processes, and the faults done to them.

``charging serve`` runs as a child of the suite with its own embedded redis-server (a
child of the server, which dies with it) on a data directory that survives restarts, and
PostgreSQL at a URL the suite gives. The faults:

* ``kill_server``: SIGKILL the server (its embedded Redis dies with it, as a process, not as
  a machine: what Redis had written to its AOF stays), then start it again on the same
  data directory and port;
* ``pause_server``: SIGSTOP, a pause, SIGCONT (a long garbage-collection pause, a
  descheduled VM): clients time out with their requests in flight;
* ``kill_redis``: SIGKILL the redis-server only; the server's supervisor restarts the
  embedded one from its AOF while requests get UNAVAILABLE (an external one, which the
  network faults need, is restarted by the suite).

For the network faults (``chaos/proxy.py``) Redis is an external redis-server on a
loopback TCP port that the suite starts, and the server reaches it through the proxy.

With ``--cluster`` Redis is a local Redis Cluster of 3 primaries and 3 replicas
(``tests/redis_cluster.py``), and the fault ``kill_primary`` kills -9 a primary chosen at
random, waits until its replica serves its slots, and starts it again (it rejoins as a
replica).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.redis_cluster import LocalCluster

# A client of the server's Redis, whichever it is.
AnyRedis = redis.Redis | redis.RedisCluster


class ExternalRedis:
    """A redis-server on a loopback TCP port, with its AOF (timestamps on) in ``directory``."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        argv += ["--appendonly", "yes", "--appendfsync", "everysec", "--aof-timestamp-enabled", "yes"]
        argv += ["--save", "", "--protected-mode", "no", "--daemonize", "no"]
        with open(self.directory / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited; see {self.directory / 'redis.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer within 30 s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


class System:
    def __init__(
        self,
        workdir: Path,
        database_url: str,
        port: int,
        env: dict[str, str] | None = None,
        redis: ExternalRedis | None = None,
        cluster: LocalCluster | None = None,
    ) -> None:
        self.workdir = workdir
        self.database_url = database_url
        self.port = port
        self.env = env or {}
        self.redis = redis  # None: the server's embedded redis-server (or the cluster)
        self.cluster = cluster
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 90.0) -> None:
        """Start the server and return once it answers SERVING. A start right after a kill
        may find the old redis-server still letting go of its directory: try again."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._spawn()
            if self._wait_serving(deadline):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start within {timeout_s:g} s; see {self.log_path}")
            time.sleep(0.2)

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    def _spawn(self) -> None:
        environ = {
            **os.environ,
            "CHARGING_GRPC_ADDRESS": self.address,
            "CHARGING_METRICS_ADDRESS": "",
            "CHARGING_REDIS_DIR": str(self.workdir / "redis"),
            "CHARGING_DATABASE_URL": self.database_url,
            "CHARGING_DATABASE_MIGRATE": "true",
            "CHARGING_BILLING_INTERVAL_S": "0",
            "CHARGING_SHUTDOWN_DELAY_S": "0",
            "CHARGING_SWEEP_INTERVAL_S": "0.2",
            "CHARGING_GRACE_PERIOD_S": "1",
            "CHARGING_LOG_LEVEL": "WARNING",
            # One process (kill_server kills it), and none of the other doors.
            "CHARGING_WORKERS": "1",
            "CHARGING_NCHF_ADDRESS": "",
            "CHARGING_DIAMETER_ADDRESS": "",
            "CHARGING_CONSOLE_ADDRESS": "",
            **self.env,
        }
        if "CHARGING_REDIS_URL" not in self.env:
            environ.pop("CHARGING_REDIS_URL", None)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "charging.cli", "serve"], env=environ, stdout=log, stderr=log
            )
        self.starts += 1

    def _wait_serving(self, deadline: float) -> bool:
        assert self.proc is not None
        with grpc.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return True
                except grpc.RpcError:
                    pass
                time.sleep(0.05)
        return False

    def kill_server(self) -> str:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.start()
        return f"restarted as pid {self.proc.pid}"

    def pause_server(self, seconds: float) -> str:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)
        return f"{seconds:.2f} s"

    def redis_client(self) -> AnyRedis:
        """A client of the server's Redis: the cluster, the external one, or the embedded
        one through its socket and generated password (as ``charging worker`` finds it)."""
        if self.cluster is not None:
            seed = self.cluster.primaries()[0]
            return redis.RedisCluster(host="127.0.0.1", port=seed.port, decode_responses=True)
        if self.redis is not None:
            return redis.Redis(port=self.redis.port, decode_responses=True)
        directory = self.workdir / "redis"
        password = (directory / "redis.password").read_text().strip()
        return redis.Redis(
            unix_socket_path=str(directory / "redis.sock"),
            username="charging",
            password=password,
            decode_responses=True,
        )

    def redis_pid(self) -> int | None:
        """The embedded redis-server: the server's child whose command is redis-server."""
        assert self.proc is not None
        parent = str(self.proc.pid)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            ppid = stat[stat.rindex(")") + 2 :].split()[1]
            if ppid == parent and comm.startswith("redis-server"):
                return int(entry.name)
        return None

    def kill_redis(self) -> str:
        if self.redis is not None:
            self.redis.kill()
            time.sleep(0.2)
            self.redis.start()
            return "external redis-server killed and restarted"
        pid = self.redis_pid()
        if pid is None:
            return "no redis-server found (restarting)"
        os.kill(pid, signal.SIGKILL)
        return f"pid {pid}"

    def kill_primary(self, pick: float) -> str:
        """kill -9 the primary at ``pick`` (0 <= pick < 1) of the live ones; once a replica
        serves its slots (the cluster says ok without it), start it again."""
        assert self.cluster is not None
        primaries = sorted(self.cluster.primaries(), key=lambda n: n.port)
        victim = primaries[int(pick * len(primaries))]
        self.cluster.kill(victim)
        started = time.monotonic()
        while self._serves(victim.port):
            if time.monotonic() - started > 60:
                raise RuntimeError(f"no replica took over from port {victim.port} within a minute")
            time.sleep(0.1)
        took = time.monotonic() - started
        self.cluster.restart(victim)
        self.cluster.wait_ok()
        return f"primary on port {victim.port} killed, replica took over in {took:.1f} s, restarted as a replica"

    def _serves(self, port: int) -> bool:
        """A live node of the cluster still names ``port`` as the primary of some slots."""
        assert self.cluster is not None
        for node in self.cluster.nodes:
            if node.proc.poll() is not None or node.port == port:
                continue
            client = node.client()
            try:
                ranges = client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
                return any(int(primary[1]) == port for _start, _end, primary, *_ in ranges)
            except redis.RedisError:
                continue
            finally:
                client.close()
        return True

    def wait_serving(self, timeout_s: float = 90.0) -> None:
        if not self._wait_serving(time.monotonic() + timeout_s):
            raise RuntimeError(f"the server is not SERVING; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
