"""Callers who give up, as a process of their own: ``python -m tests.door_callers PORT``
sends, through the door on PORT, watches it cancels at once and unary calls with deadlines
of 1 to 40 ms (a third of them also cancelled), many at once, and prints one JSON object:
how many calls ended with each status code.

A process of its own, not the test's: gRPC's asyncio poller is shared by every event loop a
process has had (pytest-asyncio gives each test one), and a burst of this size on a test
worker that has run hundreds of tests is the library's weak spot, not the door's; here the
callers have one loop and nothing else, as a gateway would."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import sys

import grpc

from charging.v1 import charging_pb2, charging_pb2_grpc, common_pb2, topup_pb2, topup_pb2_grpc
from tests.conftest import sms_request

WATCHES = 150
HURRIED = 600
AT_ONCE = 16


async def give_up(port: int) -> dict[str, int]:
    ended: collections.Counter[str] = collections.Counter()

    async def ending(call: grpc.aio.Call) -> None:  # type: ignore[type-arg]
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            await call  # type: ignore[misc]
        ended[(await call.code()).name] += 1

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        charging = charging_pb2_grpc.ChargingStub(channel)
        topup = topup_pb2_grpc.TopUpStub(channel)
        balance = topup_pb2.BalanceRequest(subscriber=common_pb2.SubscriberId(msisdn="491700000001"))
        at_once = asyncio.Semaphore(AT_ONCE)

        async def watch_and_cancel(n: int) -> None:
            watch = charging.WatchSessions(charging_pb2.WatchRequest(), timeout=10)
            await asyncio.sleep((n % 7) * 0.001)
            watch.cancel()
            ended[(await watch.code()).name] += 1

        async def hurried(n: int) -> None:
            deadline_s = 0.001 * (n % 20 + 1)  # many end while the worker's answer is on its way
            async with at_once:
                await ending(topup.GetBalance(balance, timeout=deadline_s))
                call = charging.ChargeEvent(sms_request(f"hurried-{n}"), timeout=deadline_s * 2)
                if n % 3 == 0:
                    await asyncio.sleep(0.001 * (n % 10))
                    call.cancel()
                await ending(call)

        await asyncio.gather(*(watch_and_cancel(n) for n in range(WATCHES)), *(hurried(n) for n in range(HURRIED)))
    return dict(ended)


if __name__ == "__main__":
    print(json.dumps(asyncio.run(give_up(int(sys.argv[1])))))
