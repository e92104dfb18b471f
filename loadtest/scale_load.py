"""The subscriber base and the load generator of ``loadtest.scale_bench``.

*The base.* The admin API creates one subscriber per call, so 100,000 of them are
written here in pipelines, one per Redis primary, with exactly the keys
``Directory.create`` writes (the account hash, its plan's member set, the MSISDN index),
plus what ``enrol.lua`` adds to a postpaid line (bill periods, credit limit) and what
``buy.lua`` adds for a bundle (a bucket of the catalog's ``data-1gb``, packed by
``charging.buckets``). One subscriber in ten is postpaid, one in ten holds the bundle
(and its sessions are data, drawn from the bucket), the rest are prepaid voice.

*The load.* One process of ``--client`` builds every request of its run serialized
before the clock starts, says ``ready``, waits for ``go`` on stdin, then drives its
``connections`` channels (one HTTP/2 connection each, so the kernel spreads them over
the workers) closed loop (``concurrency`` units in flight until the duration ends) or
open loop (units started at a fixed rate, each timed). A unit is a whole session
(INITIAL, 3 UPDATEs, TERMINATE; each step one request) or one request. Every charging
answer must be 2001. It prints one JSON line: requests, errors, elapsed, its own CPU
seconds and, open loop, every latency (ms).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import redis
from redis.crc import key_slot

from charging import keys
from charging.buckets import buckets_of, pack
from charging.catalog_doc import catalog_from_doc
from charging.catalogs import read_catalog_file
from charging.v1 import charging_pb2, common_pb2, topup_pb2
from loadtest.bench import batch_of
from postpaid import periods

MSISDN_BASE = 491_600_000_000
STEPS = 5  # INITIAL, 3 UPDATE, TERMINATE
CREDIT_LIMIT = 10**12  # micros: no line runs dry during a run
KINDS = ("echo", "session", "event", "topup", "stream", "batch")
PATHS = {
    "echo": "/charging.v1.Charging/ChargeSession",
    "session": "/charging.v1.Charging/ChargeSession",
    "event": "/charging.v1.Charging/ChargeEvent",
    "topup": "/charging.v1.TopUp/Recharge",
    "stream": "/charging.v1.Charging/ChargeStream",
    "batch": "/charging.v1.Charging/ChargeBatches",
}
REFUSED = (grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED)  # the server's bounds (README "Admission")
SESSION_KINDS = ("echo", "session", "stream", "batch")  # a unit is a whole session (STEPS requests)


def msisdn(index: int) -> str:
    return str(MSISDN_BASE + index)


def line_kind(index: int) -> str:
    """postpaid, bundle (prepaid with data-1gb) or prepaid."""
    return ("postpaid", "bundle")[index % 10] if index % 10 < 2 else "prepaid"


# --------------------------------------------------------------------------- the base


class Router:
    """A plain client per Redis primary and the slot map (one node when not a cluster)."""

    def __init__(self, ports: Sequence[int], cluster: bool) -> None:
        self.cluster = cluster
        self.clients = {p: redis.Redis(host="127.0.0.1", port=p) for p in ports}
        self.ranges: list[tuple[int, int, int]] = []
        if cluster:
            seed = next(iter(self.clients.values()))
            for start, end, primary, *_ in seed.execute_command("CLUSTER", "SLOTS"):
                self.ranges.append((int(start), int(end), int(primary[1])))
            self.clients = {port: redis.Redis(host="127.0.0.1", port=port) for _, _, port in self.ranges}

    def port_of(self, key: str) -> int:
        if not self.cluster:
            return next(iter(self.clients))
        slot = int(key_slot(key.encode()))
        return next(port for start, end, port in self.ranges if start <= slot <= end)

    def close(self) -> None:
        for c in self.clients.values():
            c.close()


def populate(router: Router, subscribers: int, now_s: int, tz: str) -> dict[str, int]:
    """Write the base; how many lines of each kind."""
    catalog = catalog_from_doc(read_catalog_file(""))
    bundle = catalog.bundles["data-1gb"]
    bucket = pack(buckets_of(bundle, now_s)[0])
    bill_periods = periods.pack(periods.open_periods(periods.period_at(1, tz, now_s), tz))
    pipes = {port: c.pipeline(transaction=False) for port, c in router.clients.items()}
    members: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for i in range(subscribers):
        account, kind = str(i + 1), line_kind(i)
        counts[kind] = counts.get(kind, 0) + 1
        plan = "mobile-postpaid" if kind == "postpaid" else "mobile-prepaid"
        fields: dict[str, str | int] = {
            "balance": CREDIT_LIMIT, "reserved": 0, "plan": plan, "status": "active", "currency": "EUR",
            "msisdn": msisdn(i),
        }  # fmt: skip
        if kind == "postpaid":
            fields.update(bp=bill_periods, credit_limit=CREDIT_LIMIT, overdue=0, cl=0)
        akey = keys.account(account)
        pipe = pipes[router.port_of(akey)]
        pipe.hset(akey, mapping=fields)
        if kind == "bundle":
            pipe.hset(akey, "bucket_seq", 1)
            pipe.hset(keys.buckets(account), f"{bundle.id}.1", bucket)
        ikey = keys.identity("msisdn", msisdn(i))
        pipes[router.port_of(ikey)].set(ikey, account)
        members.setdefault(plan, []).append(account)
        if i % 5000 == 4999:
            for p in pipes.values():
                p.execute()
    for plan, ids in members.items():
        mkey = keys.plan_members(plan)
        for start in range(0, len(ids), 10_000):
            pipes[router.port_of(mkey)].sadd(mkey, *ids[start : start + 10_000])
    seq = keys.ACCOUNT_SEQ
    pipes[router.port_of(seq)].set(seq, subscribers)
    for p in pipes.values():
        p.execute()
    return counts


# --------------------------------------------------------------------------- requests


def session_steps(run: str, unit: int, index: int) -> list[charging_pb2.SessionRequest]:
    """A whole session of subscriber ``index``: data for bundle holders, else voice."""
    who = common_pb2.SubscriberId(msisdn=msisdn(index))
    data = line_kind(index) == "bundle"
    out = []
    for n in range(STEPS):
        kind = (
            charging_pb2.REQUEST_TYPE_INITIAL
            if n == 0
            else charging_pb2.REQUEST_TYPE_TERMINATE
            if n == STEPS - 1
            else charging_pb2.REQUEST_TYPE_UPDATE
        )
        req = charging_pb2.SessionRequest(
            session_id=f"sc;{run};{unit}", request_type=kind, request_number=n, subscriber=who,
            called_party="" if data else "4915112345678",
        )  # fmt: skip
        rg = req.rating_groups.add(rating_group=30 if data else 10)
        if kind != charging_pb2.REQUEST_TYPE_TERMINATE:
            rg.requested.SetInParent()  # the tariff's default quota
        if kind != charging_pb2.REQUEST_TYPE_INITIAL:
            if data:
                rg.used.total_octets = 2_000_000
            else:
                rg.used.time_s = 60 if kind == charging_pb2.REQUEST_TYPE_UPDATE else 30
        out.append(req)
    return out


def unit_bodies(kind: str, run: str, unit: int, index: int) -> list[bytes]:
    """The serialized requests of one unit (a session's steps, or one request)."""
    if kind in ("echo", "session"):
        return [r.SerializeToString() for r in session_steps(run, unit, index)]
    if kind in ("stream", "batch"):
        return [
            charging_pb2.ChargeMessage(correlation_id=unit * STEPS + n, session=r).SerializeToString()
            for n, r in enumerate(session_steps(run, unit, index))
        ]
    who = common_pb2.SubscriberId(msisdn=msisdn(index))
    if kind == "event":
        return [
            charging_pb2.EventRequest(
                event_id=f"ev;{run};{unit}", action=charging_pb2.REQUESTED_ACTION_DIRECT_DEBITING, subscriber=who,
                rating_group=20, requested=common_pb2.ServiceUnits(service_specific_units=1),
                called_party="4915112345678",
            ).SerializeToString()
        ]  # fmt: skip
    return [
        topup_pb2.RechargeRequest(
            subscriber=who, amount_micros=1_000_000, channel=topup_pb2.CHANNEL_APP, idempotency_key=f"tu;{run};{unit}"
        ).SerializeToString()
    ]


def subscriber_sample(kind: str, subscribers: int, count: int, seed: int) -> list[int]:
    """Random subscribers over the whole base (top-ups: prepaid lines only)."""
    rnd = random.Random(seed)
    out: list[int] = []
    while len(out) < count:
        i = rnd.randrange(subscribers)
        if kind != "topup" or line_kind(i) != "postpaid":
            out.append(i)
    return out


def answer_ok(kind: str, raw: bytes) -> bool:
    if kind == "echo":
        return True
    if kind == "session":
        a = charging_pb2.SessionAnswer.FromString(raw)
        return a.result_code == 2001 and all(g.result_code == 2001 for g in a.rating_groups)
    if kind in ("stream", "batch"):
        r = charging_pb2.ChargeReply.FromString(raw)
        return r.WhichOneof("answer") == "session" and r.session.result_code == 2001
    if kind == "event":
        return charging_pb2.EventAnswer.FromString(raw).result_code == 2001
    return topup_pb2.RechargeAnswer.FromString(raw).balance.balance_micros > 0


# --------------------------------------------------------------------------- the client


def stream_ended(waiting: dict[int, asyncio.Future[bytes]], why: str) -> None:
    """Every request still waiting on a stream that is gone fails as UNAVAILABLE."""
    error = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details=why)
    for future in waiting.values():
        if not future.done():
            future.set_exception(error)
    waiting.clear()


class _Mux:
    """One charging stream (``kind``): requests wait by correlation id for their replies,
    which one reader hands out; when the stream ends, whatever still waits fails."""

    kind = ""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.call = channel.stream_stream(PATHS[self.kind])(timeout=600)
        self.waiting: dict[int, asyncio.Future[bytes]] = {}
        self.reader = asyncio.ensure_future(self._read())

    def replies(self, raw: bytes) -> list[tuple[int, bytes]]:
        """(correlation id, the serialized ChargeReply) of each reply in one message."""
        raise NotImplementedError

    async def send(self, body: bytes, correlation: int) -> bytes:
        """Send one request; its reply."""
        raise NotImplementedError

    async def _read(self) -> None:
        try:
            while True:
                raw = await self.call.read()
                if raw is grpc.aio.EOF:
                    return
                for correlation, reply in self.replies(raw):
                    future = self.waiting.pop(correlation, None)
                    if future is not None:
                        future.set_result(reply)
        finally:
            stream_ended(self.waiting, "the stream ended before the reply")

    async def close(self) -> None:
        await self.call.done_writing()
        await self.reader


class StreamMux(_Mux):
    """One ChargeStream; each write waits for the reply with its correlation id."""

    kind = "stream"

    def __init__(self, channel: grpc.aio.Channel) -> None:
        super().__init__(channel)
        self.lock = asyncio.Lock()

    def replies(self, raw: bytes) -> list[tuple[int, bytes]]:
        return [(charging_pb2.ChargeReply.FromString(raw).correlation_id, raw)]

    async def send(self, body: bytes, correlation: int) -> bytes:
        future = asyncio.get_running_loop().create_future()
        self.waiting[correlation] = future
        async with self.lock:
            await self.call.write(body)
        return await future


class BatchMux(_Mux):
    """One ChargeBatches stream, used as a gateway under load uses it: one writer sends
    the requests that arrived while its previous write was under way as one batch."""

    kind = "batch"

    def __init__(self, channel: grpc.aio.Channel) -> None:
        super().__init__(channel)
        self.queued: list[bytes] = []
        self.wanted = asyncio.Event()
        self.writer = asyncio.ensure_future(self._write())

    def replies(self, raw: bytes) -> list[tuple[int, bytes]]:
        return [(r.correlation_id, r.SerializeToString()) for r in charging_pb2.ChargeReplies.FromString(raw).replies]

    async def _write(self) -> None:
        try:
            while True:
                await self.wanted.wait()
                self.wanted.clear()
                while self.queued:
                    batch, self.queued = batch_of(self.queued), []
                    await self.call.write(batch)
        finally:
            stream_ended(self.waiting, "the stream could not be written")

    async def send(self, body: bytes, correlation: int) -> bytes:
        future = asyncio.get_running_loop().create_future()
        if self.writer.done() or self.reader.done():
            stream_ended({correlation: future}, "the stream is gone")
        else:
            self.waiting[correlation] = future
            self.queued.append(body)
            self.wanted.set()
        return await future

    async def close(self) -> None:
        self.writer.cancel()
        await super().close()


@dataclass
class Tally:
    requests: int = 0
    errors: int = 0
    # Refused by the server's bounds (CANCELLED: reset by grpc's queue bound;
    # RESOURCE_EXHAUSTED: the in-flight bound): counted, not failures of the run.
    refused: int = 0
    first_error: str = ""

    def fail(self, what: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or what


async def drive(spec: dict[str, Any], units: list[list[bytes]], ready: Callable[[], Awaitable[None]]) -> dict[str, Any]:
    kind = spec["kind"]
    options = [("grpc.use_local_subchannel_pool", 1)]  # one connection per channel
    channels = [grpc.aio.insecure_channel(spec["target"], options=options) for _ in range(spec["connections"])]
    for ch in channels:
        await asyncio.wait_for(ch.channel_ready(), 10)
    senders: list[Callable[[bytes, int], Awaitable[bytes]]]
    muxes: list[_Mux] = []
    if kind in ("stream", "batch"):
        muxes = [StreamMux(ch) if kind == "stream" else BatchMux(ch) for ch in channels]
        senders = [m.send for m in muxes]
    else:
        calls = [ch.unary_unary(PATHS[kind]) for ch in channels]
        senders = [lambda b, _n, c=c: c(b, timeout=30) for c in calls]  # type: ignore[misc]
    tally, latencies = Tally(), []
    timed = spec["rate"] > 0

    async def run_unit(send: Callable[[bytes, int], Awaitable[bytes]], unit: int, bodies: list[bytes]) -> None:
        for step, body in enumerate(bodies):
            started = time.perf_counter()
            try:
                raw = await send(body, unit * STEPS + step)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in REFUSED:
                    tally.refused += 1
                else:
                    tally.fail(f"{exc.code().name}: {exc.details()}")
                return
            if timed:
                latencies.append(round((time.perf_counter() - started) * 1000, 3))
            tally.requests += 1
            if not answer_ok(kind, raw):
                tally.fail("an answer other than 2001")
                return

    await ready()
    loop = asyncio.get_running_loop()
    cpu, started = time.process_time(), loop.time()
    deadline = started + spec["duration"]
    if timed:  # open loop: unit n starts at n / rate
        tasks = []
        for n, bodies in enumerate(units):
            at = started + n / spec["rate"]
            if at >= deadline:
                break
            await asyncio.sleep(max(0.0, at - loop.time()))
            tasks.append(asyncio.ensure_future(run_unit(senders[n % len(senders)], n, bodies)))
        await asyncio.gather(*tasks)
    else:
        pending = enumerate(units)

        async def worker(w: int) -> None:
            for n, bodies in pending:
                if loop.time() >= deadline:
                    return
                await run_unit(senders[w % len(senders)], n, bodies)

        await asyncio.gather(*(worker(w) for w in range(spec["concurrency"])))
    elapsed = loop.time() - started
    client_cpu = time.process_time() - cpu
    for m in muxes:
        await m.close()
    for ch in channels:
        await ch.close()
    return {
        "requests": tally.requests, "errors": tally.errors, "first_error": tally.first_error, "refused": tally.refused,
        "elapsed_s": elapsed, "client_cpu_s": client_cpu, "latencies_ms": latencies,
    }  # fmt: skip


def client(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the run's requests, then (after ``go``) drive them; the result as a dict."""
    import uvloop

    kind, run = spec["kind"], spec["run"]
    count = spec["units"]
    sample = subscriber_sample(kind, spec["subscribers"], count, spec["seed"])
    units = [unit_bodies(kind, run, n, i) for n, i in enumerate(sample)]

    async def ready() -> None:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

    return uvloop.run(drive(spec, units, ready))


def client_main(raw_spec: str) -> int:
    result = memoryview((json.dumps(client(json.loads(raw_spec))) + "\n").encode())
    # Written with os.write until all of it is out: after uvloop.run, print() of more than
    # a pipe's 64 KiB was cut at 65,536 bytes without an error (a partial write the text
    # layer dropped; reproduced alone), which the parent then read as broken JSON.
    sys.stdout.flush()
    while result:
        result = result[os.write(sys.stdout.fileno(), result) :]
    return 0
