"""Admission control: how much work one server process takes on, and whether a call can
still be answered in time.

Every unary method of our services goes through ``Admission.guard`` (``status.add_servicer``
wires it), every Nchf request through ``enter``/``leave`` with the same slots (answered
503 NF_CONGESTION with Retry-After beyond them); health checking and reflection are
registered apart and are never refused, so a load balancer keeps seeing an overloaded
process as alive. Every Diameter CCR takes the same slots too (answered 3004
DIAMETER_TOO_BUSY beyond them; ``diameter/listener.py``).

* **In flight.** At most ``limit`` calls are being worked on at once in this process.
  One more is answered RESOURCE_EXHAUSTED at once, having changed nothing. Without a
  bound, calls from many connections pile up behind a slow Redis or a busy event loop,
  every one of them late, until their callers have given up on all of them.
* **Deadlines.** A call whose deadline has passed, or is closer than ``MIN_BUDGET_S``, is
  answered DEADLINE_EXCEEDED at admission. The hot path asks again just before its one
  Redis call (``check_deadline``): time spent waiting for the event loop, the subscriber
  lookup or rating can use up the rest. A charging request refused there was never sent,
  so it changed nothing, and the caller's retransmission is charged once. A request
  already sent is left to complete: Redis runs it whatever the caller does, and its
  answer is stored for the retransmission.

grpc also cancels a handler when its deadline passes, but only at the handler's next
``await`` and only once the event loop gets to the cancellation; on a busy loop that is
after the script has been sent. Hence the explicit checks.

* **Streams.** A ChargeStream or ChargeBatches call is admitted like a call
  (``guard_stream``); the requests its messages carry (one each, or a batch) are then
  answered concurrently by ``grouped`` (``each`` for one per message), at most ``limit``
  of them at once per stream, each counted in flight while it is worked on, so that
  unary calls see the load. Beyond the bound the stream is not read, even in the middle
  of a batch: HTTP/2 flow control holds the sender back (backpressure) and nothing is
  refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from typing import TypeVar

import grpc

from charging import metrics
from charging.errors import DeadlineExpired
from charging.settings import Settings

# A call with less time than this left is not started: one Redis round trip and the
# answer do not fit (about 0.5 ms on an idle server, 15 ms at 70% of capacity).
MIN_BUDGET_S = 0.001

Req = TypeVar("Req")
Msg = TypeVar("Msg")
Resp = TypeVar("Resp")
Behaviour = Callable[[Req, grpc.aio.ServicerContext], Awaitable[Resp]]
StreamBehaviour = Callable[[AsyncIterator[Req], grpc.aio.ServicerContext], AsyncIterator[Resp]]

# The gRPC context of the call this task serves, for ``check_deadline``. grpc.aio runs
# each call in its own task, so the value never leaks from one call to another.
_CALL: contextvars.ContextVar[tuple[str, grpc.aio.ServicerContext] | None] = contextvars.ContextVar(
    "admission_call", default=None
)


class Admission:
    """The in-flight bound of one server process."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the in-flight limit must be at least 1")
        self.limit = limit
        self.in_flight = 0

    def guard(self, method: str, behaviour: Behaviour[Req, Resp]) -> Behaviour[Req, Resp]:
        """``behaviour`` (a unary handler) behind the in-flight bound and the deadline check."""
        rejected_limit = metrics.ADMISSION_REJECTIONS.labels(method, "in_flight")
        rejected_deadline = metrics.ADMISSION_REJECTIONS.labels(method, "deadline")

        async def guarded(request: Req, context: grpc.aio.ServicerContext) -> Resp:
            if not self.enter():
                rejected_limit.inc()
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "server overloaded: retry later")
            try:
                remaining = context.time_remaining()
                if remaining is not None and remaining < MIN_BUDGET_S:
                    rejected_deadline.inc()
                    await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before the call started")
                token = _CALL.set((method, context))
                try:
                    return await behaviour(request, context)
                finally:
                    _CALL.reset(token)
            finally:
                self.leave()

        return guarded

    def enter(self) -> bool:
        """Take an in-flight slot; False when every slot is taken (refuse the request at
        once, having changed nothing). Every door of the process draws on the same slots:
        the gRPC methods here, the Nchf door (``nchf/app.py``), the Diameter door
        (``diameter/listener.py``)."""
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1

    def guard_stream(self, method: str, behaviour: StreamBehaviour[Req, Resp]) -> StreamBehaviour[Req, Resp]:
        """``behaviour`` (a bidirectional streaming handler) admitted like a unary call;
        its messages go through ``each``."""
        rejected_limit = metrics.ADMISSION_REJECTIONS.labels(method, "in_flight")
        rejected_deadline = metrics.ADMISSION_REJECTIONS.labels(method, "deadline")

        async def guarded(requests: AsyncIterator[Req], context: grpc.aio.ServicerContext) -> AsyncIterator[Resp]:
            if self.in_flight >= self.limit:
                rejected_limit.inc()
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "server overloaded: retry later")
            remaining = context.time_remaining()
            if remaining is not None and remaining < MIN_BUDGET_S:
                rejected_deadline.inc()
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before the call started")
            # Not reset: an async generator may be closed from another context, and the
            # call's task ends with the stream anyway. The tasks of ``each`` copy it.
            _CALL.set((method, context))
            async for reply in behaviour(requests, context):
                yield reply

        return guarded

    async def each(
        self, requests: AsyncIterator[Req], answer: Callable[[Req], Awaitable[Resp]]
    ) -> AsyncGenerator[Resp, None]:
        """The answers to the messages of ``requests``, each as soon as it is ready
        (ChargeStream): ``grouped`` with one request per message."""
        async with contextlib.aclosing(self.grouped(requests, _alone, answer)) as groups:
            async for replies in groups:
                for reply in replies:
                    yield reply

    async def grouped(
        self,
        messages: AsyncIterator[Msg],
        requests_of: Callable[[Msg], Iterable[Req]],
        answer: Callable[[Req], Awaitable[Resp]],
    ) -> AsyncGenerator[list[Resp], None]:
        """The answers to the requests that ``messages`` carry (``requests_of`` each),
        in lists of those ready at the same moment (ChargeBatches; ChargeStream through
        ``each``).

        ``answer`` must answer every request (errors included) and never raise. A slot
        is taken before a request is started (while none is free, the stream is not read
        further, even in the middle of a message) and given back once its reply has been
        handed on, not when it is computed: a client that does not read its replies stops
        being read too, so neither side's queue grows beyond ``limit`` requests (and one
        decoded message: grpc's largest receive message, 4 MiB by default, bounds a batch).
        The iterator ends after the last reply, once ``messages`` has ended."""
        slots = asyncio.Semaphore(self.limit)
        ready: list[Resp] = []
        woken = asyncio.Event()
        finished: list[_Finished] = []
        working: set[asyncio.Task[None]] = set()

        async def work(request: Req) -> None:
            self.in_flight += 1
            try:
                ready.append(await answer(request))
            except BaseException as exc:  # a bug: end the stream with it rather than lose a reply
                task = asyncio.current_task()
                if isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling():
                    raise  # the stream is being closed (below)
                finished.append(_Finished(exc))
            finally:
                self.in_flight -= 1
                woken.set()

        async def read() -> None:
            failure: BaseException | None = None
            try:
                async for message in messages:
                    for request in requests_of(message):
                        await slots.acquire()
                        task = asyncio.create_task(work(request))
                        working.add(task)
                        task.add_done_callback(working.discard)
                if working:
                    await asyncio.wait(set(working))
            except Exception as exc:  # the client went away mid-stream, or a bug in answer
                failure = exc
            # At the end of the requests, after every reply is in ``ready``: the end is
            # seen only then. On a failure, at once (the stream ends with it).
            finished.append(_Finished(failure))
            woken.set()

        reader = asyncio.create_task(read())
        try:
            while True:
                await woken.wait()
                woken.clear()
                if ready:
                    replies = ready[:]
                    ready.clear()
                    yield replies
                    for _ in replies:
                        slots.release()
                if finished and not ready:
                    if finished[0].failure is not None:
                        raise finished[0].failure
                    return
        finally:
            reader.cancel()
            for task in list(working):
                # As for a unary call cancelled by its caller: a request already sent to
                # Redis completes there, and its answer is kept for the retransmission.
                task.cancel()


def _alone(message: Req) -> tuple[Req]:
    return (message,)


class _Finished:
    """The end of a stream's answers, with the failure that ended it early if any."""

    __slots__ = ("failure",)

    def __init__(self, failure: BaseException | None) -> None:
        self.failure = failure


def check_deadline() -> None:
    """Raise ``DeadlineExpired`` when the caller of the call being served has given up.

    Called just before a charging request is sent to Redis; outside a gRPC call (the
    sweeper, the renewer) it does nothing."""
    call = _CALL.get()
    if call is None:
        return
    remaining = call[1].time_remaining()
    if remaining is not None and remaining <= 0:
        metrics.ADMISSION_REJECTIONS.labels(call[0], "deadline").inc()
        raise DeadlineExpired("deadline exceeded before the request was sent: nothing changed")


def server_options(s: Settings) -> list[tuple[str, int]]:
    """gRPC server options bounding connections: idle ones are closed, dead (half-open)
    ones found by keepalive pings, long-lived ones recycled so that a new server gets its
    share, and client keepalives as frequent as network elements send them are allowed."""

    def ms(seconds: float) -> int:
        return max(1, round(seconds * 1000))

    return [
        # Ping a connection after this long without any frame; close it when the ping is
        # not answered within the timeout: a peer that vanished without a FIN or RST.
        ("grpc.keepalive_time_ms", ms(s.grpc_keepalive_s)),
        ("grpc.keepalive_timeout_ms", ms(s.grpc_keepalive_timeout_s)),
        # Keep pinging an idle connection (grpc's default stops after 2 pings without data).
        ("grpc.http2.max_pings_without_data", 0),
        # GOAWAY to a connection without calls for this long; the client reconnects on
        # its next call.
        ("grpc.max_connection_idle_ms", ms(s.grpc_max_idle_s)),
        # GOAWAY after this age (grpc adds +-10% jitter); calls in flight get the grace.
        ("grpc.max_connection_age_ms", ms(s.grpc_max_age_s)),
        ("grpc.max_connection_age_grace_ms", ms(s.grpc_max_age_grace_s)),
        # Client pings: allowed without calls, down to this interval (grpc's default, 5
        # minutes, answers a network element pinging every 30 s with GOAWAY too_many_pings).
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", ms(s.grpc_min_ping_interval_s)),
        # Calls one connection may have open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS),
        # by default fewer than the process takes: one client's burst beyond it waits in that
        # client's transport, which sends each call as an earlier one is answered, instead
        # of overflowing the process's queue below and being reset (README "Admission").
        ("grpc.max_concurrent_streams", s.max_streams_per_connection),
        # grpc's default counts a stream until the server has freed it, after the client saw
        # its answer, and resets (REFUSED_STREAM, UNAVAILABLE at the client) a new call that
        # the client sent within the advertised limit: the limit is the HTTP/2 one, the one
        # the client can keep to; the process is bounded by the two settings below.
        ("grpc.http.overload_protection", 0),
        # Calls that arrived but that the event loop has not taken up yet wait in grpc's
        # own queue, before any Python code sees them; beyond this many, grpc resets the
        # call itself (the client sees CANCELLED), at little cost. Left at grpc's default
        # (1,000 to 3,000), this queue is where an overloaded server keeps its backlog:
        # every call then waits through all of it (README "Admission").
        ("grpc.server.max_pending_requests", s.max_waiting_calls or s.max_in_flight),
        ("grpc.server.max_pending_requests_hard_limit", s.max_waiting_calls or s.max_in_flight),
        # gRPC sets SO_REUSEPORT unless told not to: a second server then binds a port in
        # use beside the first and clients alternate between two databases. The workers
        # of one supervisor share their port on purpose, under its address lock
        # (supervisor.py).
        ("grpc.so_reuseport", 1 if s.worker_of else 0),
    ]
