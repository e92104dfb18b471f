"""A client cannot flood the logs: library tracebacks become one short line, and repeated
lines of one kind are let through a few per second with a count of those dropped."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import grpc
import pytest

from charging import logs
from charging.logs import RateLimit
from charging.server import App
from tests.conftest import Stubs

BAD_BODY = b"\xff\xff\xff\xff\xff"


def record(msg: str, at: float, name: str = "charging.test") -> logging.LogRecord:
    r = logging.LogRecord(name, logging.WARNING, __file__, 1, msg, None, None)
    r.created = at
    return r


def test_rate_limit_lets_a_burst_through_then_counts_the_rest() -> None:
    limit = RateLimit(burst=5, window_s=1.0)
    passed = [limit.filter(record("same", 100 + i / 100)) for i in range(100)]
    assert passed == [True] * 5 + [False] * 95
    assert limit.filter(record("other kind", 100.5))  # kinds are counted apart
    later = record("same", 101.5)
    assert limit.filter(later)
    assert later.suppressed == 95  # type: ignore[attr-defined]
    again = record("same", 101.6)
    assert limit.filter(again)
    assert not hasattr(again, "suppressed")


def test_rate_limit_forgets_old_kinds_but_not_owed_counts() -> None:
    limit = RateLimit(burst=1, window_s=1.0, max_kinds=3)
    assert limit.filter(record("a", 0.0))
    assert not limit.filter(record("a", 0.1))  # one owed for "a"
    for i, kind in enumerate(("b", "c", "d", "e")):
        assert limit.filter(record(kind, 5.0 + i))
    late = record("a", 9.5)
    assert limit.filter(late)
    assert late.suppressed == 1  # type: ignore[attr-defined]


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    logs.configure("INFO", stream)
    yield stream
    root.handlers[:], level = saved
    root.setLevel(level)


async def test_undecodable_bodies_do_not_flood_the_log(app: App, stubs: Stubs, log_stream: io.StringIO) -> None:
    """500 bad bodies to our TopUp service and 500 to grpc's own health service (which
    logs a traceback each): a few one-line records, and the count of the others."""
    ours = stubs.channel.unary_unary("/charging.v1.TopUp/Recharge")
    health = stubs.channel.unary_unary("/grpc.health.v1.Health/Check")
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(500):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ours(BAD_BODY)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == "request: not a valid charging.v1.RechargeRequest message"
        with pytest.raises(grpc.aio.AioRpcError):
            await health(BAD_BODY)
    elapsed = loop.time() - started
    await asyncio.sleep(1.1)
    with pytest.raises(grpc.aio.AioRpcError):
        await health(BAD_BODY)  # the first of its kind in a new second: it reports the dropped ones

    lines = log_stream.getvalue().splitlines()
    assert all(len(line) < 300 for line in lines), max(lines, key=len)
    grpc_records = [json.loads(line) for line in lines if '"logger": "grpc' in line]
    assert grpc_records, "the grpc library logs a bad body sent to its health service"
    assert len(grpc_records) <= 5 * (int(elapsed) + 2)
    assert sum(1 + r.get("suppressed", 0) for r in grpc_records) == 501
    assert all("\n" not in r["msg"] and "exc" not in r for r in grpc_records)
    assert "DecodeError" in grpc_records[0]["error"]
