"""What authentication costs on the charging path: server CPU per request over mutual TLS
(with the guard identifying the caller's certificate and checking its role) against
plaintext on loopback (the development policy).

h2load cannot present a client certificate, so the load comes from a Python grpc.aio
client in its own process: ``--concurrency`` calls in flight on one connection, each an
``EventRequest`` CHECK_BALANCE (the full path, changing nothing). Two charging servers
share one redis-server: one plaintext, one with ``charging certs`` certificates, mTLS
and the policy. Each round loads one then the other (alternating order), and reads the
server's CPU time (user + system, ``/proc/<pid>/stat``) before and after: CPU per request
is what the server spent, whatever the client's own speed. One connection carries the
whole round, so the figure is the per-request cost (encryption, the auth context, the
role check), not the handshake's.

    python -m loadtest.tls_bench                 # what `make bench` runs after loadtest.bench
    TLS_BENCH_DURATION=5 TLS_BENCH_ROUNDS=3 python -m loadtest.tls_bench
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import grpc

from charging.embedded_postgres import private_dir
from charging.embedded_redis import redis_command
from charging.security.certs import write_dev_set
from charging.v1 import charging_pb2, charging_pb2_grpc
from loadtest.bench import (
    BenchError,
    check_balance_request,
    child,
    child_env,
    create_subscribers,
    env_number,
    free_port,
    machine,
    tail,
    verify_charging_answer,
    wait_health,
    wait_redis,
)

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def credentials(pki: Path) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        (pki / "ca.pem").read_bytes(), (pki / "network.key").read_bytes(), (pki / "network.pem").read_bytes()
    )


async def load(target: str, pki: str, duration_s: float, concurrency: int) -> dict[str, int]:
    """Calls back to back from ``concurrency`` workers for ``duration_s``."""
    body = charging_pb2.EventRequest.FromString(check_balance_request())
    channel = grpc.aio.secure_channel(target, credentials(Path(pki))) if pki else grpc.aio.insecure_channel(target)
    counts = {"requests": 0, "errors": 0}
    async with channel:
        stub = charging_pb2_grpc.ChargingStub(channel)
        await stub.ChargeEvent(body, timeout=10)  # connected (and handshaken) before the clock starts
        deadline = asyncio.get_running_loop().time() + duration_s

        async def worker() -> None:
            while asyncio.get_running_loop().time() < deadline:
                try:
                    answer = await stub.ChargeEvent(body, timeout=10)
                except grpc.aio.AioRpcError:
                    counts["errors"] += 1
                    continue
                counts["requests" if answer.result_code == 2001 else "errors"] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts


def run_load(target: str, pki: Path | None, duration_s: float, concurrency: int) -> int:
    argv = [sys.executable, "-m", "loadtest.tls_bench", "--client", target, "--duration", str(duration_s)]
    argv += ["--concurrency", str(concurrency), "--pki", str(pki or "")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60, env=child_env(), check=False)
    if done.returncode != 0:
        raise BenchError(f"load client failed: {done.stderr}")
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    if counts["errors"] or not counts["requests"]:
        raise BenchError(f"load client: {counts}")
    return int(counts["requests"])


def bench(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="charging-tls-bench-")))
        pki = workdir / "certs"
        write_dev_set(pki)
        redis_port, plain_port, tls_port = free_port(), free_port(), free_port()
        redis_dir = workdir / "redis"
        redis_dir.mkdir()
        redis_log = workdir / "redis.out"
        command = redis_command("redis-server", redis_dir, "everysec", port=redis_port)
        redis_proc = stack.enter_context(child(command, redis_log))
        wait_redis(redis_proc, redis_port, redis_log)
        common = child_env()
        common.update(CHARGING_REDIS_URL=f"unix://{redis_dir / 'redis.sock'}", CHARGING_METRICS_ADDRESS="")
        common.update(CHARGING_NCHF_ADDRESS="")
        common.update(CHARGING_BILLING_INTERVAL_S="0", CHARGING_REDIS_DIR=str(redis_dir))
        # Each server its own embedded PostgreSQL (one per data directory), where the
        # postgres user can reach it.
        plain_pg, tls_pg = private_dir("charging-tls-bench-pg-"), private_dir("charging-tls-bench-pg-")
        for directory in (plain_pg, tls_pg):
            stack.callback(shutil.rmtree, directory, True)
        plain_env = {
            **common,
            "CHARGING_GRPC_ADDRESS": f"127.0.0.1:{plain_port}",
            "CHARGING_DATABASE_DIR": str(plain_pg),
        }
        tls_env = {
            **common,
            "CHARGING_GRPC_ADDRESS": f"127.0.0.1:{tls_port}",
            "CHARGING_DATABASE_DIR": str(tls_pg),
            "CHARGING_TLS_CERT": str(pki / "server.pem"),
            "CHARGING_TLS_KEY": str(pki / "server.key"),
            "CHARGING_TLS_CLIENT_CA": str(pki / "ca.pem"),
            "CHARGING_POLICY_FILE": str(pki / "policy.json"),
        }
        serve = [sys.executable, "-m", "charging.cli", "serve"]
        plain_log, tls_log = workdir / "plain.log", workdir / "tls.log"
        plain = stack.enter_context(child(serve, plain_log, plain_env))
        wait_health(plain, f"127.0.0.1:{plain_port}", plain_log)
        secured = stack.enter_context(child(serve, tls_log, tls_env))
        deadline = time.monotonic() + 30
        while b'"serving"' not in tls_log.read_bytes():
            if secured.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"secured server did not start:\n{tail(tls_log)}")
            time.sleep(0.1)
        create_subscribers(f"127.0.0.1:{plain_port}", 1)
        verify_charging_answer(f"127.0.0.1:{plain_port}", check_balance_request())

        results: dict[str, list[tuple[float, float]]] = {"plaintext": [], "mTLS": []}
        runs = {
            "plaintext": (plain.pid, f"127.0.0.1:{plain_port}", None),
            "mTLS": (secured.pid, f"localhost:{tls_port}", pki),
        }
        for round_no in range(max(args.rounds, 1)):
            order = ("plaintext", "mTLS") if round_no % 2 == 0 else ("mTLS", "plaintext")
            for name in order:
                pid, target, certs = runs[name]
                before = cpu_seconds(pid)
                requests = run_load(target, certs, args.duration, args.concurrency)
                cpu = cpu_seconds(pid) - before
                results[name].append((cpu / requests * 1e6, requests / args.duration))

    print(machine())
    print(
        f"load: one grpc.aio client process, {args.concurrency} calls in flight on one connection, "
        f"{args.duration}s x {max(args.rounds, 1)} alternating rounds, ChargeEvent CHECK_BALANCE; medians"
    )
    medians = {}
    for name, values in results.items():
        cpu_us = statistics.median(v[0] for v in values)
        rps = statistics.median(v[1] for v in values)
        medians[name] = cpu_us
        rounds = " ".join(f"{v[0]:.0f}" for v in values)
        print(f"{name:9}: server CPU per request {cpu_us:.0f} us (rounds: {rounds}), client-bound requests/s {rps:.0f}")
    print(f"mtls_cpu_ratio={medians['mTLS'] / medians['plaintext']:.2f}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.tls_bench", description="mTLS vs plaintext server CPU")
    p.add_argument("--duration", type=float, default=env_number("TLS_BENCH_DURATION", 5))
    p.add_argument("--rounds", type=int, default=int(env_number("TLS_BENCH_ROUNDS", 3)))
    p.add_argument("--concurrency", type=int, default=int(env_number("TLS_BENCH_CONCURRENCY", 32)))
    p.add_argument("--client", metavar="TARGET", help="internal: only run the load client, print JSON")
    p.add_argument("--pki", default="", help="internal: the certificates directory of the load client")
    args = p.parse_args(argv)
    if args.client:
        import uvloop

        print(json.dumps(uvloop.run(load(args.client, args.pki, args.duration, args.concurrency))))
        return 0
    try:
        return bench(args)
    except BenchError as exc:
        print(f"tls bench failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
