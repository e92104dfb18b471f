"""Server CPU per Diameter CCR-U, next to the same UPDATE over gRPC.

One charging server process (``charging serve`` with its Diameter door on a free
loopback port, its own redis-server and PostgreSQL), ``--sessions`` voice sessions
opened with a CCR-I each, then for ``--duration`` seconds CCR-U after CCR-U (used 1 s,
requested 300 s, rating group 10) over ``--connections`` Diameter connections with
``--in-flight`` requests outstanding on each. Then the same number of sessions and the
same UPDATEs through gRPC ``ChargeSession`` from a grpc.aio client. For each door it
prints requests/s as seen by the client (bound by the Python client sharing the two
CPUs: labelled so), p50/p99, and the figure that does not depend on the client: the
server process's CPU time (user + system, from /proc) divided by the requests answered.
Every answer is checked to be 2001.

    python -m loadtest.diameter_bench                       # what `make bench` runs
    python -m loadtest.diameter_bench --duration 5 --sessions 50
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from diameter.message import Message
from diameter.message import constants as c
from diameter.message.commands import CapabilitiesExchangeRequest, CreditControlRequest
from diameter.message.commands.credit_control import RequestedServiceUnit, UsedServiceUnit

from charging.v1 import charging_pb2, charging_pb2_grpc, common_pb2
from loadtest.bench import (
    BenchError,
    alive,
    child,
    child_env,
    create_subscribers,
    free_port,
    machine,
    msisdn,
    percentile,
    process_cpu_s,
    server_stores,
    tail,
    wait_health,
)


@dataclass(frozen=True)
class DoorResult:
    name: str
    requests: int
    seconds: float
    server_cpu_s: float
    p50_ms: float
    p99_ms: float

    def line(self) -> str:
        return (
            f"{self.name:<22} {self.requests / self.seconds:8.0f} req/s (client-bound)  "
            f"p50 {self.p50_ms:6.2f} ms  p99 {self.p99_ms:6.2f} ms  "
            f"server CPU {self.server_cpu_s / self.requests * 1e6:7.0f} µs/request"
        )


class DiameterConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        self.reader, self.writer = reader, writer
        self.host = f"bench{index}.pgw.example"
        self.pending: dict[int, asyncio.Future[Message]] = {}
        self.next_id = index << 24
        self.reading = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await self.reader.readexactly(20)
                raw = head + await self.reader.readexactly(int.from_bytes(head[1:4], "big") - 20)
                future = self.pending.pop(int.from_bytes(raw[12:16], "big"), None)
                if future is not None:
                    future.set_result(raw)

    async def send(self, msg: Message, application: int) -> bytes:
        msg.header.application_id = application
        return await self.send_raw(bytearray(msg.as_bytes()))

    async def send_raw(self, raw: bytearray) -> bytes:
        """Send an encoded request under a new hop-by-hop id; the answer's bytes."""
        self.next_id += 1
        raw[12:16] = raw[16:20] = self.next_id.to_bytes(4, "big")
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = future
        self.writer.write(raw)
        return await future

    async def cer(self) -> None:
        cer = CapabilitiesExchangeRequest()
        cer.origin_host, cer.origin_realm = self.host.encode(), b"pgw.example"
        cer.host_ip_address, cer.vendor_id, cer.product_name = ["127.0.0.1"], 0, "bench"
        cer.auth_application_id = [4]
        check(await self.send(cer, 0), "CEA")

    def ccr(self, session: str, kind: int, number: int, who: str, used: int) -> CreditControlRequest:
        ccr = CreditControlRequest()
        ccr.session_id, ccr.origin_host, ccr.origin_realm = session, self.host.encode(), b"pgw.example"
        ccr.destination_realm, ccr.auth_application_id, ccr.service_context_id = b"localdomain", 4, "32260@3gpp.org"
        ccr.cc_request_type, ccr.cc_request_number = kind, number
        ccr.add_subscription_id(subscription_id_type=c.E_SUBSCRIPTION_ID_TYPE_END_USER_E164, subscription_id_data=who)
        ccr.add_multiple_services_credit_control(
            requested_service_unit=RequestedServiceUnit(cc_time=300),
            used_service_unit=UsedServiceUnit(cc_time=used) if used else None,
            rating_group=10,
        )
        return ccr


def check(answer: bytes, what: str) -> None:
    """The answer's top-level Result-Code must be 2001 (read from the bytes: the client
    stays cheap, so the server is what is measured)."""
    pos, code = 20, None
    while pos + 8 <= len(answer):
        avp_code, flags_length = (
            int.from_bytes(answer[pos : pos + 4], "big"),
            int.from_bytes(answer[pos + 4 : pos + 8], "big"),
        )
        length = flags_length & 0xFFFFFF
        if avp_code == c.AVP_RESULT_CODE and not flags_length >> 31:
            code = int.from_bytes(answer[pos + 8 : pos + 12], "big")
            break
        pos += (length + 3) & ~3
    if code != 2001:
        raise BenchError(f"{what} answered {code}")


def number_offset(raw: bytes) -> int:
    """Where the CC-Request-Number value sits in an encoded CCR."""
    pos = 20
    while pos + 8 <= len(raw):
        code, length = int.from_bytes(raw[pos : pos + 4], "big"), int.from_bytes(raw[pos + 5 : pos + 8], "big")
        if code == c.AVP_CC_REQUEST_NUMBER:
            return pos + 8
        pos += (length + 3) & ~3
    raise BenchError("no CC-Request-Number in the CCR")


async def diameter_load(
    port: int, sessions: int, connections: int, in_flight: int, duration: float, pid: int
) -> DoorResult:
    conns = []
    for i in range(connections):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conn = DiameterConnection(reader, writer, i + 1)
        await conn.cer()
        conns.append(conn)
    numbers: dict[str, int] = {}

    def session_id(i: int) -> str:
        return f"{conns[i % connections].host};bench;{i}"

    async def open_session(i: int) -> None:
        conn = conns[i % connections]
        check(await conn.send(conn.ccr(session_id(i), 1, 0, msisdn(i), 0), 4), "CCR-I")
        numbers[session_id(i)] = 0

    await asyncio.gather(*(open_session(i) for i in range(sessions)))
    latencies: list[float] = []
    deadline = time.monotonic() + duration

    async def worker(w: int) -> None:
        # Sessions i with i % workers == w: all on connection w % connections, as opened.
        # Each CCR-U is encoded once; only its CC-Request-Number changes from one to the next.
        conn = conns[w % connections]
        mine = []
        for i in range(sessions):
            if i % (connections * in_flight) == w:
                msg = conn.ccr(session_id(i), 2, 0, msisdn(i), 1)
                msg.header.application_id = 4
                raw = bytearray(msg.as_bytes())
                mine.append((session_id(i), raw, number_offset(raw)))
        while time.monotonic() < deadline:
            for sid, raw, at in mine:
                numbers[sid] += 1
                raw[at : at + 4] = numbers[sid].to_bytes(4, "big")
                started = time.perf_counter()
                check(await conn.send_raw(raw), "CCR-U")
                latencies.append(time.perf_counter() - started)
                if time.monotonic() >= deadline:
                    return

    cpu, started = process_cpu_s(pid), time.monotonic()
    await asyncio.gather(*(worker(w) for w in range(connections * in_flight)))
    seconds, cpu = time.monotonic() - started, process_cpu_s(pid) - cpu
    for conn in conns:
        conn.writer.close()
        conn.reading.cancel()
    latencies.sort()
    return DoorResult(
        "Diameter CCR-U", len(latencies), seconds, cpu, percentile(latencies, 50) * 1e3, percentile(latencies, 99) * 1e3
    )


async def grpc_load(target: str, sessions: int, concurrency: int, duration: float, pid: int, offset: int) -> DoorResult:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = charging_pb2_grpc.ChargingStub(channel)

        def request(i: int, kind: int, number: int, used: int) -> charging_pb2.SessionRequest:
            group = charging_pb2.RatingGroupRequest(rating_group=10, requested=common_pb2.ServiceUnits(time_s=300))
            if used:
                group.used.CopyFrom(common_pb2.ServiceUnits(time_s=used))
            return charging_pb2.SessionRequest(
                session_id=f"grpc-bench-{i}",
                request_type=kind,
                request_number=number,
                subscriber=common_pb2.SubscriberId(msisdn=msisdn(offset + i)),
                rating_groups=[group],
            )

        async def call(req: charging_pb2.SessionRequest) -> None:
            answer = await stub.ChargeSession(req, timeout=10)
            if answer.result_code != 2001:
                raise BenchError(f"ChargeSession answered {answer.result_code}")

        await asyncio.gather(*(call(request(i, charging_pb2.REQUEST_TYPE_INITIAL, 0, 0)) for i in range(sessions)))
        numbers = [0] * sessions
        latencies: list[float] = []
        deadline = time.monotonic() + duration

        async def worker(w: int) -> None:
            mine = [i for i in range(sessions) if i % concurrency == w]
            while time.monotonic() < deadline:
                for i in mine:
                    numbers[i] += 1
                    started = time.perf_counter()
                    await call(request(i, charging_pb2.REQUEST_TYPE_UPDATE, numbers[i], 1))
                    latencies.append(time.perf_counter() - started)
                    if time.monotonic() >= deadline:
                        return

        cpu, started = process_cpu_s(pid), time.monotonic()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        seconds, cpu = time.monotonic() - started, process_cpu_s(pid) - cpu
    latencies.sort()
    return DoorResult(
        "gRPC ChargeSession U",
        len(latencies),
        seconds,
        cpu,
        percentile(latencies, 50) * 1e3,
        percentile(latencies, 99) * 1e3,
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="seconds of CCR-U (and of gRPC UPDATE)")
    p.add_argument("--sessions", type=int, default=200, help="sessions per door")
    p.add_argument("--connections", type=int, default=4, help="Diameter connections")
    p.add_argument("--in-flight", type=int, default=8, help="requests outstanding per Diameter connection")
    return p.parse_args(argv)


def bench(args: argparse.Namespace) -> int:
    if shutil.which("redis-server") is None:
        raise BenchError("redis-server is not installed (make redis-server)")
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="charging-diameter-bench-")))
        grpc_port, diameter_port = free_port(), free_port()
        env = child_env()
        env.update(server_stores(stack, workdir, "diameter-bench"))
        env.update(
            CHARGING_GRPC_ADDRESS=f"127.0.0.1:{grpc_port}",
            CHARGING_METRICS_ADDRESS="",
            CHARGING_DIAMETER_ADDRESS=f"127.0.0.1:{diameter_port}",
            CHARGING_LOG_LEVEL="WARNING",
        )
        server_log = workdir / "charging-server.log"
        server = stack.enter_context(child([sys.executable, "-m", "charging.cli", "serve"], server_log, env))
        try:
            target = f"127.0.0.1:{grpc_port}"
            wait_health(server, target, server_log)
            create_subscribers(target, 2 * args.sessions)
            diameter = asyncio.run(
                diameter_load(diameter_port, args.sessions, args.connections, args.in_flight, args.duration, server.pid)
            )
            alive(server, "charging server", server_log)
            concurrency = args.connections * args.in_flight
            grpc_result = asyncio.run(
                grpc_load(target, args.sessions, concurrency, args.duration, server.pid, args.sessions)
            )
            alive(server, "charging server", server_log)
        except BaseException:
            print(f"--- last lines of the charging server log:\n{tail(server_log)}", file=sys.stderr)
            raise
    print(machine())
    print(
        f"load: {args.sessions} voice sessions per door, {args.connections * args.in_flight} requests in flight, "
        f"{args.duration:.0f} s each, every answer 2001"
    )
    for r in (diameter, grpc_result):
        print(r.line())
    ratio = (diameter.server_cpu_s / diameter.requests) / (grpc_result.server_cpu_s / grpc_result.requests)
    print(f"diameter_cpu_ratio={ratio:.2f}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return bench(parse_args(argv))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
