"""``charging serve --workers N``: N worker processes serving one address, one supervisor.

One Python process answers some 2,000-3,400 session steps/s on one core (README "Measured
figures"); a host's other cores need other processes. The supervisor:

* **owns the address.** It binds the gRPC address with ``SO_REUSEPORT`` without listening
  (which also turns port 0 into one port for every worker), then takes the *address lock*,
  ``flock`` on ``charging-grpc-port-<port>.lock`` in ``$XDG_RUNTIME_DIR`` (else
  ``/tmp``), and holds both until it exits.
  Each worker's gRPC server binds the same address with ``SO_REUSEPORT`` and the kernel
  spreads new connections over them. A single-process server (``--workers 1``) binds
  without ``SO_REUSEPORT``, so it cannot join the workers' port, nor they its port; and
  another supervisor, which would share the port like its own workers, finds the lock
  held and stops, naming the holder's pid. Only the supervisor knows that its workers
  belong together: that is why sharing is never the gRPC default here
  (``admission.server_options``).
* **owns the children the workers share**: the embedded redis-server and PostgreSQL
  (started, migrated and supervised as one server does, ``children.py``) and the bundled
  network simulator; the workers get their addresses. Workers, like those children, get
  SIGTERM when the supervisor dies, even by SIGKILL (``children.dying_with_parent``).
* **starts the workers** (``charging serve`` with ``CHARGING_WORKER_OF`` set: an ``App``
  starting everything ``server.py`` starts, on the shared port) and waits until each says
  it is serving through a pipe. A worker that cannot start the first time ends the
  supervisor (its error is on stderr): the settings are wrong, and a restart would not
  mend them.
* **restarts a worker that dies**, after a backoff that doubles from
  ``RESTART_FIRST_S`` up to ``RESTART_MAX_S`` while restarts keep failing, and starts
  from the first delay again once a worker has served for ``STEADY_S``.
* **serves the metrics** of all workers on the metrics address: prometheus-client's
  multiprocess mode, in a directory made empty at start, whose files of a dead worker are
  marked dead (``mark_process_dead``) before its successor starts.
* **stops on SIGTERM or SIGINT**: it passes the signal on (each worker goes NOT_SERVING,
  waits the shutdown delay, drains its calls), waits for every worker, then stops the
  children. A second signal is passed on too (the workers skip the shutdown delay).

With the compiled gRPC door (``CHARGING_GRPC_DOOR``, ``door/``, README "The compiled gRPC
door") the supervisor decides the security mode of the gRPC addresses as a server would,
starts each worker on a Unix socket of its own in a directory only this user can open,
then the door on the gRPC addresses (it binds the address the supervisor holds, with
``SO_REUSEPORT`` like a worker) in front of them, and restarts the door like a worker
when it dies. The door writes its own figures (``charging_door_*``) once a second to a
file in the metrics directory, served with the workers' (``DoorMetrics``). On SIGTERM the
workers go NOT_SERVING first (health is passed through the door), the door stops after
the shutdown delay, draining its calls, then the workers.

Background jobs run in every worker under leases (``leases.py``), so each job runs in one
process among all workers and hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.parser import text_string_to_metric_families

from charging import migrations
from charging.address_lock import AddressLock
from charging.admission import server_options
from charging.children import dying_with_parent
from charging.embedded_postgres import EmbeddedPostgres
from charging.embedded_redis import EmbeddedRedis
from charging.errors import StartupError
from charging.security.mode import Mode, decide
from charging.settings import Settings
from provisioning.simulator import NetworkSimulator

log = logging.getLogger("charging.supervisor")

RESTART_FIRST_S = 0.5
RESTART_MAX_S = 30.0
STEADY_S = 60.0  # a worker that served this long starts its successor's backoff afresh
# The door's figures, in the metrics directory (DoorMetrics).
DOOR_METRICS = "door.prom"


def worker_count(settings: Settings) -> int:
    """``CHARGING_WORKERS`` (``--workers``), or one per core when it is 0."""
    return settings.workers or len(os.sched_getaffinity(0)) or 1


def restart_delay_s(failures: int) -> float:
    """The wait before restarting a worker after ``failures`` quick deaths in a row."""
    return min(RESTART_FIRST_S * float(1 << min(max(failures - 1, 0), 16)), RESTART_MAX_S)


def fresh_directory(path: str) -> Path:
    """An empty directory for the workers' metrics files: ``path`` emptied (files of an
    earlier run would count again), or a new temporary one."""
    if not path:
        return Path(tempfile.mkdtemp(prefix="charging-metrics-"))
    directory = Path(path)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for stale in [*directory.glob("*.db"), directory / DOOR_METRICS]:
        stale.unlink(missing_ok=True)
    return directory


async def start_until_ready(
    command: Callable[[int], tuple[list[str], dict[str, str] | None]],
) -> tuple[asyncio.subprocess.Process, bytes]:
    """Start a child that says on a pipe when it serves (``command`` builds its command
    line and environment around the pipe's descriptor; a worker's CHARGING_READY_FD, the
    door's --ready-fd) and wait until it has said it, or exited: (the child, what it said,
    empty when it exited first). The child gets SIGTERM when the supervisor dies."""
    read_fd, write_fd = os.pipe()
    argv, env = command(write_fd)
    try:
        proc = await asyncio.create_subprocess_exec(*dying_with_parent(argv, "TERM"), env=env, pass_fds=(write_fd,))
    finally:
        os.close(write_fd)
    with os.fdopen(read_fd, "rb") as ready:
        return proc, await asyncio.to_thread(ready.read)


@dataclass
class Worker:
    slot: int
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0


def door_argv(
    settings: Settings, mode: Mode, address: str, sockets: list[Path], ready_fd: int, metrics_file: Path | None = None
) -> list[str]:
    """The door's command line: the gRPC addresses (and TLS files when secured) in front
    of the workers' sockets; its figures written to ``metrics_file`` when given."""
    s = settings
    argv = [s.grpc_door, "--listen", address, "--ready-fd", str(ready_fd), "--grace-s", str(int(s.grace_period_s))]
    if metrics_file is not None:
        argv += ["--metrics-file", str(metrics_file)]
    argv += ["--max-in-flight", str(s.max_in_flight)]  # per worker, as each worker's own bound
    for socket_path in sockets:
        argv += ["--upstream", f"unix:{socket_path}"]
    # The connection bounds a worker's gRPC server has (keepalive, idle and age limits,
    # streams per connection, the pending queue), on the door's listeners; it shares the
    # supervisor's port (address lock) as a worker would.
    for name, value in server_options(dataclasses.replace(s, worker_of=os.getpid())):
        argv += ["--arg", f"{name}={value}"]
    if mode is Mode.SECURED:
        argv += ["--cert", s.tls_cert, "--key", s.tls_key]
        if s.tls_client_ca:
            argv += ["--client-ca", s.tls_client_ca]
        if s.grpc_token_address:
            argv += ["--token-listen", s.grpc_token_address]
    return argv


@dataclass(frozen=True)
class DoorMetrics:
    """A Prometheus collector of the figures the door last wrote to ``path`` (its text
    format, rewritten whole once a second; none before the door first writes them)."""

    path: Path

    def collect(self) -> list[Metric]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        return list(text_string_to_metric_families(text))


@dataclass
class Supervisor:
    settings: Settings
    workers: int
    address: AddressLock | None = None
    metrics_port: int = 0
    _env: dict[str, str] = field(default_factory=dict)
    _workers: list[Worker] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stopping: bool = False
    _metrics_dir: Path | None = None
    _metrics_httpd: Any = None
    _redis: EmbeddedRedis | None = None
    _postgres: EmbeddedPostgres | None = None
    _simulator: NetworkSimulator | None = None
    _children: list[asyncio.Task[None]] = field(default_factory=list)
    _mode: Mode | None = None  # with the door: the mode it serves
    _sockets: Path | None = None  # with the door: the workers' socket directory
    _door: Worker | None = None

    def socket_of(self, slot: int) -> Path:
        assert self._sockets is not None
        return self._sockets / f"worker-{slot}.sock"

    async def start(self, environ: Mapping[str, str]) -> None:
        """Take the address, start the shared children and every worker; ``StartupError``
        (everything started stopped again) when one of them cannot start."""
        s = self.settings
        if s.grpc_door:  # before anything starts: a mode that may not start stops here
            self._mode = decide(
                [s.grpc_address, s.grpc_token_address], bool(s.tls_cert), bool(s.policy_file), s.insecure
            )
        self.address = AddressLock(s.grpc_address)
        env = {**environ, "CHARGING_GRPC_ADDRESS": self.address.address, "CHARGING_WORKER_OF": str(os.getpid())}
        env |= {"CHARGING_WORKERS": "1", "CHARGING_METRICS_ADDRESS": "", "CHARGING_CATALOG_FILE": ""}
        if self._mode is not None:
            self._sockets = Path(tempfile.mkdtemp(prefix="charging-door-"))  # mode 0700
            env |= {"CHARGING_BEHIND_DOOR": self._mode.value, "CHARGING_GRPC_TOKEN_ADDRESS": ""}
            env["CHARGING_GRPC_DOOR"] = ""
        if s.metrics_address:
            self._metrics_dir = fresh_directory(s.metrics_dir)
            env["PROMETHEUS_MULTIPROC_DIR"] = str(self._metrics_dir)
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=str(self._metrics_dir))  # type: ignore[no-untyped-call]
            if self._mode is not None:
                registry.register(DoorMetrics(self._metrics_dir / DOOR_METRICS))
            host, _, port = s.metrics_address.rpartition(":")
            try:
                self._metrics_httpd, _ = start_http_server(int(port), addr=host, registry=registry)
            except OSError as exc:
                raise StartupError(f"cannot listen on metrics address {s.metrics_address}: {exc.strerror}") from None
            self.metrics_port = self._metrics_httpd.server_port
        if not s.redis_url:
            self._redis = EmbeddedRedis(
                s.redis_server_bin, s.redis_dir, s.redis_appendfsync, ready_timeout_s=s.redis_ready_timeout_s
            )
            await self._redis.start()
            # Without the password: each worker reads it from beside the socket (with_password).
            env["CHARGING_REDIS_URL"] = f"unix://{self._redis.directory / 'redis.sock'}"
            self._children.append(asyncio.ensure_future(self._redis.supervise()))
        if not s.database_url:
            self._postgres = EmbeddedPostgres(s.database_dir, s.postgres_bin_dir)
            owner_url = await self._postgres.start()
            env["CHARGING_DATABASE_MIGRATE"] = "false"
            await asyncio.to_thread(migrations.upgrade, owner_url)
            # The workers connect as the server's own login role, not as the owner.
            env["CHARGING_DATABASE_URL"] = await asyncio.to_thread(self._postgres.layout.ensure_server_login)
            self._children.append(asyncio.ensure_future(self._postgres.supervise()))
        elif s.database_migrate:
            await asyncio.to_thread(migrations.upgrade, s.database_migrate_url or s.database_url)
            env["CHARGING_DATABASE_MIGRATE"] = "false"
        if not s.network_url:
            self._simulator = NetworkSimulator("127.0.0.1:0").start()
            env["CHARGING_NETWORK_URL"] = self._simulator.url
        self._env = env
        self._workers = [Worker(slot) for slot in range(self.workers)]
        # The first worker alone, so that one process loads what is missing (catalog, plan
        # index) before the others read it; then the rest together.
        await self._spawn(self._workers[0])
        await asyncio.gather(*(self._spawn(w) for w in self._workers[1:]))
        self._tasks = [asyncio.ensure_future(self._watch(w)) for w in self._workers]
        if self._mode is not None:
            self._door = Worker(-1)
            await self._spawn(self._door)
            self._tasks.append(asyncio.ensure_future(self._watch(self._door)))
        log.info(
            "serving with workers",
            extra={"workers": self.workers, "grpc_address": self.address.address, "metrics_port": self.metrics_port},
        )

    async def _spawn(self, worker: Worker) -> None:
        """Start the worker (or the door, slot -1) and wait until it serves; ``StartupError``
        when it exits first."""
        if worker is self._door:
            return await self._spawn_door(worker)
        env = dict(self._env)
        if self._sockets is not None:
            env["CHARGING_GRPC_ADDRESS"] = f"unix:{self.socket_of(worker.slot)}"
        if worker.slot == 0 and worker.restarts == 0:
            # CHARGING_CATALOG_FILE is loaded once, by the first worker: a worker started
            # again later must not load it over a catalog loaded since.
            env["CHARGING_CATALOG_FILE"] = self.settings.catalog_file

        def serve(ready_fd: int) -> tuple[list[str], dict[str, str]]:
            env["CHARGING_READY_FD"] = str(ready_fd)
            return [sys.executable, "-m", "charging.cli", "serve"], env

        worker.proc, said = await start_until_ready(serve)
        if said.strip() != b"serving":
            code = await worker.proc.wait()
            self._forget(worker.proc.pid)
            raise StartupError(f"worker {worker.slot} exited with status {code} before serving")
        log.info("worker serving", extra={"worker": worker.slot, "pid": worker.proc.pid})

    async def _spawn_door(self, door: Worker) -> None:
        mode, address = self._mode, self.address
        assert mode is not None and address is not None
        sockets = [self.socket_of(w.slot) for w in self._workers]
        figures = self._metrics_dir / DOOR_METRICS if self._metrics_dir is not None else None
        door.proc, said = await start_until_ready(
            lambda ready_fd: (door_argv(self.settings, mode, address.address, sockets, ready_fd, figures), None)
        )
        if not said.startswith(b"serving"):
            code = await door.proc.wait()
            raise StartupError(f"the gRPC door exited with status {code} before serving")
        log.info("gRPC door serving", extra={"pid": door.proc.pid, "workers": len(sockets)})

    async def _watch(self, worker: Worker) -> None:
        """Restart the worker whenever it dies while the supervisor is not stopping."""
        failures = 0
        loop = asyncio.get_running_loop()
        while True:
            assert worker.proc is not None
            started = loop.time()
            code = await worker.proc.wait()
            if worker is not self._door:
                self._forget(worker.proc.pid)
            elif self._metrics_dir is not None:  # a dead door's figures are not served as live
                (self._metrics_dir / DOOR_METRICS).unlink(missing_ok=True)
            if self._stopping:
                return
            failures = 1 if loop.time() - started >= STEADY_S else failures + 1
            delay = restart_delay_s(failures)
            what = "gRPC door died; restarting" if worker is self._door else "worker died; restarting"
            log.error(what, extra={"worker": worker.slot, "code": code, "delay_s": delay})
            await asyncio.sleep(delay)
            while not self._stopping:
                worker.restarts += 1
                try:
                    await self._spawn(worker)
                    break
                except StartupError as exc:
                    failures += 1
                    log.error("worker did not restart", extra={"worker": worker.slot, "error": str(exc)})
                    await asyncio.sleep(restart_delay_s(failures))
            if self._stopping:
                if worker.proc is not None and worker.proc.returncode is None:
                    worker.proc.terminate()
                    await worker.proc.wait()
                return

    def _forget(self, pid: int) -> None:
        """A dead worker's live gauges leave the shared metrics."""
        if self._metrics_dir is not None:
            mark_process_dead(pid, str(self._metrics_dir))  # type: ignore[no-untyped-call]

    def pids(self) -> list[int]:
        """The live workers' pids (the door's is ``door_pid``)."""
        return [w.proc.pid for w in self._workers if w.proc is not None and w.proc.returncode is None]

    def door_pid(self) -> int:
        door = self._door
        return door.proc.pid if door is not None and door.proc is not None and door.proc.returncode is None else 0

    def signal_workers(self, signum: int) -> None:
        """Pass a stop signal on to every worker (they drain, then exit)."""
        self._stopping = True
        for worker in self._workers:
            if worker.proc is not None and worker.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(signum)

    async def stop(self) -> None:
        """Stop the workers (draining; with the door, it drains first after the shutdown
        delay), then the shared children; give the address up."""
        self.signal_workers(signal.SIGTERM)
        door = self._door
        if door is not None and door.proc is not None and door.proc.returncode is None:
            await asyncio.sleep(self.settings.shutdown_delay_s)  # the workers say NOT_SERVING meanwhile
            with contextlib.suppress(ProcessLookupError):
                door.proc.terminate()
            try:  # it drains for the grace period, then exits by itself (5 s later at most)
                await asyncio.wait_for(door.proc.wait(), self.settings.grace_period_s + 10)
            except TimeoutError:
                door.proc.kill()
                await door.proc.wait()
        for worker in self._workers:
            if worker.proc is not None:
                await worker.proc.wait()
        for task in self._tasks:
            await asyncio.gather(task, return_exceptions=True)
        for task in self._children:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._simulator is not None:
            self._simulator.stop()
        if self._postgres is not None:
            await self._postgres.stop()
        if self._redis is not None:
            await self._redis.stop()
        if self._metrics_httpd is not None:
            self._metrics_httpd.shutdown()
            self._metrics_httpd.server_close()
        if self._metrics_dir is not None and not self.settings.metrics_dir:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
        if self.address is not None:
            self.address.close()
            self.address = None
        if self._sockets is not None:
            shutil.rmtree(self._sockets, ignore_errors=True)
        log.info("stopped")


async def supervise(settings: Settings, workers: int, environ: Mapping[str, str]) -> None:
    """Run ``workers`` workers until SIGTERM or SIGINT. A supervisor that cannot start
    exits with status 1 and one line on stderr saying why."""
    supervisor = Supervisor(settings, workers)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def signalled(signum: int) -> None:
        if stop.is_set():
            supervisor.signal_workers(signum)  # a second signal: the workers drain now
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signalled, sig)
    failure: StartupError | None = None
    try:
        await supervisor.start(environ)
        await stop.wait()
        log.info("shutting down")
    except StartupError as exc:
        failure = exc
    finally:
        await supervisor.stop()
    if failure is not None:
        raise SystemExit(f"error: {failure}")
