"""A bare gRPC server that answers the charging methods by echoing the request bytes.

Why it exists: ``loadtest.bench`` drives it and the real charging server with the same
h2load command, so the ratio of the two throughputs says how much of the cost is the
charging work (parsing, rating, the Redis round trip) rather than the grpc.aio/HTTP/2
stack both share. To keep that comparison fair it uses the same runtime as
``charging serve``: one process, ``grpc.aio`` on uvloop, the same
``grpc.max_concurrent_streams`` option. It registers a generic handler with identity
serializers, so no protobuf is parsed or built: the bytes go straight back.

    python -m loadtest.echo_server --address 127.0.0.1:50099
    python -m loadtest.echo_server --address 127.0.0.1:50099 --work-us 30   # what 30 us of handler work costs

``--work-us`` makes each unary call burn that much CPU time of the serving thread before
it answers: the server's CPU per call then says what work inside a handler costs under
grpc.aio beyond itself (README, "A cheaper charging path").
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import grpc
import uvloop

SERVICE = "charging.v1.Charging"
METHODS = ("ChargeEvent", "ChargeSession")
STREAM_METHODS = ("ChargeStream", "ChargeBatches")


async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    """Return the request unchanged (identity serializers: ``request`` is raw bytes)."""
    return request


async def echo_stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    """Every message of the stream back, in order (a ChargeMessage read as a ChargeReply
    keeps its correlation id: both have it as field 1)."""
    async for request in requests:
        yield request


def working_echo(work_us: float) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
    """``echo`` after ``work_us`` of this thread's CPU time spent in Python."""

    async def echo_after_work(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        end = time.thread_time() + work_us / 1e6
        while time.thread_time() < end:
            pass
        return request

    return echo_after_work


def echo_handler(work_us: float = 0) -> grpc.GenericRpcHandler:
    """Unary-unary handlers for every method in ``METHODS`` and bidirectional ones for
    ``STREAM_METHODS``; no (de)serializer means bytes in, bytes out."""
    unary = working_echo(work_us) if work_us > 0 else echo
    handlers = {name: grpc.unary_unary_rpc_method_handler(unary) for name in METHODS}
    handlers.update({name: grpc.stream_stream_rpc_method_handler(echo_stream) for name in STREAM_METHODS})
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


async def serve(address: str, work_us: float = 0) -> None:
    """Serve until SIGTERM or SIGINT. Prints the bound address once ready so a parent can wait for it."""
    # Same option as charging.server.App so both servers accept the same stream concurrency.
    server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 1000)])
    server.add_generic_rpc_handlers((echo_handler(work_us),))
    port = server.add_insecure_port(address)
    if port == 0:
        raise SystemExit(f"echo server: cannot bind {address}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    host = address.rpartition(":")[0]
    print(f"echo server listening on {host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop(1.0)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.echo_server", description="gRPC echo server for loadtest.bench"
    )
    p.add_argument("--address", default="127.0.0.1:50099", help="host:port to listen on (port 0: any free port)")
    p.add_argument("--work-us", type=float, default=0, help="CPU time (us) each unary call spends before answering")
    args = p.parse_args(argv)
    uvloop.run(serve(args.address, args.work_us))
    return 0


if __name__ == "__main__":
    sys.exit(main())
