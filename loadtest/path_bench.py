"""The charging path's own CPU per request, without the gRPC transport.

Why: the server's CPU per request (``loadtest.stream_bench``) is the gRPC/HTTP/2 stack
(what the echo costs), the charging path, and whatever else the process does; on a shared
machine its figures move by tens of percent between runs. This bench runs the charging
path alone, in this process, against a real redis-server: the ``ChargingServicer``
methods behind ``Admission.guard`` and the ``rpc`` wrapper (protobuf to domain, routing,
rating, script arguments, the pipelined ``RedisLink`` and its reply parsing, the answer
back to protobuf, metrics), with 64 callers in flight. Requests are parsed from bytes
serialized before the clock; this process's CPU time (``time.process_time``, so not
redis-server's) divided by the requests is the figure. Every answer must be 2001.

Kinds, alternating each round, medians shown: ``event`` (ChargeEvent CHECK_BALANCE of an
SMS) and ``session`` (full voice sessions: INITIAL, 3 UPDATEs, TERMINATE).

    python -m loadtest.path_bench                      # 3 rounds of 3,000 sessions/events x 5
    PATH_BENCH_PROFILE=/tmp/path.prof python -m loadtest.path_bench   # under cProfile
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import uvloop

from charging.admission import Admission
from charging.api import ChargingServicer
from charging.catalogs import CatalogBook
from charging.clock import SystemClock
from charging.context import Context
from charging.embedded_redis import redis_command
from charging.events import EventCharging
from charging.ledger import Ledger
from charging.redis_link import RedisLink
from charging.sessions import SessionCharging
from charging.subscribers import Directory, Identity
from charging.v1 import charging_pb2, common_pb2
from loadtest.bench import child, env_number, free_port, machine, wait_redis

CALLERS = 64
SUBSCRIBERS = 64
STEPS = 5
KINDS = ("event", "session")


class _Call:
    """What the servicer asks of a gRPC call: a deadline far away, no metadata."""

    def time_remaining(self) -> float:
        return 60.0

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()


def msisdn(i: int) -> str:
    return f"49151{i % SUBSCRIBERS:07d}"


def event_bodies(run: str, count: int) -> list[list[bytes]]:
    return [
        [
            charging_pb2.EventRequest(
                event_id=f"pb;{run};{i};{n}",
                action=charging_pb2.REQUESTED_ACTION_CHECK_BALANCE,
                subscriber=common_pb2.SubscriberId(msisdn=msisdn(i)),
                rating_group=20,
                requested=common_pb2.ServiceUnits(service_specific_units=1),
            ).SerializeToString()
            for n in range(STEPS)
        ]
        for i in range(count)
    ]


def session_bodies(run: str, count: int) -> list[list[bytes]]:
    kinds = [charging_pb2.REQUEST_TYPE_INITIAL, *[charging_pb2.REQUEST_TYPE_UPDATE] * 3]
    kinds.append(charging_pb2.REQUEST_TYPE_TERMINATE)
    out = []
    for i in range(count):
        steps = []
        for number, kind in enumerate(kinds):
            req = charging_pb2.SessionRequest(
                session_id=f"pb;{run};{i}",
                request_type=kind,
                request_number=number,
                subscriber=common_pb2.SubscriberId(msisdn=msisdn(i)),
            )
            rg = req.rating_groups.add(rating_group=10)
            if kind != charging_pb2.REQUEST_TYPE_TERMINATE:
                rg.requested.SetInParent()
            if kind != charging_pb2.REQUEST_TYPE_INITIAL:
                rg.used.time_s = 60 if kind == charging_pb2.REQUEST_TYPE_UPDATE else 30
            steps.append(req.SerializeToString())
        out.append(steps)
    return out


async def drive(
    call: Callable[[Any, Any], Awaitable[Any]],
    parse: Callable[[bytes], Any],
    bodies: list[list[bytes]],
    callers: int = CALLERS,
) -> int:
    """Every request of ``bodies`` (a caller sends a session's or subscriber's requests in
    order), ``callers`` at a time; the number of answers that were not 2001."""
    context = _Call()
    failed = 0

    async def caller(first: int) -> None:
        nonlocal failed
        for i in range(first, len(bodies), callers):
            for body in bodies[i]:
                answer = await call(parse(body), context)
                failed += answer.result_code != 2001

    await asyncio.gather(*(caller(n) for n in range(callers)))
    return failed


async def measure(socket: Path, args: argparse.Namespace) -> dict[str, list[float]]:
    client = aioredis.Redis(unix_socket_path=str(socket), decode_responses=True)
    link = RedisLink(f"unix://{socket}")
    catalogs = CatalogBook(client)
    await catalogs.start("", prefer_file=False)
    directory = Directory(client, 10_000)
    ctx = Context(Ledger(link), directory, catalogs, SystemClock())
    plan = catalogs.current.plan_of("default")
    assert plan is not None
    for i in range(SUBSCRIBERS):
        await directory.create(Identity("msisdn", msisdn(i)), None, plan, 10**12)
    admission = Admission(512)
    servicer = ChargingServicer(
        SessionCharging(ctx, supervision_factor=3, answer_ttl_s=3600, refund_ttl_s=3600),
        EventCharging(ctx, idempotency_ttl_s=3600),
        admission,
    )
    calls = {
        "event": (admission.guard("ChargeEvent", servicer.ChargeEvent), charging_pb2.EventRequest.FromString),
        "session": (admission.guard("ChargeSession", servicer.ChargeSession), charging_pb2.SessionRequest.FromString),
    }
    builders = {"event": event_bodies, "session": session_bodies}
    for kind in KINDS:  # untimed: every subscriber cached, every script loaded
        await drive(*calls[kind], builders[kind]("warm", CALLERS * 2))
    profile = cProfile.Profile() if args.profile else None
    results: dict[str, list[float]] = {k: [] for k in KINDS}
    try:
        for round_no in range(args.rounds):
            for kind in KINDS if round_no % 2 == 0 else tuple(reversed(KINDS)):
                bodies = builders[kind](f"{round_no}", args.count)
                started = time.process_time()
                if profile is not None:
                    profile.enable()
                failed = await drive(*calls[kind], bodies, args.callers)
                if profile is not None:
                    profile.disable()
                cpu = time.process_time() - started
                if failed:
                    raise SystemExit(f"path bench: {failed} {kind} answers were not 2001")
                results[kind].append(cpu / (args.count * STEPS) * 1e6)
    finally:
        await link.aclose()
        await client.aclose()
    if profile is not None:
        profile.dump_stats(args.profile)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.path_bench", description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=int(env_number("PATH_BENCH_COUNT", 3000)), help="sessions per run")
    p.add_argument("--rounds", type=int, default=int(env_number("PATH_BENCH_ROUNDS", 3)))
    p.add_argument(
        "--callers",
        type=int,
        default=int(env_number("PATH_BENCH_CALLERS", CALLERS)),
        help="requests in flight (1: every request its own Redis write and loop turns, as at the server)",
    )
    p.add_argument("--profile", default=os.environ.get("PATH_BENCH_PROFILE", ""), help="cProfile output file")
    args = p.parse_args(argv)
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="charging-path-bench-")))
        port = free_port()
        log = workdir / "redis.out"
        proc = stack.enter_context(
            child(redis_command(shutil.which("redis-server") or "redis-server", workdir, "no", port=port), log)
        )
        wait_redis(proc, port, log)
        results = uvloop.run(measure(workdir / "redis.sock", args))
    print(machine())
    print(
        f"load: the charging path in-process (no gRPC transport), {args.callers} callers, {args.count} x {STEPS} "
        f"requests per run, {args.rounds} alternating rounds, medians; CPU of this process only"
    )
    for kind in KINDS:
        rounds = " ".join(f"{v:.1f}" for v in results[kind])
        print(f"{kind:8}: {statistics.median(results[kind]):.1f} us CPU per request (rounds: {rounds})")
    print(f"path_cpu_us_per_session_step={statistics.median(results['session']):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
