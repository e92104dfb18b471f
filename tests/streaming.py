"""Calling any method with raw bytes, server-streaming ones included (WatchSessions):
a stream counts as answered (OK) once its initial metadata says the watch is in place."""

from __future__ import annotations

import grpc

from charging.api import READY
from charging.v1 import charging_pb2

STREAMING = {
    f"/{service.full_name}/{m.name}"
    for service in charging_pb2.DESCRIPTOR.services_by_name.values()
    for m in service.methods
    if m.server_streaming
}


async def status_of(
    channel: grpc.aio.Channel, method: str, body: bytes, deadline_s: float
) -> tuple[grpc.StatusCode, str]:
    """The status a call ends with (a stream: OK once it is in place, then cancelled)."""
    if method not in STREAMING:
        try:
            await channel.unary_unary(method)(body, timeout=deadline_s)
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
        return grpc.StatusCode.OK, ""
    call = channel.unary_stream(method)(body, timeout=deadline_s)
    if tuple(await call.initial_metadata()) == READY:
        call.cancel()
        return grpc.StatusCode.OK, ""
    return await call.code(), await call.details() or ""
