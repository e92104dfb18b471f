"""What an Nchf_ConvergedCharging update costs: server CPU per request and throughput of
the 5G CHF door (charging/nchf/) of a real ``charging serve``.

h2load sends one prepared body again and again, and the same invocationSequenceNumber
twice is a retransmission (answered from the stored answer), so it would measure replays.
The load therefore comes from a Python client in its own process (httpx, HTTP/2 with
prior knowledge on one connection): ``--concurrency`` charging sessions of different
subscribers, each created once, then updated in a loop with increasing sequence numbers
(100,000 octets used, 1 MB requested on rating group 30: rated, debited, re-reserved),
then released. The server's CPU time (user + system, ``/proc/<pid>/stat``) is read before
and after; CPU per request is what the server spent, whatever the client's own speed
(on a shared 2-core machine the client is the bottleneck, so requests/s is client-bound).

    python -m loadtest.nchf_bench                 # what `make bench` runs
    NCHF_BENCH_DURATION=5 NCHF_BENCH_ROUNDS=3 python -m loadtest.nchf_bench
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from loadtest.bench import (
    BenchError,
    child,
    child_env,
    create_subscribers,
    env_number,
    free_port,
    machine,
    msisdn,
    process_cpu_s,
    server_stores,
    tail,
    wait_health,
)

ROOT = "/nchf-convergedcharging/v3/chargingdata"


def body(subscriber: str, seq: int, used: int) -> dict[str, Any]:
    unit: dict[str, Any] = {"ratingGroup": 30, "requestedUnit": {"totalVolume": 1_048_576}, "uPFID": "upf-1"}
    if used:
        unit["usedUnitContainer"] = [{"localSequenceNumber": seq, "totalVolume": used}]
    return {
        "subscriberIdentifier": f"msisdn-{subscriber}",
        "nfConsumerIdentification": {"nodeFunctionality": "SMF", "nFName": "bench-smf"},
        "invocationTimeStamp": "2026-11-30T12:00:00Z",
        "invocationSequenceNumber": seq,
        "multipleUnitUsage": [unit],
    }


async def load(base: str, duration_s: float, concurrency: int, run: int) -> dict[str, int]:
    counts = {"requests": 0, "updates": 0, "errors": 0}
    deadline = time.monotonic() + duration_s

    async def session(client: httpx.AsyncClient, index: int) -> None:
        subscriber = msisdn(index)
        created = await client.post(
            ROOT, json={**body(subscriber, 0, 0), "notifyUri": f"http://127.0.0.1:9/bench-{run}-{index}"}
        )
        counts["requests"] += 1
        if created.status_code != 201:
            counts["errors"] += 1
            if counts["errors"] == 1:
                print(f"create answered {created.status_code}: {created.text[:300]}", file=sys.stderr)
            return
        ref = created.headers["location"].rsplit("/", 1)[1]
        seq = 1
        while time.monotonic() < deadline:
            answer = await client.post(f"{ROOT}/{ref}/update", json=body(subscriber, seq, 100_000))
            counts["requests"] += 1
            counts["updates"] += 1
            if answer.status_code != 200:
                counts["errors"] += 1
            seq += 1
        await client.post(f"{ROOT}/{ref}/release", json=body(subscriber, seq, 100_000))
        counts["requests"] += 1

    async with httpx.AsyncClient(base_url=base, http1=False, http2=True, timeout=30) as client:
        await asyncio.gather(*(session(client, i) for i in range(concurrency)))
    return counts


def run_load(base: str, duration_s: float, concurrency: int, run: int) -> dict[str, int]:
    argv = [sys.executable, "-m", "loadtest.nchf_bench", "--client", base, "--duration", str(duration_s)]
    argv += ["--concurrency", str(concurrency), "--run", str(run)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60, env=child_env(), check=False)
    if done.returncode != 0:
        raise BenchError(f"load client failed: {done.stderr}")
    counts: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    if counts["errors"] or not counts["updates"]:
        raise BenchError(f"load client: {counts}; {done.stderr.strip()[-600:]}")
    return counts


def bench(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="charging-nchf-bench-")))
        grpc_port, nchf_port = free_port(), free_port()
        env = child_env()
        env.update(server_stores(stack, workdir, "nchf-bench"))
        env.update(
            CHARGING_GRPC_ADDRESS=f"127.0.0.1:{grpc_port}",
            CHARGING_NCHF_ADDRESS=f"127.0.0.1:{nchf_port}",
            CHARGING_METRICS_ADDRESS="",
            CHARGING_BILLING_INTERVAL_S="0",
        )
        log = workdir / "server.log"
        server = stack.enter_context(child([sys.executable, "-m", "charging.cli", "serve"], log, env))
        wait_health(server, f"127.0.0.1:{grpc_port}", log)
        create_subscribers(f"127.0.0.1:{grpc_port}", args.concurrency)
        results: list[tuple[float, float]] = []
        for run in range(max(args.rounds, 1)):
            before = process_cpu_s(server.pid)
            counts = run_load(f"http://127.0.0.1:{nchf_port}", args.duration, args.concurrency, run)
            cpu = process_cpu_s(server.pid) - before
            if server.poll() is not None:
                raise BenchError(f"server exited:\n{tail(log)}")
            results.append((cpu / counts["requests"] * 1e6, counts["updates"] / args.duration))

    print(machine())
    print(
        f"load: one httpx HTTP/2 (h2c) client process, {args.concurrency} sessions in flight on one connection, "
        f"{args.duration}s x {max(args.rounds, 1)} rounds, Nchf update (RG 30, 100 kB used, 1 MB asked); medians"
    )
    cpu_us = statistics.median(v[0] for v in results)
    rps = statistics.median(v[1] for v in results)
    rounds = " ".join(f"{v[0]:.0f}" for v in results)
    print(f"nchf update: server CPU per request {cpu_us:.0f} us (rounds: {rounds}), client-bound updates/s {rps:.0f}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.nchf_bench", description="Nchf update server CPU")
    p.add_argument("--duration", type=float, default=env_number("NCHF_BENCH_DURATION", 5))
    p.add_argument("--rounds", type=int, default=int(env_number("NCHF_BENCH_ROUNDS", 3)))
    p.add_argument("--concurrency", type=int, default=int(env_number("NCHF_BENCH_CONCURRENCY", 32)))
    p.add_argument("--client", metavar="BASE_URL", help="internal: only run the load client, print JSON")
    p.add_argument("--run", type=int, default=0, help="internal: the round number (new sessions each round)")
    args = p.parse_args(argv)
    if args.client:
        import uvloop

        print(json.dumps(uvloop.run(load(args.client, args.duration, args.concurrency, args.run))))
        return 0
    try:
        return bench(args)
    except BenchError as exc:
        print(f"nchf bench failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
