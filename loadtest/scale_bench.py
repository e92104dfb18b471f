"""Cost per request of the load that matters, and how it scales with workers and primaries.

Why: on a 2-core machine a throughput figure with 2 workers or 3 Redis primaries shows
the cores, not the design. What shows the design is the cost of a request in CPU time,
summed over every process that served it, and whether that cost stays flat when the
work is spread over more processes and more primaries. From those costs the cores and
primaries for a busy hour follow (README, "Sizing").

The base: ``--subscribers`` (100,000) written in pipelines (``loadtest.scale_load``):
prepaid voice lines, one in ten postpaid, one in ten with a data bundle. One embedded
PostgreSQL (durable) for the whole run. For each setting, a single redis-server or a
local 3-primary, 3-replica Redis Cluster (``tests/redis_cluster.py``) with ``charging
serve --workers 1`` and ``--workers 2``, and for each kind of request:

* ``echo``: the session steps' bytes to ``loadtest.echo_server`` (the gRPC cost alone);
* ``session``: full sessions (INITIAL, 3 UPDATEs, TERMINATE), one ChargeSession per step;
* ``event``: an SMS, ChargeEvent DIRECT_DEBITING; ``topup``: TopUp.Recharge;
* ``stream``: the same sessions over ChargeStream (one stream per connection);
* ``batch``: the same sessions over ChargeBatches (one stream per connection, the steps
  waiting while the previous write was under way sent as one batch).

``--processes`` client processes (requests serialized before the clock) run closed loop
for ``--duration`` s: requests/s is that maximum; in the first setting also open loop at
70% of it, whose p50/p99 are printed. Per request: the server's CPU (user + system from ``/proc`` of the
supervisor and every worker), every redis-server's CPU (``INFO cpu``; primaries and
replicas apart) and Redis commands (``INFO commandstats``, the commands scripts call
included; ``EVALSHA`` apart). The generator prints its own CPU share of the machine.
Then the flat comparison (``flat_rounds``): 1 primary (the single redis-server with a
replica), 3 primaries and 2 workers, alternating short open-loop phases at the same rate
per primary and per worker, marginal costs, medians; it prints ``flat_primary=`` (Redis
CPU per request over the primaries, 3 / 1) and ``flat_workers=`` (server CPU per
request, 2 workers / 1). The last line is ``ratio=<echo server CPU per request / charging
server CPU per session step>`` (single redis-server, one worker).

    python -m loadtest.scale_bench                 # part of `make bench` (~7 min)
    python -m loadtest.scale_bench --quick --subscribers 2000 --settings single-1 --flat-rounds 0
    python -m loadtest.scale_bench --settings "" --kinds session   # the flat comparison alone
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

from charging import migrations
from charging.embedded_postgres import EmbeddedPostgres, private_dir
from charging.embedded_redis import redis_command
from loadtest.bench import (
    REPO,
    BenchError,
    child,
    child_env,
    descendants,
    free_port,
    machine,
    percentile,
    process_cpu_s,
    tail,
    wait_health,
    wait_redis,
)
from loadtest.scale_load import KINDS, SESSION_KINDS, STEPS, Router, client_main, populate
from postpaid import config as billing_config

SETTINGS = ("single-1", "single-2", "cluster-1", "cluster-2")


@dataclass(frozen=True)
class Cost:
    """One phase of one kind in one setting."""

    setting: str
    kind: str
    requests: int
    rps: float
    server_processes: int
    server_us: float
    redis_us: float  # primaries (or the single redis-server)
    replica_us: float
    commands: float
    evalsha: float
    client_share: float  # the generator's CPU, share of the machine's cores
    primary_shares: tuple[float, ...] = ()  # each primary's part of the primaries' CPU
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    refused: int = 0  # calls the server's bounds refused (CANCELLED, RESOURCE_EXHAUSTED)


# --------------------------------------------------------------------------- measuring


def tree_cpu_s(root: int) -> tuple[float, int]:
    """CPU seconds (user + system) of ``root`` and its live descendants, and their count."""
    members = [root, *descendants(root)]
    total = 0.0
    for pid in members:
        with contextlib.suppress(OSError):
            total += process_cpu_s(pid)
    return total, len(members)


@dataclass(frozen=True)
class RedisSample:
    cpu_s: float
    replica_cpu_s: float
    commands: float
    evalsha: float
    per_primary: tuple[float, ...]

    def back(self, earlier: RedisSample, times: float) -> RedisSample:
        """This sample less ``times`` what was used from ``earlier`` to it (an idle rate
        carried over a busy window: the baseline a marginal cost starts from)."""
        return RedisSample(
            self.cpu_s - (self.cpu_s - earlier.cpu_s) * times,
            self.replica_cpu_s - (self.replica_cpu_s - earlier.replica_cpu_s) * times,
            self.commands - (self.commands - earlier.commands) * times,
            self.evalsha - (self.evalsha - earlier.evalsha) * times,
            tuple(a - (a - b) * times for a, b in zip(self.per_primary, earlier.per_primary, strict=True)),
        )


def redis_sample(primaries: Sequence[int], replicas: Sequence[int]) -> RedisSample:
    """CPU of every node (``INFO cpu``) and the primaries' command counts; the INFO, PING
    and CLUSTER commands of the bench and of clients' housekeeping are left out."""
    cpu, replica_cpu, commands, evalsha = 0.0, 0.0, 0.0, 0.0
    per_primary = []
    for port in (*primaries, *replicas):
        r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
        try:
            info = r.info("cpu")
            used = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
            if port in replicas:
                replica_cpu += used
                continue
            cpu += used
            per_primary.append(used)
            for name, stats in r.info("commandstats").items():
                command = name.removeprefix("cmdstat_")
                if command.split("|")[0] in ("info", "ping", "cluster", "command", "client", "hello", "select"):
                    continue
                commands += int(stats["calls"])
                if command == "evalsha":
                    evalsha += int(stats["calls"])
        finally:
            r.close()
    return RedisSample(cpu, replica_cpu, commands, evalsha, tuple(per_primary))


def shares(before: Sequence[float], after: Sequence[float]) -> tuple[float, ...]:
    used = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(used)
    return tuple(u / total for u in used) if total > 0 else ()


# --------------------------------------------------------------------------- processes


@contextlib.contextmanager
def embedded_postgres() -> Iterator[tuple[str, int]]:
    """One durable embedded PostgreSQL for the run, migrated; the server's URL and the
    postmaster's pid."""
    directory = private_dir("charging-scale-bench-pg-")
    postgres = EmbeddedPostgres(directory)
    loop = asyncio.new_event_loop()
    try:
        url = loop.run_until_complete(postgres.start())
        migrations.upgrade(url)
        yield postgres.layout.ensure_server_login(), postgres.pid or 0
    finally:
        loop.run_until_complete(postgres.stop())
        loop.close()
        shutil.rmtree(directory, ignore_errors=True)


@dataclass(frozen=True)
class RedisSetup:
    url: str
    primaries: tuple[int, ...]
    replicas: tuple[int, ...]
    cluster: bool


@contextlib.contextmanager
def redis_setup(kind: str, workdir: Path) -> Iterator[RedisSetup]:
    if kind == "single":
        port = free_port()
        directory = workdir / "redis"
        directory.mkdir()
        log = workdir / "redis.out"
        with child(redis_command(shutil.which("redis-server") or "redis-server", directory, "everysec", port=port),
                   log) as proc:  # fmt: skip
            wait_redis(proc, port, log)
            yield RedisSetup(f"redis://127.0.0.1:{port}", (port,), (), False)
        return
    from tests.redis_cluster import local_cluster

    with local_cluster(workdir / "cluster") as cluster:
        primaries = tuple(n.port for n in cluster.primaries())
        replicas = tuple(n.port for n in cluster.nodes if n.port not in primaries)
        yield RedisSetup(cluster.url, primaries, replicas, True)


@contextlib.contextmanager
def charging_server(setup: RedisSetup, database_url: str, workers: int, workdir: Path) -> Iterator[tuple[int, str]]:
    """``charging serve --workers N`` on the setup; its pid and gRPC target."""
    port = free_port()
    env = child_env()
    env.update(
        CHARGING_REDIS_URL=setup.url,
        CHARGING_DATABASE_URL=database_url,
        CHARGING_GRPC_ADDRESS=f"127.0.0.1:{port}",
        CHARGING_METRICS_ADDRESS="",
        CHARGING_NCHF_ADDRESS="",
        CHARGING_WORKERS=str(workers),
        CHARGING_REDIS_DIR=str(workdir / f"server-{workers}"),
    )
    # Usage records relayed as they come, not held ~2.5 s: a closed-loop phase of a few
    # seconds would otherwise leave most of its relay work to after its clock, overstate
    # the maximum, and put the 70% phase above what the server sustains (grpc's queue
    # bound then resets calls: CANCELLED). The work is the same; only when it runs moves.
    env.setdefault("CHARGING_CDR_HOLD_MS", "0")
    log = workdir / f"server-{workers}-{setup.cluster}.log"
    argv = [sys.executable, "-m", "charging.cli", "serve", "--workers", str(workers)]
    with child(argv, log, env) as proc:
        target = f"127.0.0.1:{port}"
        try:
            wait_health(proc, target, log)
            yield proc.pid, target
        except BaseException:
            print(f"--- last lines of {log.name}:\n{tail(log)}", file=sys.stderr)
            raise


def run_clients(
    spec: dict[str, object], processes: int, on_go: Callable[[], None] | None = None
) -> list[dict[str, object]]:
    """Start the client processes, wait until each has built its requests, start them at
    once (``on_go`` is called just before); their results."""
    procs = []
    for n in range(processes):
        argv = [sys.executable, "-m", "loadtest.scale_bench", "--client", json.dumps({**spec, "seed": n,
                "run": f"{spec['run']}p{n}"})]  # fmt: skip
        procs.append(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                      env=child_env(), cwd=REPO))  # fmt: skip
    try:
        for p in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise BenchError(f"a {spec['kind']} client did not start (exit {p.wait(30)})")
        if on_go is not None:
            on_go()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for p in procs:
            out, _ = p.communicate(timeout=float(str(spec["duration"])) + 120)
            if p.returncode != 0:
                raise BenchError(f"a {spec['kind']} client failed (exit {p.returncode})")
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


def phase(
    args: argparse.Namespace,
    setting: str,
    kind: str,
    target: str,
    server_pid: int,
    setup: RedisSetup,
    rate: float,
    *,
    marginal: bool = False,
) -> Cost:
    """One closed-loop (rate 0) or open-loop phase; its cost per request. ``marginal``:
    less what the server and Redis use idle (their background jobs, crons), at the rate
    they used it while the clients built their requests, over the busy window."""
    duration = args.duration
    per_process_rate = rate / args.processes / (STEPS if kind in SESSION_KINDS else 1)
    # Units built before the clock: enough for the duration at a generous rate.
    units = int(per_process_rate * duration) + 1 if rate else int(args.max_units * duration / args.processes)
    spec = {
        "kind": kind, "target": target, "subscribers": args.subscribers, "duration": duration,
        "rate": per_process_rate, "units": max(units, 1), "concurrency": args.concurrency,
        "connections": args.connections, "run": f"{setting}-{kind}-{int(rate)}-{time.time_ns()}",
    }  # fmt: skip
    primaries = () if kind == "echo" else setup.primaries
    replicas = () if kind == "echo" else setup.replicas
    cpu0, _ = tree_cpu_s(server_pid)
    redis0 = redis_sample(primaries, replicas)
    started = time.monotonic()
    at_go: list[tuple[float, float, RedisSample]] = []

    def go() -> None:
        at_go.append((time.monotonic(), tree_cpu_s(server_pid)[0], redis_sample(primaries, replicas)))

    results = run_clients(spec, args.processes, go if marginal else None)
    cpu1, processes = tree_cpu_s(server_pid)
    redis1 = redis_sample(primaries, replicas)
    if at_go:
        went, cpu_go, redis_go = at_go[0]
        times = (time.monotonic() - went) / max(went - started, 1e-3)
        cpu0, redis0 = cpu_go - (cpu_go - cpu0) * times, redis_go.back(redis0, times)
    errors = sum(int(str(r["errors"])) for r in results)
    if errors:
        first = next(str(r["first_error"]) for r in results if r["errors"])
        raise BenchError(f"{setting} {kind}: {errors} failed requests, first: {first}")
    requests = sum(int(str(r["requests"])) for r in results)
    if requests == 0:
        raise BenchError(f"{setting} {kind}: no request answered")
    elapsed = max(float(str(r["elapsed_s"])) for r in results)
    client_cpu = sum(float(str(r["client_cpu_s"])) for r in results)
    latencies = sorted(x for r in results for x in r["latencies_ms"])  # type: ignore[attr-defined]
    per = 1e6 / requests
    return Cost(
        setting, kind, requests, requests / elapsed, processes,
        server_us=(cpu1 - cpu0) * per,
        redis_us=(redis1.cpu_s - redis0.cpu_s) * per,
        replica_us=(redis1.replica_cpu_s - redis0.replica_cpu_s) * per,
        commands=(redis1.commands - redis0.commands) / requests,
        evalsha=(redis1.evalsha - redis0.evalsha) / requests,
        client_share=client_cpu / (elapsed * (os.cpu_count() or 1)),
        primary_shares=shares(redis0.per_primary, redis1.per_primary),
        p50_ms=percentile(latencies, 50) if latencies else math.nan,
        p99_ms=percentile(latencies, 99) if latencies else math.nan,
        refused=sum(int(str(r.get("refused", 0))) for r in results),
    )  # fmt: skip


# --------------------------------------------------------------------------- the run


def measure(args: argparse.Namespace, setting: str, kind: str, target: str, pid: int, setup: RedisSetup) -> list[Cost]:
    """The closed-loop maximum, then open loop at 70% of it (in the first setting only,
    and not with --no-latency)."""
    top = phase(args, setting, kind, target, pid, setup, 0.0)
    print(f"  {setting} {kind}: {top.rps:,.0f} requests/s, server {top.server_us:.0f} us/request", file=sys.stderr)
    if args.no_latency or setting not in ("echo", args.settings[0]):
        return [top]
    return [top, phase(args, setting, kind, target, pid, setup, 0.7 * top.rps)]


def bench(args: argparse.Namespace) -> int:
    costs: list[Cost] = []
    base: dict[str, tuple[dict[str, int], float, int]] = {}
    postgres_us: dict[str, float] = {}
    tz = billing_config.default().time_zone
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="charging-scale-bench-")))
        database_url, postgres_pid = stack.enter_context(embedded_postgres())
        if "echo" in args.kinds:
            echo_port = free_port()
            argv = [sys.executable, "-m", "loadtest.echo_server", "--address", f"127.0.0.1:{echo_port}"]
            echo_log = workdir / "echo.log"
            echo = stack.enter_context(child(argv, echo_log, child_env()))
            wait_health_echo(echo.pid, f"127.0.0.1:{echo_port}")
            no_redis = RedisSetup("", (), (), False)
            costs += measure(args, "echo", "echo", f"127.0.0.1:{echo_port}", echo.pid, no_redis)
        setups: dict[str, RedisSetup] = {}
        for topology in ("single", "cluster"):
            wanted = [s for s in args.settings if s.startswith(topology)]
            if not wanted and not args.flat_rounds:
                continue
            setups[topology] = setup = stack.enter_context(redis_setup(topology, workdir))
            for setting in wanted:
                workers = int(setting.rsplit("-", 1)[1])
                with charging_server(setup, database_url, workers, workdir) as (pid, target):
                    if topology not in base:
                        base[topology] = write_base(args, setup, tz)
                    before, _ = tree_cpu_s(postgres_pid)
                    measured = [c for k in args.kinds if k != "echo" for c in measure(args, setting, k, target,
                                                                                       pid, setup)]  # fmt: skip
                    requests = sum(c.requests for c in measured)
                    postgres_us[setting] = (tree_cpu_s(postgres_pid)[0] - before) * 1e6 / requests
                    costs += measured
        flat = flat_rounds(args, setups, database_url, workdir, base, tz) if args.flat_rounds else []
    report(args, costs, base, postgres_us, flat)
    return 0


def write_base(args: argparse.Namespace, setup: RedisSetup, tz: str) -> tuple[dict[str, int], float, int]:
    """The subscriber base on a setup (a server has started on it): counts, seconds, primaries."""
    router = Router(setup.primaries, setup.cluster)
    started = time.monotonic()
    counts = populate(router, args.subscribers, int(time.time()), tz)
    router.close()
    return counts, time.monotonic() - started, len(setup.primaries)


# --------------------------------------------------------------------------- flat cost


@dataclass(frozen=True)
class FlatCase:
    """One of the settings the flat comparison alternates, offered ``scale`` times the
    base's rate, so that each primary (or each worker) has the base's load."""

    name: str
    label: str  # in the phases' names (request ids: no spaces)
    topology: str
    workers: int
    scale: int


FLAT_CASES = (
    FlatCase("1 primary, 1 worker", "p1-w1", "single", 1, 1),
    FlatCase("3 primaries, 1 worker", "p3-w1", "cluster", 1, 3),
    FlatCase("1 primary, 2 workers", "p1-w2", "single", 2, 2),
)


@contextlib.contextmanager
def with_replica(setup: RedisSetup, workdir: Path) -> Iterator[RedisSetup]:
    """The single redis-server with a replica of its own, in sync, like each primary of
    the cluster has (a primary's CPU includes feeding its replica)."""
    port = free_port()
    directory = workdir / "replica"
    directory.mkdir(exist_ok=True)
    argv = [*redis_command(shutil.which("redis-server") or "redis-server", directory, "everysec", port=port),
            "--replicaof", "127.0.0.1", str(setup.primaries[0])]  # fmt: skip
    log = workdir / "replica.out"
    with child(argv, log) as proc:
        wait_redis(proc, port, log)
        replica = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
        deadline = time.monotonic() + 120
        while replica.info("replication").get("master_sync_in_progress", 1) or (
            replica.info("replication").get("master_link_status") != "up"
        ):
            if time.monotonic() > deadline:
                raise BenchError("the single redis-server's replica did not sync within 120 s")
            time.sleep(0.2)
        replica.close()
        yield RedisSetup(setup.url, setup.primaries, (port,), False)


def flat_rounds(
    args: argparse.Namespace,
    setups: dict[str, RedisSetup],
    database_url: str,
    workdir: Path,
    base: dict[str, tuple[dict[str, int], float, int]],
    tz: str,
) -> list[Cost]:
    """The cases of ``FLAT_CASES``, each with its server running, measured in alternating
    rounds (the order rotates each round) of short closed-loop phases of ``--flat-kind``:
    the machine's load drifts over a run, and alternating spreads the drift over the cases.
    Open loop: the base case is offered ``--flat-load`` of its closed-loop maximum (measured
    first), the others that times their ``scale``, so each primary and each worker gets the
    same rate in every case (a closed loop would give each of 3 primaries a third of one
    primary's rate, and Redis's cost per loop turn would be shared by fewer commands).
    Phases are named ``<case label>#<round>``."""
    out: list[Cost] = []
    with contextlib.ExitStack() as stack:
        single = stack.enter_context(with_replica(setups["single"], workdir))
        running = {}
        for case in FLAT_CASES:
            setup = single if case.topology == "single" else setups["cluster"]
            (workdir / case.label).mkdir(exist_ok=True)
            pid, target = stack.enter_context(charging_server(setup, database_url, case.workers, workdir / case.label))
            if case.topology not in base:
                base[case.topology] = write_base(args, setup, tz)
            running[case.name] = (case, setup, pid, target)
        short = argparse.Namespace(**{**vars(args), "duration": args.flat_duration})
        case, setup, pid, target = running[FLAT_CASES[0].name]
        top = phase(short, f"{case.label}#max", args.flat_kind, target, pid, setup, 0.0)
        out.append(top)
        rate = args.flat_load * top.rps
        print(f"  flat: {args.flat_rounds} rounds of {len(FLAT_CASES)} cases, {rate:,.0f}/s per unit", file=sys.stderr)
        for n in range(args.flat_rounds):
            for i in range(len(FLAT_CASES)):
                case, setup, pid, target = running[FLAT_CASES[(i + n) % len(FLAT_CASES)].name]
                name = f"{case.label}#{n}"
                out.append(phase(short, name, args.flat_kind, target, pid, setup, rate * case.scale, marginal=True))
    return out


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def flat_report(args: argparse.Namespace, flat: Sequence[Cost]) -> None:
    """Per case the medians over the rounds (marginal costs: less the idle use), then
    ``flat_primary=`` and ``flat_workers=``."""
    print(
        f"flat cost ({args.flat_kind}, {args.flat_rounds} alternating rounds of {args.flat_duration:g}s open loop, "
        "medians of the marginal cost (less the idle setup's use); each primary and each worker offered "
        f"{args.flat_load:.0%} of the closed-loop maximum of one "
        f"({flat[0].rps:,.0f}/s); the single redis-server with a replica like each primary of the cluster):"
    )
    medians: dict[str, dict[str, float]] = {}
    for case in FLAT_CASES:
        rows = [c for c in flat if c.setting.split("#")[0] == case.label and not c.setting.endswith("#max")]
        fields = ("rps", "server_us", "redis_us", "replica_us", "commands")
        m = {f: median([getattr(c, f) for c in rows]) for f in fields}
        medians[case.name] = m
        rounds = " ".join(f"{c.server_us:.0f}/{c.redis_us:.0f}" for c in rows)
        print(
            f"  {case.name:22} {m['rps']:6,.0f} requests/s  server {m['server_us']:4.0f} us  "
            f"redis {m['redis_us']:4.0f} us (+ replicas {m['replica_us']:.0f})  cmds/req {m['commands']:5.1f}  "
            f"rounds server/redis: {rounds}"
        )
    one, three, two = (medians[c.name] for c in FLAT_CASES)
    print(
        f"flat_primary={three['redis_us'] / one['redis_us']:.2f} (Redis CPU per request summed over the primaries, "
        f"3 primaries / 1; commands per request {three['commands']:.1f} / {one['commands']:.1f})"
    )
    print(
        f"flat_workers={two['server_us'] / one['server_us']:.2f} (server CPU per request, all processes, 2 workers / 1)"
    )


def wait_health_echo(pid: int, target: str) -> None:
    """Until the echo server answers (it has no health service: an empty echo)."""
    import grpc

    deadline = time.monotonic() + 30
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary("/charging.v1.Charging/ChargeSession")
        while True:
            try:
                call(b"", timeout=1)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline or not Path(f"/proc/{pid}").exists():
                    raise BenchError("the echo server did not answer") from None
                time.sleep(0.1)


def report(
    args: argparse.Namespace,
    costs: Sequence[Cost],
    base: dict[str, tuple[dict[str, int], float, int]],
    postgres_us: dict[str, float],
    flat: Sequence[Cost] = (),
) -> None:
    print(machine())
    for topology, (counts, took, primaries) in base.items():
        kinds = ", ".join(f"{v:,} {k}" for k, v in sorted(counts.items()))
        print(f"base ({topology}): {args.subscribers:,} subscribers ({kinds}) written in {took:.1f}s, "
              f"pipelined over {primaries} primar{'y' if primaries == 1 else 'ies'}")  # fmt: skip
    print(
        f"load: {args.processes} client processes x {args.connections} connections, {args.concurrency} units in "
        f"flight each (closed loop, {args.duration:g}s: the maximum), then, in the first setting, open loop at "
        "70% of it (p50/p99); "
        "session/stream/batch/echo units are whole sessions (5 steps), figures are per request (step)"
    )
    print(
        "setting    kind     load  procs requests/s  p50_ms  p99_ms  server_us  redis_us  replica_us  "
        "cmds/req  evalsha/req  generator_cpu  primaries' shares  refused"
    )
    for c in costs:
        load = "max" if math.isnan(c.p50_ms) else "70%"
        spread = "/".join(f"{100 * s:.0f}" for s in c.primary_shares) if len(c.primary_shares) > 1 else "-"
        print(
            f"{c.setting:10} {c.kind:8} {load:5} {c.server_processes:5} {c.rps:10,.0f} {c.p50_ms:7.2f} "
            f"{c.p99_ms:7.2f} {c.server_us:10.0f} {c.redis_us:9.0f} {c.replica_us:11.0f} {c.commands:9.1f} "
            f"{c.evalsha:12.2f} {100 * c.client_share:13.0f}% {spread:>18} {c.refused:8}"
        )
    top = {(c.setting, c.kind): c for c in costs if math.isnan(c.p50_ms)}
    for kind in args.kinds:
        if kind == "echo":
            continue
        row = [f"{s} {top[(s, kind)].server_us:.0f}/{top[(s, kind)].redis_us:.0f}" for s in args.settings
               if (s, kind) in top]  # fmt: skip
        print(f"scaling {kind:8} server/redis us per request: " + ", ".join(row))
    if postgres_us:
        print(
            "postgres (the usage records the relay moves, per setting, not per kind): "
            + ", ".join(f"{s} {us:.0f} us" for s, us in postgres_us.items())
            + " per request"
        )
    sizing(top)
    if flat:
        flat_report(args, flat)
    step, echo = top.get(("single-1", "session")), top.get(("echo", "echo"))
    if step and echo:
        print(f"ratio={echo.server_us / step.server_us:.2f}")


def sizing(top: dict[tuple[str, str], Cost]) -> None:
    """Cores and primaries for 50,000 session steps/s at 70% utilisation, from the
    costs of the largest setting measured (the most processes and primaries)."""
    for kind in ("session", "stream", "batch"):
        measured = [c for (s, k), c in top.items() if k == kind]
        if not measured:
            continue
        c = max(measured, key=lambda c: SETTINGS.index(c.setting))
        rate, use = 50_000, 0.7
        cores = rate * c.server_us / 1e6 / use
        primaries = math.ceil(rate * c.redis_us / 1e6 / use)
        replicas = rate * c.replica_us / 1e6 / use
        print(
            f"sizing ({kind}, from {c.setting}): {rate:,} steps/s at {use:.0%} busy needs "
            f"{rate:,} x {c.server_us:.0f} us / {use} = {cores:.1f} server cores and "
            f"ceil({rate:,} x {c.redis_us:.0f} us / {use}) = {primaries} Redis primaries"
            + (f" (+ {replicas:.1f} cores of replicas)" if c.replica_us else "")
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest.scale_bench", description=__doc__.splitlines()[0])
    p.add_argument("--subscribers", type=int, default=100_000)
    p.add_argument("--quick", action="store_true", help="1 s phases, no open-loop phase: a smoke run")
    p.add_argument("--duration", type=float, default=3.0, help="seconds of each phase")
    p.add_argument("--processes", type=int, default=2, help="client processes")
    p.add_argument("--connections", type=int, default=2, help="HTTP/2 connections per client process")
    p.add_argument("--concurrency", type=int, default=32, help="units in flight per client process")
    p.add_argument("--max-units", type=int, default=6000, help="units/s the closed loop is built for")
    p.add_argument("--no-latency", action="store_true", help="skip the open-loop phases at 70%%")
    p.add_argument("--settings", type=lambda t: tuple(t.split(",")), default=SETTINGS,
                   help="comma-separated: " + ",".join(SETTINGS))  # fmt: skip
    p.add_argument("--kinds", type=lambda t: tuple(t.split(",")), default=KINDS, help=",".join(KINDS))
    p.add_argument("--flat-rounds", type=int, default=5, help="alternating rounds of the flat comparison (0: none)")
    p.add_argument("--flat-duration", type=float, default=1.5, help="seconds of each phase of the flat comparison")
    p.add_argument("--flat-kind", default="session", choices=[k for k in KINDS if k != "echo"])
    p.add_argument("--flat-load", type=float, default=0.2, help="the flat comparison's rate per primary and per "
                   "worker, a share of one worker's closed-loop maximum")  # fmt: skip
    p.add_argument("--client", metavar="SPEC", help="internal: one load client process (JSON spec)")
    args = p.parse_args(argv)
    args.settings = tuple(s for s in args.settings if s)  # --settings "": the flat comparison only
    if set(args.settings) - set(SETTINGS) or set(args.kinds) - set(KINDS):
        p.error(f"settings are {', '.join(SETTINGS)}; kinds are {', '.join(KINDS)}")
    if args.quick:
        args.duration, args.no_latency = 1.0, True
        args.flat_rounds, args.flat_duration = min(args.flat_rounds, 3), 1.0
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.client:
        return client_main(args.client)
    try:
        return bench(args)
    except BenchError as exc:
        print(f"scale bench failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
