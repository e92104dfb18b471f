"""ChargeStream and ChargeBatches: many sessions and events over one bidirectional stream,
one request per message or several, each answered by correlation id exactly as its unary
RPC answers it (a real server, a real client)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from charging.admission import Admission
from charging.v1 import charging_pb2
from tests.conftest import INITIAL, TERMINATE, UPDATE, Stubs, session_request, sms_request

SUBSCRIBERS = 4


def message_of(
    request: charging_pb2.SessionRequest | charging_pb2.EventRequest | None, correlation_id: int
) -> charging_pb2.ChargeMessage:
    message = charging_pb2.ChargeMessage(correlation_id=correlation_id)
    if isinstance(request, charging_pb2.SessionRequest):
        message.session.CopyFrom(request)
    elif isinstance(request, charging_pb2.EventRequest):
        message.event.CopyFrom(request)
    return message


class Stream:
    """One ChargeStream call (``batched``: one ChargeBatches call, each exchange's requests
    in one message): write requests, collect replies by correlation id."""

    def __init__(self, stubs: Stubs, batched: bool = False) -> None:
        self.batched = batched
        self.call = stubs.charging.ChargeBatches() if batched else stubs.charging.ChargeStream()
        self.next_id = 1
        self.reply_messages = 0  # stream messages that carried the replies

    async def exchange(
        self, requests: list[charging_pb2.SessionRequest | charging_pb2.EventRequest | None]
    ) -> list[charging_pb2.ChargeReply]:
        """Send every request (None: a message with neither), then read as many replies;
        the replies in the order of the requests."""
        ids = list(range(self.next_id, self.next_id + len(requests)))
        self.next_id += len(requests)
        messages = [message_of(request, i) for request, i in zip(requests, ids, strict=True)]
        if self.batched:
            await self.call.write(charging_pb2.ChargeBatch(messages=messages))
        else:
            for message in messages:
                await self.call.write(message)
        replies: dict[int, charging_pb2.ChargeReply] = {}
        while len(replies) < len(requests):
            read = await self.call.read()
            self.reply_messages += 1
            got = list(read.replies) if self.batched else [read]
            for reply in got:
                assert isinstance(reply, charging_pb2.ChargeReply)
                assert reply.correlation_id not in replies
                replies[reply.correlation_id] = reply
        assert sorted(replies) == ids
        return [replies[i] for i in ids]

    async def close(self) -> None:
        """Half-close, then the server ends the call with OK and nothing more."""
        await self.call.done_writing()
        assert await self.call.read() == grpc.aio.EOF
        assert await self.call.code() == grpc.StatusCode.OK


SHAPES = pytest.mark.parametrize("batched", [False, True], ids=["ChargeStream", "ChargeBatches"])


def msisdn(i: int, twin: bool) -> str:
    return f"4917{'9' if twin else '8'}000000{i}"


def rounds(twin: bool) -> list[list[charging_pb2.SessionRequest | charging_pb2.EventRequest]]:
    """Every subscriber's voice session (INITIAL, UPDATE, TERMINATE) and data session, with
    SMS events between: all subscribers' requests of one step interleaved."""
    steps: list[list[charging_pb2.SessionRequest | charging_pb2.EventRequest]] = [[], [], []]
    for i in range(SUBSCRIBERS):
        m = msisdn(i, twin)
        steps[0] += [
            session_request(f"voice-{i}", INITIAL, 0, [{"rating_group": 10, "requested": {}}], msisdn=m),
            session_request(f"data-{i}", INITIAL, 0, [{"rating_group": 30, "requested": {}}], msisdn=m),
            sms_request(f"sms-{i}-a", msisdn=m),
        ]
        steps[1] += [
            session_request(
                f"voice-{i}", UPDATE, 1, [{"rating_group": 10, "requested": {}, "used": {"time_s": 61 + i}}], msisdn=m
            ),
            sms_request(f"sms-{i}-b", msisdn=m),
            session_request(
                f"data-{i}",
                UPDATE,
                1,
                [{"rating_group": 30, "requested": {}, "used": {"total_octets": 5000 * (i + 1)}}],
                msisdn=m,
            ),
        ]
        steps[2] += [
            session_request(f"data-{i}", TERMINATE, 2, [{"rating_group": 30, "used": {"total_octets": 999}}], msisdn=m),
            session_request(f"voice-{i}", TERMINATE, 2, [{"rating_group": 10, "used": {"time_s": 30}}], msisdn=m),
        ]
    return steps


def comparable(
    answer: charging_pb2.SessionAnswer | charging_pb2.EventAnswer,
) -> charging_pb2.SessionAnswer | charging_pb2.EventAnswer:
    """The answer without what names the subscriber (the twins differ only there)."""
    out = type(answer)()
    out.CopyFrom(answer)
    out.ClearField("refund_information")
    return out


@SHAPES
async def test_interleaved_sessions_and_events_answer_as_the_unary_calls_do(stubs: Stubs, batched: bool) -> None:
    for i in range(SUBSCRIBERS):
        await stubs.subscriber(msisdn=msisdn(i, False), balance=2_000_000)
        await stubs.subscriber(msisdn=msisdn(i, True), balance=2_000_000)
    stream = Stream(stubs, batched)
    for streamed_step, unary_step in zip(rounds(twin=False), rounds(twin=True), strict=True):
        replies = await stream.exchange(list(streamed_step))
        for reply, request in zip(replies, unary_step, strict=True):
            if isinstance(request, charging_pb2.SessionRequest):
                assert reply.WhichOneof("answer") == "session"
                unary: charging_pb2.SessionAnswer | charging_pb2.EventAnswer = await stubs.charging.ChargeSession(
                    request
                )
                assert comparable(reply.session) == comparable(unary)
                assert reply.session.result_code == 2001
            else:
                assert reply.WhichOneof("answer") == "event"
                unary = await stubs.charging.ChargeEvent(request)
                assert comparable(reply.event) == comparable(unary)
                assert reply.event.result_code == 2001
    await stream.close()
    for i in range(SUBSCRIBERS):
        streamed, twin = await stubs.balance(msisdn(i, False)), await stubs.balance(msisdn(i, True))
        assert streamed.balance_micros == twin.balance_micros < 2_000_000
        assert streamed.reserved_micros == twin.reserved_micros == 0


@SHAPES
async def test_a_bad_message_gets_an_error_for_its_id_and_the_stream_goes_on(stubs: Stubs, batched: bool) -> None:
    await stubs.subscriber(balance=1_000_000)
    bad_action = sms_request("sms-x")
    bad_action.action = 99  # type: ignore[assignment]
    bad_value = session_request("s2", INITIAL, 0, [{"rating_group": 10, "requested": {}}], called_party="12ab")
    stream = Stream(stubs, batched)
    replies = await stream.exchange(
        [
            session_request("s1", INITIAL, 0, [{"rating_group": 10, "requested": {}}]),
            session_request("", INITIAL, 0, [{"rating_group": 10, "requested": {}}]),
            None,
            bad_action,
            bad_value,
            sms_request("sms-1"),
        ]
    )
    assert replies[0].session.result_code == 2001
    for reply, field in zip(replies[1:4], ("session_id", "request", "action"), strict=True):
        assert reply.WhichOneof("answer") == "error"
        assert reply.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert field in reply.error.message
    # A bad value is answered the Diameter way, inside the answer, as the unary call does.
    assert (replies[4].session.result_code, replies[4].session.failed_field) == (5004, "called_party")
    assert replies[5].event.result_code == 2001
    # The stream still works after the errors.
    [after] = await stream.exchange(
        [session_request("s1", TERMINATE, 1, [{"rating_group": 10, "used": {"time_s": 60}}])]
    )
    assert after.session.result_code == 2001
    await stream.close()
    b = await stubs.balance()
    assert (b.balance_micros, b.reserved_micros) == (1_000_000 - 100_000 - 50_000, 0)


@SHAPES
async def test_a_retransmission_in_the_stream_is_charged_once(stubs: Stubs, batched: bool) -> None:
    await stubs.subscriber(balance=1_000_000)
    stream = Stream(stubs, batched)
    await stream.exchange([session_request("s1", INITIAL, 0, [{"rating_group": 10, "requested": {}}])])
    update = session_request("s1", UPDATE, 1, [{"rating_group": 10, "requested": {}, "used": {"time_s": 120}}])
    first, copy = await stream.exchange([update, update])
    assert first.session == copy.session
    assert first.session.rating_groups[0].cost_micros == 200_000
    [again] = await stream.exchange([update])
    assert again.session == first.session
    await stream.exchange([session_request("s1", TERMINATE, 2, [{"rating_group": 10}])])
    await stream.close()
    b = await stubs.balance()
    assert (b.balance_micros, b.reserved_micros) == (800_000, 0)


async def test_the_stream_ends_after_the_last_answer(stubs: Stubs) -> None:
    await stubs.subscriber(balance=1_000_000)

    async def messages() -> AsyncIterator[charging_pb2.ChargeMessage]:
        for n in range(20):
            yield charging_pb2.ChargeMessage(correlation_id=n, event=sms_request(f"sms-{n}"))

    call = stubs.charging.ChargeStream(messages())
    replies = [reply async for reply in call]
    assert sorted(r.correlation_id for r in replies) == list(range(20))
    assert all(r.event.result_code == 2001 for r in replies)
    assert await call.code() == grpc.StatusCode.OK
    b = await stubs.balance()
    assert b.balance_micros == 1_000_000 - 20 * 50_000


@pytest.mark.parametrize("limit", [1, 2, 3])
async def test_each_answers_in_any_order_at_most_limit_at_once(limit: int) -> None:
    admission = Admission(limit)
    release = {n: asyncio.Event() for n in range(6)}
    read: list[int] = []
    started: list[int] = []

    async def requests() -> AsyncIterator[int]:
        for n in range(6):
            read.append(n)
            yield n

    async def answer(n: int) -> int:
        started.append(n)
        await release[n].wait()
        return n

    replies = admission.each(requests(), answer)
    first = asyncio.ensure_future(replies.__anext__())
    for _ in range(20):
        await asyncio.sleep(0)  # let the reader run as far as the bound allows
    assert started == list(range(limit))
    assert admission.in_flight == limit
    assert len(read) <= limit + 1
    # The last one started answers first; its reply comes out first.
    release[limit - 1].set()
    assert await first == limit - 1
    for n in range(6):
        release[n].set()
    rest = [reply async for reply in replies]
    assert sorted([limit - 1, *rest]) == list(range(6))
    assert admission.in_flight == 0


async def test_replies_ready_together_go_back_in_one_message(stubs: Stubs) -> None:
    """A batch of 20 CHECK_BALANCE events is one Redis write, its replies one read: the
    server answers them in fewer than 20 messages (each reply still on its own id)."""
    await stubs.subscriber(balance=1_000_000)
    check = sms_request("sms-check")
    check.action = charging_pb2.REQUESTED_ACTION_CHECK_BALANCE
    stream = Stream(stubs, batched=True)
    replies = await stream.exchange([check] * 20)
    assert all(r.event.check_balance_result == charging_pb2.CHECK_BALANCE_RESULT_ENOUGH_CREDIT for r in replies)
    assert stream.reply_messages < 20
    await stream.close()


async def test_the_batches_stream_ends_after_the_last_answer(stubs: Stubs) -> None:
    await stubs.subscriber(balance=1_000_000)

    async def batches() -> AsyncIterator[charging_pb2.ChargeBatch]:
        for b in range(4):
            yield charging_pb2.ChargeBatch(
                messages=[message_of(sms_request(f"sms-{b}-{n}"), b * 5 + n) for n in range(5)]
            )
        yield charging_pb2.ChargeBatch()  # an empty batch: nothing to answer

    call = stubs.charging.ChargeBatches(batches())
    replies = [reply async for message in call for reply in message.replies]
    assert sorted(r.correlation_id for r in replies) == list(range(20))
    assert all(r.event.result_code == 2001 for r in replies)
    assert await call.code() == grpc.StatusCode.OK
    b = await stubs.balance()
    assert b.balance_micros == 1_000_000 - 20 * 50_000


async def test_a_batch_larger_than_the_bound_is_read_as_slots_free() -> None:
    """Two slots, one message of five requests: two are started, the rest of the message
    waits for replies to be handed on; every reply comes out, none is lost."""
    admission = Admission(2)
    release = {n: asyncio.Event() for n in range(5)}
    started: list[int] = []

    async def messages() -> AsyncIterator[list[int]]:
        yield [0, 1, 2, 3, 4]

    async def answer(n: int) -> int:
        started.append(n)
        await release[n].wait()
        return n

    replies = admission.grouped(messages(), list, answer)
    first = asyncio.ensure_future(replies.__anext__())
    for _ in range(20):
        await asyncio.sleep(0)
    assert started == [0, 1] and admission.in_flight == 2
    release[1].set()
    assert await first == [1]
    for _ in range(20):
        await asyncio.sleep(0)
    assert started == [0, 1]  # handed on, but the slot comes back when the next is asked for
    second = asyncio.ensure_future(replies.__anext__())
    for _ in range(20):
        await asyncio.sleep(0)
    assert started == [0, 1, 2]
    for event in release.values():
        event.set()
    rest = [*await second, *[n async for group in replies for n in group]]
    assert sorted([1, *rest]) == list(range(5))
    assert admission.in_flight == 0


def framed(entries: list[bytes]) -> bytes:
    """A ChargeBatch of these raw entries (field 1, length-delimited, each under 128 bytes)."""
    return b"".join(bytes([1 << 3 | 2, len(entry)]) + entry for entry in entries)


@SHAPES
async def test_a_message_that_does_not_decode_is_answered_under_its_id(stubs: Stubs, batched: bool) -> None:
    """A message whose body does not decode is answered INVALID_ARGUMENT under its own
    correlation id when the id can be read (else 0), and costs no other message: in a
    batch, the good requests beside it are charged and answered."""
    await stubs.subscriber(balance=1_000_000)
    good = message_of(sms_request("sms-good"), 5).SerializeToString()
    not_utf8 = bytes([0x08, 6, 0x12, 4, 0x0A, 2, 0xC3, 0x28])  # id 6; a session_id that is not UTF-8
    cut_short = bytes([0x08])  # even the id is cut short
    entries = [good, not_utf8, cut_short]
    path = "/charging.v1.Charging/" + ("ChargeBatches" if batched else "ChargeStream")
    call = stubs.channel.stream_stream(path)(iter([framed(entries)] if batched else entries), timeout=20)
    if batched:
        replies = [r async for raw in call for r in charging_pb2.ChargeReplies.FromString(raw).replies]
    else:
        replies = [charging_pb2.ChargeReply.FromString(raw) async for raw in call]
    assert await call.code() == grpc.StatusCode.OK
    by_id = {r.correlation_id: r for r in replies}
    assert sorted(by_id) == [0, 5, 6]
    assert by_id[5].event.result_code == 2001
    for bad in (by_id[6], by_id[0]):
        assert bad.WhichOneof("answer") == "error"
        assert bad.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "ChargeMessage" in bad.error.message
    b = await stubs.balance()
    assert b.balance_micros == 1_000_000 - 50_000


async def test_a_batch_whose_framing_is_broken_is_one_error_with_id_0(stubs: Stubs) -> None:
    call = stubs.channel.stream_stream("/charging.v1.Charging/ChargeBatches")(iter([b"\x0a\x09ab"]), timeout=20)
    [raw] = [raw async for raw in call]
    [reply] = charging_pb2.ChargeReplies.FromString(raw).replies
    assert (reply.correlation_id, reply.error.code) == (0, grpc.StatusCode.INVALID_ARGUMENT.value[0])
    assert "ChargeBatch" in reply.error.message


async def test_an_answer_that_raises_ends_the_stream_rather_than_hanging_it() -> None:
    """A CancelledError out of an answer (from something it awaited, not the stream being
    closed) ends the stream with it; it neither loses its slot nor leaves the stream
    waiting for a reply that will never come."""
    admission = Admission(1)

    async def messages() -> AsyncIterator[list[int]]:
        yield [1]
        yield [2]

    async def answer(n: int) -> int:
        if n == 1:
            raise asyncio.CancelledError
        return n

    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(5):  # a hang fails as TimeoutError
            [n async for group in admission.grouped(messages(), list, answer) for n in group]
    assert admission.in_flight == 0
