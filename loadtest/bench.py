"""Throughput of the charging server against a bare gRPC echo server on the same machine.

Why: an absolute requests/s figure depends on the machine; the ratio to a server that
does nothing but the shared gRPC/HTTP/2 work (``loadtest.echo_server``, same runtime:
grpc.aio on uvloop, one process) shows what the charging path itself costs. Both are
driven by the same h2load command (a C client, so the client is not the bottleneck),
with one repeated request: an ``EventRequest`` with ``REQUESTED_ACTION_CHECK_BALANCE``,
which goes through the full path (parse, subscriber lookup, one Lua script in Redis,
answer) without changing anything, so a repeated body stays valid.

h2load only sees HTTP statuses, not gRPC ones (those travel in trailers), so the request
is checked once with a real gRPC client before loading, and the server's own request
counter (``charging_requests_total``, scraped from its metrics endpoint on a free
loopback port) must show nothing but 2001 answers for ChargeEvent afterwards.

A second figure runs full sessions (INITIAL, 3 UPDATEs with used units, TERMINATE) from
a Python grpc.aio client in its own process. That figure is bound by the Python client
sharing the CPUs with the server, and is labelled so.

Everything runs on 127.0.0.1 in a temporary directory and is torn down in ``finally``
blocks. The last line printed is ``ratio=<charging rps / echo rps>``.

    python -m loadtest.bench                      # what `make bench` runs
    BENCH_DURATION=5 BENCH_CONCURRENCY=4 python -m loadtest.bench
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from charging.embedded_postgres import private_dir
from charging.embedded_redis import redis_command
from charging.v1 import admin_pb2, admin_pb2_grpc, charging_pb2, charging_pb2_grpc, common_pb2

REPO = Path(__file__).resolve().parent.parent
METHOD_PATH = "/charging.v1.Charging/ChargeEvent"
BALANCE_MICROS = 10**12  # 1,000,000 EUR: no subscriber runs dry during a run
MSISDN_BASE = 491_700_000_000  # + index: 12-digit E.164 numbers, valid for the server
STARTUP_TIMEOUT_S = 30.0


class BenchError(RuntimeError):
    """The bench cannot produce a trustworthy figure (a failed request, a dead child)."""


@dataclass(frozen=True)
class LoadResult:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int


@dataclass(frozen=True)
class SessionResult:
    sessions: int
    requests: int
    errors: int
    elapsed_s: float
    p50_ms: float
    p99_ms: float
    first_error: str = ""


# --------------------------------------------------------------------------- helpers


def env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


def free_port() -> int:
    """A currently free loopback port (the tiny race with other processes is accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def msisdn(index: int) -> str:
    return str(MSISDN_BASE + index)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: compressed flag 0, 4-byte big-endian length, payload."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def machine() -> str:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"machine: nproc={os.cpu_count()} cpu={model!r}"


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def child_env() -> dict[str, str]:
    """Environment for Python children: the repo on the path, since ``loadtest`` is not
    installed, and one server process (``charging serve`` starts one per core otherwise: the
    figures are CPU per request of the one process measured), and no Nchf door."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("CHARGING_WORKERS", "1")
    # No Nchf door unless a bench asks for one on a free port: its default (8090) may be
    # taken on the machine, and a server that cannot bind it does not start.
    env.setdefault("CHARGING_NCHF_ADDRESS", "")
    return env


@dataclass(frozen=True)
class Pinning:
    """Which CPUs the system under test (Redis, the charging server, the echo) and the
    clients (h2load, the probe, the session client, this process) run on. On a machine of
    a few cores the load generator otherwise takes CPU from the server as the offered rate
    grows, and an overload step would measure the generator: in production the network
    elements run elsewhere. Empty sets: not pinned."""

    server: frozenset[int]
    clients: frozenset[int]

    @staticmethod
    def choose(enabled: bool) -> Pinning:
        cpus = sorted(os.sched_getaffinity(0))
        if not enabled or len(cpus) < 2 or shutil.which("taskset") is None:
            return Pinning(frozenset(), frozenset())
        half = len(cpus) // 2
        return Pinning(frozenset(cpus[half:]), frozenset(cpus[:half]))

    def apply_to_self(self) -> None:
        """Clients started later inherit this process's CPUs."""
        if self.clients:
            os.sched_setaffinity(0, self.clients)

    def server_argv(self, argv: Sequence[str]) -> list[str]:
        if not self.server:
            return list(argv)
        return ["taskset", "-c", ",".join(str(c) for c in sorted(self.server)), *argv]

    def describe(self) -> str:
        if not self.server:
            return "not pinned (clients and server share every CPU)"
        return (
            f"server side (redis-server, charging server, echo) on CPU {sorted(self.server)}, "
            f"clients (h2load, probe, session client) on CPU {sorted(self.clients)}"
        )


def batch_of(messages: list[bytes]) -> bytes:
    """A ChargeBatch of serialized ChargeMessages, without parsing them (field 1 each)."""
    out = bytearray()
    for message in messages:
        out.append(0x0A)
        length = len(message)
        while length > 0x7F:
            out.append(length & 0x7F | 0x80)
            length >>= 7
        out.append(length)
        out += message
    return bytes(out)


@contextlib.contextmanager
def child(argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Run a child process for the duration of the block; always terminate it (then kill) on exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def alive(proc: subprocess.Popen[bytes], name: str, log: Path) -> None:
    if proc.poll() is not None:
        raise BenchError(f"{name} exited with {proc.returncode}; last lines of {log}:\n{tail(log)}")


# --------------------------------------------------------------------------- setup


def wait_redis(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
    try:
        while True:
            alive(proc, "redis-server", log)
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"redis-server did not answer within {STARTUP_TIMEOUT_S}s; see {log}")
            time.sleep(0.05)
    finally:
        client.close()


def server_stores(
    stack: contextlib.ExitStack,
    workdir: Path,
    name: str,
    wrap: Callable[[list[str]], list[str]] = list,
) -> dict[str, str]:
    """A bench server's stores, gone with ``stack``: a redis-server (append-only, every
    second) answering on its Unix socket, as with the embedded Redis that `make run`
    starts, and a directory for the server's own embedded PostgreSQL that the postgres
    user can reach. Returns the server's environment for them. ``wrap``: the
    redis-server command line as it is to run (pinned to CPUs, say)."""
    redis_port = free_port()
    redis_dir = workdir / "redis"
    redis_dir.mkdir(parents=True)
    log = workdir / "redis-server.out"
    argv = redis_command(shutil.which("redis-server") or "redis-server", redis_dir, "everysec", port=redis_port)
    wait_redis(stack.enter_context(child(wrap(argv), log)), redis_port, log)
    postgres_dir = private_dir(f"charging-{name}-pg-")
    stack.callback(shutil.rmtree, postgres_dir, True)
    return {
        "CHARGING_REDIS_URL": f"unix://{redis_dir / 'redis.sock'}",
        "CHARGING_REDIS_DIR": str(redis_dir),
        "CHARGING_DATABASE_DIR": str(postgres_dir),
    }


def wait_health(proc: subprocess.Popen[bytes], target: str, log: Path) -> None:
    """Until the gRPC health service says SERVING for the Charging service."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="charging.v1.Charging")
        while True:
            alive(proc, "charging server", log)
            try:
                if stub.Check(request, timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"charging server not SERVING within {STARTUP_TIMEOUT_S}s; see {log}")
            time.sleep(0.1)


def wait_echo(proc: subprocess.Popen[bytes], target: str, log: Path, body: bytes) -> None:
    """Until the echo server answers; it must give the very bytes back."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(METHOD_PATH)  # no serializers: bytes in, bytes out
        while True:
            alive(proc, "echo server", log)
            try:
                answer = call(body, timeout=1)
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise BenchError(f"echo server did not answer within {STARTUP_TIMEOUT_S}s; see {log}") from None
                time.sleep(0.1)
                continue
            if answer != body:
                raise BenchError("echo server answered other bytes than it was sent")
            return


def create_subscribers(target: str, count: int) -> None:
    """``count`` subscribers with a large balance, 64 calls in flight at a time."""
    window = 64
    with grpc.insecure_channel(target) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)
        for start in range(0, count, window):
            futures = [
                stub.CreateSubscriber.future(
                    admin_pb2.CreateSubscriberRequest(msisdn=msisdn(i), initial_balance_micros=BALANCE_MICROS),
                    timeout=10,
                )
                for i in range(start, min(start + window, count))
            ]
            for f in futures:
                try:
                    f.result()
                except grpc.RpcError as exc:
                    raise BenchError(f"CreateSubscriber failed: {exc.code().name}: {exc.details()}") from None


def check_balance_request() -> bytes:
    """The one request h2load repeats: check the balance for one SMS of subscriber 0."""
    req = charging_pb2.EventRequest(
        event_id="bench-check-balance",
        action=charging_pb2.REQUESTED_ACTION_CHECK_BALANCE,
        subscriber=common_pb2.SubscriberId(msisdn=msisdn(0)),
        rating_group=20,
        requested=common_pb2.ServiceUnits(service_specific_units=1),
    )
    return req.SerializeToString()


def verify_charging_answer(target: str, body: bytes) -> None:
    """Send exactly the bytes h2load will send, with a real gRPC client, and insist on 2001."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(METHOD_PATH, response_deserializer=charging_pb2.EventAnswer.FromString)
        try:
            answer = call(body, timeout=5)
        except grpc.RpcError as exc:
            raise BenchError(f"check-balance request failed: {exc.code().name}: {exc.details()}") from None
    if answer.result_code != 2001 or answer.check_balance_result != charging_pb2.CHECK_BALANCE_RESULT_ENOUGH_CREDIT:
        result = charging_pb2.CheckBalanceResult.Name(answer.check_balance_result)
        raise BenchError(f"check-balance request answered {answer.result_code} {result}, not 2001 with enough credit")


def charge_event_results(metrics_port: int) -> dict[str, float]:
    """ChargeEvent counts by result from the server's Prometheus endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    pattern = re.compile(r'^charging_requests_total\{method="ChargeEvent",result="([^"]+)"\} (\S+)$', re.M)
    return {result: float(value) for result, value in pattern.findall(text)}


def verify_results(before: dict[str, float], after: dict[str, float], succeeded: int, in_flight: int) -> None:
    """Every ChargeEvent the server handled during the load must have answered 2001.

    h2load cancels the streams still in flight when its duration ends, so up to
    ``in_flight`` calls counted as CANCELLED are expected.
    """
    delta = {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}
    unexpected = {k: v for k, v in delta.items() if k not in ("2001", "CANCELLED")}
    if unexpected or delta.get("2001", 0.0) < succeeded or delta.get("CANCELLED", 0.0) > in_flight:
        raise BenchError(f"charging server answered ChargeEvent results {delta} during the load")


# --------------------------------------------------------------------------- h2load


# Summary lines of h2load 1.52 (the per-request log is parsed separately).
H2LOAD_RATE = re.compile(r"finished in [\d.]+s, ([\d.]+) req/s")
H2LOAD_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout"
)
H2LOAD_CODES = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


@dataclass(frozen=True)
class H2Load:
    clients: int
    streams: int
    threads: int
    duration_s: int
    warmup_s: int

    def args(self) -> list[str]:
        return [
            f"--clients={self.clients}",
            f"--max-concurrent-streams={self.streams}",
            f"--threads={self.threads}",
            f"--duration={self.duration_s}",
            f"--warm-up-time={self.warmup_s}",
        ]

    def describe(self) -> str:
        return (
            f"h2load -c {self.clients} -m {self.streams} -t {self.threads} -D {self.duration_s} "
            f"--warm-up-time={self.warmup_s} -d <framed EventRequest CHECK_BALANCE> "
            f"-H 'content-type: application/grpc' -H 'te: trailers' http://127.0.0.1:PORT{METHOD_PATH}"
        )


def rating_micros_per_request(rounds: int = 20_000) -> float:
    """Time ``sessions.rating_args`` for a typical UPDATE (voice with a called number, data),
    against the sample catalog, across destinations and times of day."""
    from charging.catalog import Usage
    from charging.catalog_doc import catalog_from_doc
    from charging.catalogs import read_catalog_file
    from charging.rating import Units
    from charging.sessions import RatingGroupRequest, rating_args

    catalog = catalog_from_doc(read_catalog_file(""))
    plan = catalog.plans["mobile-prepaid"]
    groups = (
        RatingGroupRequest(10, requested=Units(), used=Units(time_s=95)),
        RatingGroupRequest(30, requested=Units(), used=Units(total_octets=3_000_000)),
    )
    usages = [Usage(f"4917{n:08d}") for n in range(100)] + [Usage("33123456"), Usage("491711234567", "20801")]
    start_s = 1_795_000_000
    started = time.perf_counter()
    for n in range(rounds):
        rating_args(catalog, plan, groups, usages[n % len(usages)], start_s + 37 * n)
    return (time.perf_counter() - started) / rounds * 1e6


def median_run(runs: Sequence[LoadResult]) -> LoadResult:
    """The run with the median requests/s (the lower middle one for an even count)."""
    return sorted(runs, key=lambda r: r.rps)[(len(runs) - 1) // 2]


def run_h2load(
    name: str, params: H2Load, port: int, body_file: Path, workdir: Path, extra: Sequence[str] = ()
) -> LoadResult:
    """One h2load run; raise unless every request succeeded with HTTP 200 (gRPC statuses,
    RESOURCE_EXHAUSTED included, travel in trailers of HTTP 200 answers)."""
    log_file = workdir / f"h2load-{name}.log"
    argv = [
        "h2load",
        *params.args(),
        *extra,
        f"--data={body_file}",
        "--header=content-type: application/grpc",
        "--header=te: trailers",
        f"--log-file={log_file}",
        f"http://127.0.0.1:{port}{METHOD_PATH}",
    ]
    timeout = params.duration_s + params.warmup_s + 30
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"h2load against {name} did not finish within {timeout}s") from None
    out = done.stdout
    finished, reqs, codes = H2LOAD_RATE.search(out), H2LOAD_REQUESTS.search(out), H2LOAD_CODES.search(out)
    if done.returncode != 0 or not (finished and reqs and codes):
        raise BenchError(f"h2load against {name} failed (exit {done.returncode}):\n{out}\n{done.stderr}")
    _total, _started, _done, succeeded, failed, errored, timed_out = (int(x) for x in reqs.groups())
    _ok, c3, c4, c5 = (int(x) for x in codes.groups())
    if failed or errored or timed_out or c3 or c4 or c5 or succeeded == 0:
        raise BenchError(f"h2load against {name}: unsuccessful requests:\n{out}")

    latencies: list[float] = []
    bad_status = 0
    for line in log_file.read_text().splitlines():
        cols = line.split("\t")  # start (us since epoch), HTTP status (-1: failed stream), latency (us)
        if len(cols) < 3:
            continue
        if cols[1] != "200":
            bad_status += 1
        latencies.append(int(cols[2]) / 1000)
    if bad_status:
        raise BenchError(f"h2load against {name}: {bad_status} responses without HTTP 200 in {log_file}")
    latencies.sort()
    return LoadResult(name, float(finished.group(1)), percentile(latencies, 50), percentile(latencies, 99), succeeded)


# --------------------------------------------------------------------------- session client (own process)


async def _session_worker(
    stub: charging_pb2_grpc.ChargingStub,
    worker: int,
    workers: int,
    subscribers: int,
    deadline: float,
    latencies: list[float],
    counts: dict[str, int],
    errors: list[str],
) -> None:
    """Run whole sessions back to back until the deadline, each for the next subscriber of this worker."""
    kinds = [charging_pb2.REQUEST_TYPE_INITIAL] + [charging_pb2.REQUEST_TYPE_UPDATE] * 3
    kinds.append(charging_pb2.REQUEST_TYPE_TERMINATE)
    n = 0
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        who = common_pb2.SubscriberId(msisdn=msisdn((worker + n * workers) % subscribers))
        session_id = f"bench;{uuid.uuid4().hex}"
        n += 1
        for number, kind in enumerate(kinds):
            req = charging_pb2.SessionRequest(
                session_id=session_id, request_type=kind, request_number=number, subscriber=who
            )
            rg = req.rating_groups.add(rating_group=10)
            if kind != charging_pb2.REQUEST_TYPE_TERMINATE:
                rg.requested.SetInParent()  # the tariff's default quota
            if kind != charging_pb2.REQUEST_TYPE_INITIAL:
                rg.used.time_s = 60 if kind == charging_pb2.REQUEST_TYPE_UPDATE else 30
            started = time.perf_counter()
            try:
                answer = await stub.ChargeSession(req, timeout=10)
            except grpc.aio.AioRpcError as exc:
                errors.append(f"{exc.code().name}: {exc.details()}")
                break
            latencies.append((time.perf_counter() - started) * 1000)
            counts["requests"] += 1
            if answer.result_code != 2001 or any(g.result_code != 2001 for g in answer.rating_groups):
                errors.append(f"request {number} of a session answered {answer.result_code}")
                break
        else:
            counts["sessions"] += 1


async def session_client(target: str, duration_s: float, concurrency: int, subscribers: int) -> SessionResult:
    latencies: list[float] = []
    counts = {"sessions": 0, "requests": 0}
    errors: list[str] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = charging_pb2_grpc.ChargingStub(channel)
        await asyncio.wait_for(channel.channel_ready(), 10)
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + duration_s
        await asyncio.gather(
            *(
                _session_worker(stub, w, concurrency, subscribers, deadline, latencies, counts, errors)
                for w in range(concurrency)
            )
        )
        elapsed = loop.time() - started
    latencies.sort()
    return SessionResult(
        sessions=counts["sessions"],
        requests=counts["requests"],
        errors=len(errors),
        elapsed_s=elapsed,
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        first_error=errors[0] if errors else "",
    )


def run_session_client(
    target: str, duration_s: float, concurrency: int, subscribers: int, workdir: Path
) -> SessionResult:
    """Run the session client in a separate process (this module with --session-client) and read its JSON."""
    argv = [
        sys.executable, "-m", "loadtest.bench",
        "--session-client", target,
        "--session-duration", str(duration_s),
        "--session-concurrency", str(concurrency),
        "--subscribers", str(subscribers),
    ]  # fmt: skip
    timeout = duration_s + 60
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=child_env(), cwd=REPO, check=False
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"session client did not finish within {timeout}s") from None
    if done.returncode != 0:
        raise BenchError(f"session client failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    (workdir / "session-client.json").write_text(done.stdout)
    result = SessionResult(**json.loads(done.stdout.strip().splitlines()[-1]))
    if result.errors or result.sessions == 0:
        raise BenchError(f"session client: {result.errors} failed sessions, first: {result.first_error!r}")
    return result


# --------------------------------------------------------------------------- overload

# Open-loop steps: h2load sends at a fixed rate whatever the answers take (32 connections,
# up to 64 streams each), like many network elements each sending its own traffic.
OPEN_LOOP_CLIENTS = 32
OPEN_LOOP_STREAMS = 64
# Every call carries a deadline, as a network element's does (Diameter Tx timer).
CALL_DEADLINE = "2S"
PROBE_RATE = 100  # probe calls per second: the latency sample of admitted calls


@dataclass(frozen=True)
class ProbeResult:
    sent: int
    admitted: int
    refused: dict[str, int]
    p50_ms: float
    p99_ms: float


@dataclass(frozen=True)
class StepResult:
    label: str
    offered_rps: float
    goodput_rps: float
    rejected_rps: float
    cpu_ms_per_answer: float
    probe: ProbeResult


async def probe_client(target: str, duration_s: float, rate: float) -> ProbeResult:
    """CHECK_BALANCE calls at a fixed rate, each timed on its own: h2load sees only HTTP
    statuses, so the latency of admitted calls (status OK) is sampled here."""
    latencies: list[float] = []
    refused: dict[str, int] = {}
    body = charging_pb2.EventRequest.FromString(check_balance_request())

    async def one(stub: charging_pb2_grpc.ChargingStub) -> None:
        started = time.perf_counter()
        try:
            await stub.ChargeEvent(body, timeout=2.0)
        except grpc.aio.AioRpcError as exc:
            refused[exc.code().name] = refused.get(exc.code().name, 0) + 1
            return
        latencies.append((time.perf_counter() - started) * 1000)

    async with grpc.aio.insecure_channel(target) as channel:
        stub = charging_pb2_grpc.ChargingStub(channel)
        await asyncio.wait_for(channel.channel_ready(), 10)
        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        for n in range(int(duration_s * rate)):
            await asyncio.sleep(max(0.0, start + n / rate - loop.time()))
            tasks.append(asyncio.create_task(one(stub)))
        await asyncio.gather(*tasks)
    latencies.sort()
    return ProbeResult(len(tasks), len(latencies), refused, percentile(latencies, 50), percentile(latencies, 99))


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(root: int) -> list[int]:
    """The live descendants of ``root`` (children, their children, ...)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == pid]
        found += kids
        frontier += kids
    return found


def admission_rejections(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    pattern = re.compile(r'^charging_admission_rejections_total\{method="ChargeEvent",[^}]*\} (\S+)$', re.M)
    return sum(float(v) for v in pattern.findall(text))


def run_step(
    label: str, rate: float, duration_s: int, server: subprocess.Popen[bytes], ports: tuple[int, int], body_file: Path,
    workdir: Path,
) -> StepResult:  # fmt: skip
    """One open-loop step at ``rate`` requests/s with the probe alongside. Answers, refusals
    and the server's CPU are counted over h2load's run only (the probe starts first), so the
    probe's start-up and tail do not dilute the rate."""
    grpc_port, metrics_port = ports
    params = H2Load(OPEN_LOOP_CLIENTS, OPEN_LOOP_STREAMS, 1, duration_s, 0)
    rps = max(1, round(rate / OPEN_LOOP_CLIENTS))
    argv = [
        sys.executable, "-m", "loadtest.bench",
        "--probe", f"127.0.0.1:{grpc_port}", "--session-duration", str(duration_s + 1),
    ]  # fmt: skip
    with (workdir / f"probe-{label}.json").open("w+") as out:
        probe = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=child_env(), cwd=REPO)
        try:
            time.sleep(1.0)  # the probe's interpreter and channel are up before the load starts
            before, rejected_before, cpu_before = (
                charge_event_results(metrics_port),
                admission_rejections(metrics_port),
                process_cpu_s(server.pid),
            )
            started = time.monotonic()
            run_h2load(
                f"step-{label}", params, grpc_port, body_file, workdir,
                [f"--rps={rps}", f"--header=grpc-timeout: {CALL_DEADLINE}"],
            )  # fmt: skip
            elapsed = time.monotonic() - started
            after, rejected_after, cpu_after = (
                charge_event_results(metrics_port),
                admission_rejections(metrics_port),
                process_cpu_s(server.pid),
            )
            probe.wait(duration_s + 60)
        finally:
            if probe.poll() is None:
                probe.kill()
        out.seek(0)
        lines = out.read().strip().splitlines()
    if probe.returncode != 0 or not lines:
        raise BenchError(f"probe client failed (exit {probe.returncode}): {lines[-5:]}")
    answered = after.get("2001", 0.0) - before.get("2001", 0.0)
    return StepResult(
        label,
        offered_rps=rps * OPEN_LOOP_CLIENTS + PROBE_RATE,
        goodput_rps=answered / elapsed,
        rejected_rps=(rejected_after - rejected_before) / elapsed,
        cpu_ms_per_answer=1000 * (cpu_after - cpu_before) / max(answered, 1.0),
        probe=ProbeResult(**json.loads(lines[-1])),
    )


def admission_micros_per_call(rounds: int = 200_000) -> float:
    """What ``Admission.guard`` adds to a call: a guarded no-op handler against a bare one."""
    from charging.admission import Admission

    class Context:
        def time_remaining(self) -> float:
            return 10.0

    async def handler(request: object, context: object) -> object:
        return request

    guarded = Admission(1000).guard("Bench", handler)  # type: ignore[arg-type]
    context = Context()

    async def timed(fn: object) -> float:
        started = time.perf_counter()
        for _ in range(rounds):
            await fn(None, context)  # type: ignore[operator]
        return time.perf_counter() - started

    async def both() -> float:
        differences = []
        for _ in range(3):  # the least of three: the others were disturbed
            differences.append(await timed(guarded) - await timed(handler))
        return min(differences)

    return asyncio.run(both()) / rounds * 1e6


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench", description="charging vs echo gRPC throughput")
    duration = int(env_number("BENCH_DURATION", 5))
    p.add_argument("--duration", type=int, default=duration, help="h2load main duration, s (BENCH_DURATION)")
    p.add_argument(
        "--rounds",
        type=int,
        default=int(env_number("BENCH_ROUNDS", 3)),
        help="alternating charging/echo rounds; medians are reported (BENCH_ROUNDS)",
    )
    p.add_argument("--warmup", type=int, default=int(env_number("BENCH_WARMUP", 2)), help="h2load warm-up, s")
    p.add_argument(
        "--concurrency",
        type=int,
        default=int(env_number("BENCH_CONCURRENCY", 8)),
        help="h2load clients, i.e. HTTP/2 connections (BENCH_CONCURRENCY)",
    )
    p.add_argument(
        "--streams", type=int, default=int(env_number("BENCH_STREAMS", 4)), help="h2load streams per connection"
    )
    p.add_argument("--threads", type=int, default=int(env_number("BENCH_THREADS", 1)), help="h2load threads")
    p.add_argument("--subscribers", type=int, default=int(env_number("BENCH_SUBSCRIBERS", 1000)))
    p.add_argument(
        "--session-duration",
        type=float,
        default=env_number("BENCH_SESSION_DURATION", duration),
        help="seconds of the Python session client (BENCH_SESSION_DURATION)",
    )
    p.add_argument(
        "--session-concurrency",
        type=int,
        default=int(env_number("BENCH_SESSION_CONCURRENCY", 32)),
        help="sessions in flight in the Python client (BENCH_SESSION_CONCURRENCY)",
    )
    p.add_argument("--session-client", metavar="TARGET", help="internal: only run the session client, print JSON")
    p.add_argument("--probe", metavar="TARGET", help="internal: only run the latency probe, print JSON")
    p.add_argument(
        "--overload-duration",
        type=int,
        default=int(env_number("BENCH_OVERLOAD_DURATION", 10)),
        help="seconds of each open-loop step, at 70%% and 200%% of the measured capacity (BENCH_OVERLOAD_DURATION)",
    )
    p.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=env_number("BENCH_PIN", 1) != 0,
        help="run the server side and the clients on separate halves of the CPUs (BENCH_PIN=0: --no-pin)",
    )
    return p.parse_args(argv)


def bench(args: argparse.Namespace) -> int:
    for tool in ("redis-server", "h2load"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is not installed (make redis-server h2load)")
    params = H2Load(args.concurrency, args.streams, args.threads, args.duration, args.warmup)
    body = check_balance_request()

    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="charging-bench-")))
        body_file = workdir / "check-balance.grpc"
        body_file.write_bytes(grpc_frame(body))

        grpc_port, metrics_port, echo_port = free_port(), free_port(), free_port()
        pinning = Pinning.choose(args.pin)
        pinning.apply_to_self()
        env = child_env()
        env.update(server_stores(stack, workdir, "bench", pinning.server_argv))
        env.update(
            CHARGING_GRPC_ADDRESS=f"127.0.0.1:{grpc_port}",
            # Metrics on a free loopback port, only to read the server's own result counts after
            # the load (h2load cannot see gRPC statuses). Counters are updated either way.
            CHARGING_METRICS_ADDRESS=f"127.0.0.1:{metrics_port}",
            CHARGING_NCHF_ADDRESS="",
        )
        server_log = workdir / "charging-server.log"
        server = stack.enter_context(
            child(pinning.server_argv([sys.executable, "-m", "charging.cli", "serve"]), server_log, env)
        )
        echo_log = workdir / "echo-server.log"
        echo = stack.enter_context(
            child(
                pinning.server_argv(
                    [sys.executable, "-m", "loadtest.echo_server", "--address", f"127.0.0.1:{echo_port}"]
                ),
                echo_log,
                child_env(),
            )
        )
        try:
            target = f"127.0.0.1:{grpc_port}"
            wait_health(server, target, server_log)
            wait_echo(echo, f"127.0.0.1:{echo_port}", echo_log, body)
            started = time.monotonic()
            create_subscribers(target, args.subscribers)
            print(f"created {args.subscribers} subscribers in {time.monotonic() - started:.1f}s", file=sys.stderr)
            verify_charging_answer(target, body)

            # Alternate the order each round so drift on a shared machine hits both alike.
            charging_runs: list[LoadResult] = []
            echo_runs: list[LoadResult] = []
            for round_no in range(max(args.rounds, 1)):
                order = ("charging", "echo") if round_no % 2 == 0 else ("echo", "charging")
                for name in order:
                    if name == "charging":
                        before = charge_event_results(metrics_port)
                        run = run_h2load("charging", params, grpc_port, body_file, workdir)
                        alive(server, "charging server", server_log)
                        after = charge_event_results(metrics_port)
                        verify_results(before, after, run.requests, params.clients * params.streams)
                        charging_runs.append(run)
                    else:
                        echo_runs.append(run_h2load("echo", params, echo_port, body_file, workdir))
                        alive(echo, "echo server", echo_log)
            charging = median_run(charging_runs)
            echo_result = median_run(echo_runs)
            sessions = run_session_client(
                target, args.session_duration, args.session_concurrency, args.subscribers, workdir
            )
            alive(server, "charging server", server_log)
            capacity = charging.rps
            steps = [
                run_step(label, factor * capacity, args.overload_duration, server, (grpc_port, metrics_port),
                         body_file, workdir)
                for label, factor in (("70%", 0.7), ("200%", 2.0))
            ]  # fmt: skip
            alive(server, "charging server", server_log)
        except BaseException:
            print(f"--- last lines of the charging server log:\n{tail(server_log)}", file=sys.stderr)
            raise

    print(machine())
    print(f"cpus: {pinning.describe()}")
    print(f"load: {params.describe()}, {max(args.rounds, 1)} alternating rounds, medians shown")
    print(
        "per-round ratios: " + " ".join(f"{c.rps / e.rps:.2f}" for c, e in zip(charging_runs, echo_runs, strict=True))
    )
    for r in (charging, echo_result):
        label = "charging ChargeEvent CHECK_BALANCE" if r.name == "charging" else "echo     ChargeEvent (bytes echoed)"
        print(f"{label}: requests/s={r.rps:.1f} p50_ms={r.p50_ms:.2f} p99_ms={r.p99_ms:.2f} requests={r.requests}")
    print(
        f"sessions (Python-client-bound: one grpc.aio client process, {args.session_concurrency} sessions in "
        f"flight, INITIAL + 3 UPDATE + TERMINATE, {sessions.elapsed_s:.1f}s): "
        f"sessions/s={sessions.sessions / sessions.elapsed_s:.1f} "
        f"requests/s={sessions.requests / sessions.elapsed_s:.1f} "
        f"p50_ms={sessions.p50_ms:.2f} p99_ms={sessions.p99_ms:.2f}"
    )
    rating_us = rating_micros_per_request()
    print(
        f"rating (pure Python, per session request with voice + data rating groups): {rating_us:.1f} us = "
        f"{100 * rating_us / (1e6 / charging.rps):.1f}% of one charging request at the measured rate"
    )
    print(f"admission (Admission.guard, per call): {admission_micros_per_call():.2f} us")
    print(
        f"open loop: h2load -c {OPEN_LOOP_CLIENTS} -m {OPEN_LOOP_STREAMS} --rps=<rate/{OPEN_LOOP_CLIENTS}> "
        f"-D {args.overload_duration} -H 'grpc-timeout: {CALL_DEADLINE}', plus a probe of {PROBE_RATE} calls/s; "
        f"capacity = the closed-loop figure above"
    )
    for step in steps:
        refused = " ".join(f"{k}={v}" for k, v in sorted(step.probe.refused.items())) or "none"
        print(
            f"step {step.label:>4} of capacity: offered={step.offered_rps:.0f}/s goodput={step.goodput_rps:.0f}/s "
            f"({100 * step.goodput_rps / capacity:.0f}% of capacity) rejected={step.rejected_rps:.0f}/s "
            f"cpu_ms_per_answer={step.cpu_ms_per_answer:.3f} admitted p50_ms={step.probe.p50_ms:.2f} "
            f"p99_ms={step.probe.p99_ms:.2f} (probe: {step.probe.admitted}/{step.probe.sent} admitted, "
            f"refused {refused})"
        )
    normal, over = steps
    print(
        f"overload: goodput={100 * over.goodput_rps / capacity:.0f}% of capacity (goal >= 90%) "
        f"p99_admitted={over.probe.p99_ms / normal.probe.p99_ms:.2f}x its value at 70% (goal <= 2)"
    )
    print(f"ratio={charging.rps / echo_result.rps:.2f}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.probe:
        import uvloop

        probe = uvloop.run(probe_client(args.probe, args.session_duration, PROBE_RATE))
        print(json.dumps(asdict(probe)))
        return 0
    if args.session_client:
        import uvloop

        result = uvloop.run(
            session_client(args.session_client, args.session_duration, args.session_concurrency, args.subscribers)
        )
        print(json.dumps(asdict(result)))
        return 0
    try:
        return bench(args)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
