"""Server CPU per session step over ChargeStream against unary ChargeSession and the echo.

Why: a Diameter or Nchf gateway multiplexes many sessions; over unary calls it pays one
HTTP/2 stream (headers, trailers, a call object, a task) per request, over ChargeStream
one message. The figure that says what each costs is the server's CPU time (user +
system of its one process, ``/proc/<pid>/stat``) divided by the session steps answered,
robust on a shared machine where requests/s are not. Each run's CPU is counted from an
idle server until the server is idle again, so it includes the background work the run
caused (the relay of its usage records to PostgreSQL) and none of the run before's.

The load is full sessions (INITIAL, 3 UPDATEs with used units, TERMINATE) on voice,
``--concurrency`` sessions in flight, from a Python grpc.aio client in its own process
with every request serialized before the clock starts. Four kinds, alternating each
round, medians shown:

* ``unary``: ChargeSession, one call per step;
* ``stream``: one ChargeStream, the next step of a session written when its reply arrives;
* ``echo unary`` / ``echo stream``: the same bytes to ``loadtest.echo_server``, which
  echoes them (the grpc.aio/HTTP/2 cost both share, without any charging work).

Every charging answer must be 2001 (the bench fails otherwise). The last line is
``stream_cpu_us_per_step=``.

Closed loop each kind runs at its own maximum, the echo at about twice a charging kind's,
and a server's CPU per request grows as its rate falls (fewer calls share each wake-up
of the event loop and of grpc's poller thread). So ``unary`` and ``event`` also run
paced, each with its echo at the same rate, 70% of the charging kind's closed-loop
maximum (``STREAM_BENCH_PACED=0`` skips it): the ratio at equal rates is what the
charging work adds to the same transport.

Through the compiled gRPC door (``door unary``, ``door event``; README "The compiled gRPC
door"): a third server, ``charging serve`` with ``CHARGING_GRPC_DOOR`` (its supervisor,
one worker and the door), answers the same unary calls; its CPU is that of all three
processes (``make door`` builds the door first). They run paced too, against the echo
at their own rate.

A/B in one run (figures move by tens of percent between runs on a shared machine):
``STREAM_BENCH_VARIANT=NAME=VALUE,...`` and/or ``STREAM_BENCH_VARIANT_REPO=<checkout>``
start a second charging server B (its own Redis and PostgreSQL) with that environment or
that checkout's code; each charging kind also runs on B as ``B <kind>``, alternating.

    python -m loadtest.stream_bench          # what `make bench` runs
    STREAM_BENCH_SESSIONS=1000 STREAM_BENCH_ROUNDS=3 python -m loadtest.stream_bench
    STREAM_BENCH_PROFILE=/tmp/stream.prof python -m loadtest.stream_bench   # server under cProfile
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from charging.v1 import charging_pb2, common_pb2
from loadtest.bench import (
    REPO,
    BenchError,
    batch_of,
    child,
    child_env,
    create_subscribers,
    descendants,
    env_number,
    free_port,
    machine,
    msisdn,
    process_cpu_s,
    server_stores,
    tail,
    wait_health,
)

SESSION_PATH = "/charging.v1.Charging/ChargeSession"
EVENT_PATH = "/charging.v1.Charging/ChargeEvent"
STREAM_PATH = "/charging.v1.Charging/ChargeStream"
BATCHES_PATH = "/charging.v1.Charging/ChargeBatches"
STEPS = 5  # INITIAL, 3 UPDATE, TERMINATE
KINDS = ("unary", "stream", "batch", "door unary", "echo unary", "echo stream", "echo batch")
# Unary ChargeEvent CHECK_BALANCE (an SMS), STEPS per "session" on its subscriber, and
# the same bytes to the echo; not run unless named in STREAM_BENCH_KINDS.
EVENT_KINDS = ("event", "door event", "echo event")
DOOR = REPO / "var" / "build" / "charging-grpc-door"  # `make door`
# The paced comparison's rate, a share of the charging kind's closed-loop maximum.
PACED_SHARE = 0.7


def session_steps(run: str, session: int, subscribers: int) -> list[charging_pb2.SessionRequest]:
    who = common_pb2.SubscriberId(msisdn=msisdn(session % subscribers))
    kinds = [charging_pb2.REQUEST_TYPE_INITIAL] + [charging_pb2.REQUEST_TYPE_UPDATE] * 3
    kinds.append(charging_pb2.REQUEST_TYPE_TERMINATE)
    steps = []
    for number, kind in enumerate(kinds):
        req = charging_pb2.SessionRequest(
            session_id=f"sb;{run};{session}", request_type=kind, request_number=number, subscriber=who
        )
        rg = req.rating_groups.add(rating_group=10)
        if kind != charging_pb2.REQUEST_TYPE_TERMINATE:
            rg.requested.SetInParent()
        if kind != charging_pb2.REQUEST_TYPE_INITIAL:
            rg.used.time_s = 60 if kind == charging_pb2.REQUEST_TYPE_UPDATE else 30
        steps.append(req)
    return steps


def check_balances(run: str, session: int, subscribers: int) -> list[charging_pb2.EventRequest]:
    who = common_pb2.SubscriberId(msisdn=msisdn(session % subscribers))
    return [
        charging_pb2.EventRequest(
            event_id=f"sb;{run};{session};{n}",
            action=charging_pb2.REQUESTED_ACTION_CHECK_BALANCE,
            subscriber=who,
            rating_group=20,
            requested=common_pb2.ServiceUnits(service_specific_units=1),
        )
        for n in range(STEPS)
    ]


def event_ok(answer: charging_pb2.EventAnswer) -> bool:
    return answer.result_code == 2001 and answer.check_balance_result == charging_pb2.CHECK_BALANCE_RESULT_ENOUGH_CREDIT


def ok(answer: charging_pb2.SessionAnswer) -> bool:
    return answer.result_code == 2001 and all(g.result_code == 2001 for g in answer.rating_groups)


async def unary_load(
    target: str, bodies: list[list[bytes]], concurrency: int, echo: bool, event: bool = False, rate: float = 0.0
) -> dict[str, float]:
    """``concurrency`` calls in flight; with ``rate``, request n is sent no earlier than
    n / rate seconds after the start (open loop while the calls in flight suffice)."""
    parse: Callable[[bytes], Any] = (
        charging_pb2.SessionRequest.FromString if echo else charging_pb2.SessionAnswer.FromString
    )
    check: Callable[[Any], bool] = ok
    if event:
        parse = charging_pb2.EventRequest.FromString if echo else charging_pb2.EventAnswer.FromString
        check = event_ok
    errors: list[str] = []
    latencies: list[float] = []
    next_session = iter(range(len(bodies)))
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(EVENT_PATH if event else SESSION_PATH, response_deserializer=parse)
        await asyncio.wait_for(channel.channel_ready(), 10)

        sent = itertools.count()

        async def worker() -> None:
            for s in next_session:
                for body in bodies[s]:
                    if rate and (wait := started + next(sent) / rate - time.perf_counter()) > 0:
                        await asyncio.sleep(wait)
                    sent_at = time.perf_counter()
                    answer = await call(body, timeout=30)
                    latencies.append(time.perf_counter() - sent_at)
                    if not echo and not check(answer):
                        errors.append(f"answered {answer.result_code}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "steps": len(bodies) * STEPS,
        "errors": len(errors),
        "elapsed_s": elapsed,
        "p50_ms": cuts[49] * 1e3,
        "p99_ms": cuts[98] * 1e3,
    }


class Following:
    """What a gateway sends once a step is answered: the session's next step, else the
    first step of the next session not yet started (``concurrency`` sessions at a time)."""

    def __init__(self, bodies: list[list[bytes]], concurrency: int) -> None:
        self.bodies = bodies
        self.opened = min(concurrency, len(bodies))

    def first(self) -> list[bytes]:
        return [self.bodies[s][0] for s in range(self.opened)]

    def after(self, correlation_id: int) -> bytes | None:
        session, step = divmod(correlation_id, STEPS)
        if step + 1 < STEPS:
            return self.bodies[session][step + 1]
        if self.opened < len(self.bodies):
            self.opened += 1
            return self.bodies[self.opened - 1][0]
        return None


def answered_ok(reply: charging_pb2.ChargeReply) -> bool:
    return reply.WhichOneof("answer") == "session" and ok(reply.session)


async def stream_load(target: str, bodies: list[list[bytes]], concurrency: int, echo: bool) -> dict[str, float]:
    """One stream; a session's next step is written once the reply to its last arrived
    (a gateway sends the CCR-U after the CCA-I)."""
    parse = charging_pb2.ChargeMessage.FromString if echo else charging_pb2.ChargeReply.FromString
    errors = answered = 0
    following = Following(bodies, concurrency)
    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        call = channel.stream_stream(STREAM_PATH, response_deserializer=parse)(timeout=600)
        started = time.perf_counter()
        for first in following.first():
            await call.write(first)
        while answered < len(bodies) * STEPS:
            reply = await call.read()
            if reply is grpc.aio.EOF:
                raise BenchError("the stream ended early")
            answered += 1
            errors += not echo and not answered_ok(reply)
            if (body := following.after(reply.correlation_id)) is not None:
                await call.write(body)
        elapsed = await finish(call, started)
    return {"steps": answered, "errors": errors, "elapsed_s": elapsed}


async def batch_load(target: str, bodies: list[list[bytes]], concurrency: int, echo: bool) -> dict[str, float]:
    """One ChargeBatches stream, as a gateway under load uses it: the first steps of
    ``concurrency`` sessions in one batch, then, for each reply message, the next steps of
    the sessions it answered, in one batch. The echo sends each batch back as it came."""
    parse: Callable[[bytes], Any] = (
        charging_pb2.ChargeBatch.FromString if echo else charging_pb2.ChargeReplies.FromString
    )
    errors = answered = messages = 0
    following = Following(bodies, concurrency)
    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        call = channel.stream_stream(BATCHES_PATH, response_deserializer=parse)(timeout=600)
        started = time.perf_counter()
        await call.write(batch_of(following.first()))
        while answered < len(bodies) * STEPS:
            message = await call.read()
            if message is grpc.aio.EOF:
                raise BenchError("the stream ended early")
            messages += 1
            nexts = []
            for reply in message.messages if echo else message.replies:
                answered += 1
                errors += not echo and not answered_ok(reply)
                if (body := following.after(reply.correlation_id)) is not None:
                    nexts.append(body)
            if nexts:
                await call.write(batch_of(nexts))
        elapsed = await finish(call, started)
    return {"steps": answered, "errors": errors, "elapsed_s": elapsed, "per_message": answered / max(messages, 1)}


async def finish(call: Any, started: float) -> float:
    """Half-close; the time since ``started``, once the server has ended the call cleanly."""
    await call.done_writing()
    elapsed = time.perf_counter() - started
    if await call.read() is not grpc.aio.EOF or await call.code() != grpc.StatusCode.OK:
        raise BenchError("the stream did not end cleanly")
    return elapsed


def settle(pid: int, limit_s: float = 20.0) -> None:
    """Wait (at most ``limit_s``) until the process is idle: under 5% of a core for 0.25 s."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = process_cpu_s(pid)
        time.sleep(0.25)
        if process_cpu_s(pid) - before < 0.0125:
            return


def prepared(kind: str, run: str, sessions: int, subscribers: int) -> list[list[bytes]]:
    """Every request of the run, serialized (a ChargeMessage for streams, its correlation
    id = session * STEPS + step)."""
    out = []
    for s in range(sessions):
        if "event" in kind:
            out.append([req.SerializeToString() for req in check_balances(run, s, subscribers)])
            continue
        steps = session_steps(run, s, subscribers)
        if "stream" in kind or "batch" in kind:
            out.append(
                [
                    charging_pb2.ChargeMessage(correlation_id=s * STEPS + n, session=req).SerializeToString()
                    for n, req in enumerate(steps)
                ]
            )
        else:
            out.append([req.SerializeToString() for req in steps])
    return out


def client(args: argparse.Namespace) -> dict[str, float]:
    import uvloop

    bodies = prepared(args.kind, args.run, args.sessions, args.subscribers)
    echo = args.kind.startswith("echo")
    cpu = time.process_time()
    if "batch" in args.kind:
        result = uvloop.run(batch_load(args.client, bodies, args.concurrency, echo))
    elif "stream" in args.kind:
        result = uvloop.run(stream_load(args.client, bodies, args.concurrency, echo))
    else:
        result = uvloop.run(unary_load(args.client, bodies, args.concurrency, echo, "event" in args.kind, args.rate))
    result["client_cpu_s"] = time.process_time() - cpu
    return result


def run_client(
    kind: str, target: str, run: str, args: argparse.Namespace, sessions: int = 0, rate: float = 0.0
) -> dict[str, float]:
    argv = [
        sys.executable, "-m", "loadtest.stream_bench", "--client", target, "--kind", kind, "--run", run,
        "--sessions", str(sessions or args.sessions), "--subscribers", str(args.subscribers),
        "--concurrency", str(args.concurrency), "--rate", str(rate),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=child_env(), check=False)
    if done.returncode != 0:
        raise BenchError(f"{kind} client failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    if result["errors"]:
        raise BenchError(f"{kind}: {result['errors']} answers were not 2001")
    return result


def start_charging(
    stack: contextlib.ExitStack, workdir: Path, args: argparse.Namespace, extra_env: dict[str, str], repo: str = ""
) -> tuple[subprocess.Popen[bytes], str, Path]:
    """A charging server with its own redis-server and PostgreSQL, its subscribers created
    and warm: (process, address, log). ``repo``: run the server of that checkout (with its
    own .venv) instead of this one's."""
    grpc_port = free_port()
    env = child_env()
    env.update(server_stores(stack, workdir, "stream-bench"))
    env.update(
        CHARGING_GRPC_ADDRESS=f"127.0.0.1:{grpc_port}",
        CHARGING_METRICS_ADDRESS="",
        CHARGING_NCHF_ADDRESS="",
        # One process: its CPU time is the server's.
        CHARGING_WORKERS="1",
    )
    env.update(extra_env)
    serve = [sys.executable, "-m", "charging.cli", "serve"]
    if repo:  # -P: not this checkout's directory (the children's cwd) first on the path
        env["PYTHONPATH"] = repo
        serve = [str(Path(repo) / ".venv" / "bin" / "python"), "-P", "-m", "charging.cli", "serve"]
    if args.profile and not extra_env:
        serve = [sys.executable, "-m", "cProfile", "-o", args.profile, "-m", "charging.cli", "serve"]
    server_log = workdir / "server.log"
    server = stack.enter_context(child(serve, server_log, env))
    target = f"127.0.0.1:{grpc_port}"
    try:
        wait_health(server, target, server_log)
        create_subscribers(target, args.subscribers)
        # Untimed: one session per subscriber, so that no measured run pays for the
        # server's first lookup of a subscriber (its cache is warm in steady state).
        run_client("unary", target, "warm", args, sessions=args.subscribers)
    except BaseException:
        print(f"--- last lines of the charging server log:\n{tail(server_log)}", file=sys.stderr)
        raise
    return server, target, server_log


def variant_env(text: str) -> dict[str, str]:
    """``NAME=VALUE,NAME=VALUE`` (STREAM_BENCH_VARIANT): the environment of server B."""
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if any(len(pair) != 2 for pair in pairs):
        raise BenchError(f"STREAM_BENCH_VARIANT is NAME=VALUE[,NAME=VALUE...], not {text!r}")
    return {name.strip(): value for name, value in pairs}


def served_cpu_s(root: int) -> float:
    """CPU seconds of a door server: its supervisor and, among its descendants, the worker
    and the door (not the embedded PostgreSQL the supervisor also runs)."""
    total = 0.0
    for pid in (root, *descendants(root)):
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if pid == root or b"charging.cli" in cmdline or b"charging-grpc-door" in cmdline:
                total += process_cpu_s(pid)
    return total


def echo_of(kind: str) -> str:
    return "echo " + kind.removeprefix("door ")


def bench(args: argparse.Namespace) -> int:
    kinds = tuple(args.kinds)
    if args.variant or args.variant_repo:
        kinds += tuple(f"B {k}" for k in args.kinds if not k.startswith(("echo", "door")))
    results: dict[str, list[tuple[float, float, float]]] = {k: [] for k in kinds}
    per_message: dict[str, list[float]] = {k: [] for k in kinds}  # requests per stream message (batch)
    # (base kind, kind) -> runs at PACED_SHARE of the base kind's maximum
    paced: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    paced_latency: dict[tuple[str, str], list[tuple[float, float]]] = {}  # (p50, p99) ms as the client saw them
    paced_rate: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="charging-stream-bench-")))
        echo_port = free_port()
        echo_log = workdir / "echo.log"
        echo_argv = [sys.executable, "-m", "loadtest.echo_server", "--address", f"127.0.0.1:{echo_port}"]
        echo = stack.enter_context(child(echo_argv, echo_log, child_env()))
        server, charging_target, server_log = start_charging(stack, workdir / "a", args, {})
        # side -> (pids to settle, CPU seconds so far, target)
        targets: dict[str, tuple[list[int], Callable[[], float], str]] = {
            "charging": ([server.pid], lambda: process_cpu_s(server.pid), charging_target),
            "echo": ([echo.pid], lambda: process_cpu_s(echo.pid), f"127.0.0.1:{echo_port}"),
        }
        if args.variant or args.variant_repo:
            b_env = variant_env(args.variant)
            b_server, b_target, _ = start_charging(stack, workdir / "b", args, b_env, args.variant_repo)
            targets["B"] = ([b_server.pid], lambda: process_cpu_s(b_server.pid), b_target)
        if any(k.startswith("door") for k in kinds):
            if not DOOR.exists():
                raise BenchError(f"{DOOR} is missing: `make door` builds it")
            d_server, d_target, _ = start_charging(stack, workdir / "d", args, {"CHARGING_GRPC_DOOR": str(DOOR)})
            d_pids = [d_server.pid, *descendants(d_server.pid)]
            targets["door"] = (d_pids, lambda: served_cpu_s(d_server.pid), d_target)

        def one(kind: str, run: str, rate: float = 0.0) -> tuple[tuple[float, float, float], dict[str, float]]:
            """(server CPU us per step, steps/s, client CPU s) of one run, and the client's result."""
            side = kind.split(" ")[0] if kind.startswith(("echo", "door", "B ")) else "charging"
            pids, cpu_s, target = targets[side]
            # Each run pays for its own background work (the usage-record relay emptying
            # the outboxes it filled), not for the run before it.
            for pid in pids:
                settle(pid)
            before = cpu_s()
            r = run_client(kind.removeprefix("B ").removeprefix("door "), target, run, args, rate=rate)
            for pid in pids:
                settle(pid)
            cpu = cpu_s() - before
            return (cpu / r["steps"] * 1e6, r["steps"] / r["elapsed_s"], r["client_cpu_s"]), r

        try:
            for round_no in range(max(args.rounds, 1)):
                order = kinds if round_no % 2 == 0 else tuple(reversed(kinds))
                for kind in order:
                    # The kind's place in the list: a run id per kind (session ids are made
                    # of it), where "B unary" and "B batch" once shared one.
                    figures, r = one(kind, f"{round_no}k{kinds.index(kind)}")
                    results[kind].append(figures)
                    if "per_message" in r:
                        per_message[kind].append(r["per_message"])
            # Paced: each unary kind and its echo at one rate (why: the module docstring).
            bases = ("unary", "event", "door unary", "door event")
            for base in (k for k in bases if args.paced and {k, echo_of(k)} <= set(kinds)):
                rate = PACED_SHARE * statistics.median(v[1] for v in results[base])
                paced_rate[base] = rate
                for round_no in range(max(args.rounds, 1)):
                    pair = (base, echo_of(base)) if round_no % 2 == 0 else (echo_of(base), base)
                    for kind in pair:
                        run = f"p{bases.index(base)}r{round_no}k{kinds.index(kind)}"
                        figures, r = one(kind, run, rate)
                        paced.setdefault((base, kind), []).append(figures)
                        paced_latency.setdefault((base, kind), []).append((r["p50_ms"], r["p99_ms"]))
        except BaseException:
            print(f"--- last lines of the charging server log:\n{tail(server_log)}", file=sys.stderr)
            raise
        if args.profile:
            server.send_signal(15)
            server.wait(60)

    print(machine())
    print(
        f"load: full sessions (INITIAL + 3 UPDATE + TERMINATE, voice) over {args.subscribers} subscribers, "
        f"{args.sessions} sessions per run, {args.concurrency} in flight, one Python grpc.aio client process "
        f"(requests serialized before the clock), {max(args.rounds, 1)} alternating rounds, medians"
    )
    if args.variant or args.variant_repo:
        what = " and ".join(x for x in (args.variant, args.variant_repo and f"the code of {args.variant_repo}") if x)
        print(f"B: a second charging server (its own Redis and PostgreSQL) with {what}")
    medians = {}
    for kind in kinds:
        cpu_us = statistics.median(v[0] for v in results[kind])
        medians[kind] = cpu_us
        rps = statistics.median(v[1] for v in results[kind])
        rounds = " ".join(f"{v[0]:.0f}" for v in results[kind])
        batched = f", {statistics.median(per_message[kind]):.1f} replies per message" if per_message[kind] else ""
        print(
            f"{kind:13}: server CPU per request {cpu_us:.0f} us (rounds: {rounds}), client-bound steps/s {rps:.0f}"
            + batched
        )
    if {"stream", "unary", "echo unary"} <= medians.keys():
        print(
            f"stream vs unary: {medians['stream'] / medians['unary']:.2f}x; "
            f"stream vs echo unary: {medians['stream'] / medians['echo unary']:.2f}x (goal: stream <= 100 us)"
        )
    if {"unary", "echo unary"} <= medians.keys():
        print(f"unary session step vs echo: {medians['unary'] / medians['echo unary']:.2f}x (goal: <= 2x)")
    if {"batch", "stream"} <= medians.keys():
        print(f"batch vs stream: {medians['batch'] / medians['stream']:.2f}x (goal: a streamed step <= 100 us)")
    if {"event", "echo event"} <= medians.keys():
        print(f"CHECK_BALANCE vs echo: {medians['event'] / medians['echo event']:.2f}x (goal: <= 1.5x)")
    for base, rate in paced_rate.items():
        echo_kind = echo_of(base)
        cpu = {k: statistics.median(v[0] for v in paced[(base, k)]) for k in (base, echo_kind)}
        for k in (base, echo_kind):
            rounds = " ".join(f"{v[0]:.0f}" for v in paced[(base, k)])
            rps = statistics.median(v[1] for v in paced[(base, k)])
            p50 = statistics.median(v[0] for v in paced_latency[(base, k)])
            p99 = statistics.median(v[1] for v in paced_latency[(base, k)])
            print(
                f"{k:13}: server CPU per request {cpu[k]:.0f} us (rounds: {rounds}) paced at {rate:.0f}/s "
                f"({PACED_SHARE:.0%} of the {base} maximum), {rps:.0f}/s reached, p50 {p50:.2f} ms p99 {p99:.2f} ms"
            )
        what = ("CHECK_BALANCE" if base.endswith("event") else "unary session step") + (
            " through the door" if base.startswith("door") else ""
        )
        goal = "1.5x" if base.endswith("event") else "2x"
        print(f"{what} vs echo at the same rate: {cpu[base] / cpu[echo_kind]:.2f}x (goal: <= {goal})")
    for kind in (k for k in kinds if k.startswith("door") and echo_of(k) in medians):
        goal = "1.5x" if kind.endswith("event") else "2x"
        print(f"{kind} vs {echo_of(kind)}: {medians[kind] / medians[echo_of(kind)]:.2f}x (goal: <= {goal})")
    for kind in (k for k in kinds if k.startswith("B ")):
        base, echo_kind = kind.removeprefix("B "), "echo " + kind.removeprefix("B ")
        vs_echo = f", {medians[kind] / medians[echo_kind]:.2f}x the {echo_kind}" if echo_kind in medians else ""
        print(f"{kind}: {medians[kind] / medians[base]:.2f}x {base}{vs_echo}")
    if "batch" in medians:
        print(f"batch_cpu_us_per_step={medians['batch']:.0f}")
    if "stream" in medians:
        print(f"stream_cpu_us_per_step={medians['stream']:.0f}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.stream_bench", description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=int(env_number("STREAM_BENCH_SESSIONS", 2000)))
    p.add_argument("--subscribers", type=int, default=int(env_number("STREAM_BENCH_SUBSCRIBERS", 2000)))
    p.add_argument("--concurrency", type=int, default=int(env_number("STREAM_BENCH_CONCURRENCY", 64)))
    p.add_argument("--rounds", type=int, default=int(env_number("STREAM_BENCH_ROUNDS", 2)))
    p.add_argument("--profile", default=os.environ.get("STREAM_BENCH_PROFILE", ""), help="cProfile output file")
    p.add_argument(
        "--variant",
        default=os.environ.get("STREAM_BENCH_VARIANT", ""),
        help="NAME=VALUE[,...]: also run each charging kind on a second server B with this environment (A/B)",
    )
    p.add_argument(
        "--variant-repo",
        default=os.environ.get("STREAM_BENCH_VARIANT_REPO", ""),
        help="server B runs the code of this checkout (its .venv set up), e.g. main against a branch",
    )
    p.add_argument(
        "--paced",
        type=int,
        default=int(env_number("STREAM_BENCH_PACED", 1)),
        help=f"1: also run unary and event with their echo at {PACED_SHARE:.0%} of the kind's maximum, "
        "the same rate for both (STREAM_BENCH_PACED)",
    )
    p.add_argument("--client", metavar="TARGET", help="internal: only run one load client, print JSON")
    p.add_argument("--rate", type=float, default=0.0, help="internal: requests/s of a unary client (0: closed loop)")
    p.add_argument("--kind", choices=KINDS + EVENT_KINDS, default="unary", help="internal: the client's kind")
    p.add_argument("--run", default="0", help="internal: makes the run's session ids unique")
    p.add_argument(
        "--kinds",
        type=lambda text: tuple(k.strip() for k in text.split(",")),
        default=tuple(k.strip() for k in os.environ.get("STREAM_BENCH_KINDS", ",".join(KINDS)).split(",")),
        help="comma-separated subset of: " + ", ".join(KINDS + EVENT_KINDS) + " (STREAM_BENCH_KINDS)",
    )
    args = p.parse_args(argv)
    if unknown := set(args.kinds) - set(KINDS + EVENT_KINDS):
        p.error(f"unknown kinds: {', '.join(sorted(unknown))}")
    if args.client:
        print(json.dumps(client(args)))
        return 0
    try:
        return bench(args)
    except BenchError as exc:
        print(f"stream bench failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
