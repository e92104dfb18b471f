"""Redis holds the same per postpaid line and billing account after 12 monthly bill runs
as after one (issue 11): usage through the real charging path, the bill run, a payment
of every invoice (dunning stays quiet), the relays drained; then the same keys, lengths
not growing and ``MEMORY USAGE`` within a small tolerance."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta

import redis.asyncio as aioredis

from charging.cdr_relay import drain
from charging.clock import ManualClock
from charging.server import App
from postpaid import keys as bill_keys
from postpaid.billing import Billing
from tests.conftest import LineBook, Stubs, enrol, set_time
from tests.test_bill_run import call
from tests.test_payments import DAY

# Two billing accounts, three lines: C1 pays for two, C2 for one.
LINES = (("1", "491700000901"), ("1", "491700000902"), ("2", "491700000903"))
# MEMORY USAGE of a key after 12 cycles may exceed its size after one by this much: a
# hash's or list's encoding rounds its allocation up, and numbers grow a digit.
TOLERANCE_BYTES = 64
# The keys of the lines (their charging slot, {a:<account>}) and of billing (the shard
# tags {bill.<n>}, the account's keys and the shard's indexes). The others are of no one
# line or account: the notification stream (trimmed to STREAM_MAXLEN), the catalog, the
# identity index.
PER_LINE_OR_ACCOUNT = re.compile(r"^\{(a:|bill\.)")


@dataclass(frozen=True)
class Held:
    """What Redis holds under one key: its type, length (members, fields, entries or
    bytes) and MEMORY USAGE."""

    kind: str
    length: int
    memory: int


def pattern(key: str) -> str:
    """The key with what changes every cycle (invoice numbers, payment references, the
    period) replaced: a key of each cycle shows as one pattern counted several times."""
    key = re.sub(r"INV-\d+", "INV-#", key)
    key = re.sub(r"ref-\d+-\d+", "ref-#", key)
    return re.sub(r"20\d\d-\d\d", "YYYY-MM", key)


async def held(client: aioredis.Redis) -> dict[str, Held]:
    """Every key of lines and accounts Redis holds, but those with a TTL (they expire on
    their own)."""
    found: dict[str, Held] = {}
    async for raw in client.scan_iter(count=1000):
        key = str(raw)
        if not PER_LINE_OR_ACCOUNT.match(key) or await client.ttl(key) >= 0:
            continue
        kind = str(await client.type(key))
        length = {
            "hash": client.hlen,
            "list": client.llen,
            "set": client.scard,
            "zset": client.zcard,
            "stream": client.xlen,
            "string": client.strlen,
        }[kind]
        found[key] = Held(kind, int(await length(key)), int(await client.memory_usage(key, samples=0) or 0))
    return found


async def cycle(stubs: Stubs, b: Billing, app: App, clock: ManualClock, month: int) -> None:
    """One month: calls on every line, the bill run on the cycle day, every invoice paid,
    dunning run, the outboxes relayed."""
    year, mon = 2026 + (month - 1) // 12, (month - 1) % 12 + 1
    set_time(clock, f"{year}-{mon:02d}-12T12:00:00+00:00")
    for n, (_ba, msisdn) in enumerate(LINES):
        for i in range(3):
            assert await call(stubs, msisdn, f"m{month}-{n}-{i}", 60 + 30 * i) == 2001
    year, mon = (year, mon + 1) if mon < 12 else (year + 1, 1)
    set_time(clock, f"{year}-{mon:02d}-11T12:00:00+00:00")
    report = await b.runs.run()
    assert (report.issued, report.failed) == (2, 0)
    for ba in ("C1", "C2"):
        number = (await b.invoices_of(ba))[-1]
        state = await b.invoice_state(number)
        await b.payments.pay(ba, int(state["open"]), "BANK_TRANSFER", f"ref-{month}-{ba[1:]}")
    assert (await b.collection.run()) is not None
    await b.deliver_queued()
    await relay(app)


async def relay(app: App) -> None:
    """What the server's relays do: usage records, credit movements and audit entries to
    PostgreSQL, notifications to their stream."""
    assert app.cdr_relay is not None and app.notifier is not None and app.redis is not None
    await app.cdr_relay.scan()
    await drain(app.cdr_relay)
    async for raw in app.redis.scan_iter(match="*:out*", count=1000):
        await app.notifier.relay_outbox(str(raw), "test")
    for outbox in bill_keys.OUTBOXES:
        await app.notifier.relay_outbox(outbox, "billing")


async def twelve_cycles(
    stubs: Stubs, b: Billing, book: LineBook, clock: ManualClock, app: App
) -> tuple[dict[str, Held], dict[str, Held]]:
    """What Redis held after the first cycle and after the twelfth."""
    assert app.redis is not None
    for ba, msisdn in LINES:
        await enrol(stubs, b, ba, msisdn)
        book.lines[msisdn] = {"state": "active", "order_id": "new"}
    await cycle(stubs, b, app, clock, 1)
    first = await held(app.redis)
    for month in range(2, 13):
        await cycle(stubs, b, app, clock, month)
    last = await held(app.redis)
    assert len(await b.invoices_of("C1")) == 12 and len(await b.invoices_of("C2")) == 12
    return first, last


# A paid invoice's state ({bill.<n>}:is:<number>) leaves Redis once it is delivered and
# its payment's outcome is committed (postpaid/settled.py): none is left of any cycle.
PAID_STATE = re.compile(r":is:INV-#$")


async def test_redis_per_line_and_account_is_the_same_after_12_bill_cycles_as_after_one(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock, app: App
) -> None:
    b, book = postpaid_billing
    first, last = await twelve_cycles(stubs, b, book, clock, app)
    assert [k for k in last if PAID_STATE.search(pattern(k))] == []
    assert_flat(first, last)
    # The payments' records left Redis with their outcome committed: a retry is answered
    # from PostgreSQL, as it was applied, and moves no money again.
    number = (await b.invoices_of("C2"))[-1]
    account = await b.account("C2")
    again = await b.payments.pay("C2", int((await b.invoice(number)).total), "BANK_TRANSFER", "ref-12-2")
    assert again["replayed"] and again["allocations"] == {number: (await b.invoice(number)).total}
    assert await b.account("C2") == account
    # The paid invoice is answered from PostgreSQL.
    state = await b.invoice_state(number)
    assert (state["open"], state["status"], state["settled"]) == ("0", "PAID", "1")


async def test_paid_invoices_leave_redis(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock, app: App
) -> None:
    b, book = postpaid_billing
    assert_flat(*await twelve_cycles(stubs, b, book, clock, app))


async def test_an_account_dunned_every_month_keeps_one_decisions_dunning_steps(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock, app: App
) -> None:
    """C3 pays each month's invoice only once barred for it (a late fee, then restored):
    its set of dunning steps applied (the guard of a decision's re-application) holds the
    last decision's members, not one more per episode."""
    b, book = postpaid_billing
    ba, msisdn = "C3", "491700000904"
    await enrol(stubs, b, "3", msisdn)
    book.lines[msisdn] = {"state": "active", "order_id": "new"}
    steps = bill_keys.billing_dunning_done(ba)
    held_after: list[set[str]] = []
    for month in range(1, 5):
        assert await call(stubs, msisdn, f"d{month}", 60) == 2001
        clock.advance(seconds=31 * DAY)
        await b.runs.run()
        number = (await b.invoices_of(ba))[-1]
        await b.deliver_queued()
        due = (await b.invoice(number)).due
        set_time(clock, f"{due + timedelta(days=21)}T12:00:00+00:00")
        await b.collection.evaluate(ba)
        assert (await b.account(ba))["state"] == "BARRED_OUTGOING"
        assert f"{number}|barring" in await b.client.smembers(steps)
        for open_number in [str(x) for x in await b.client.lrange(bill_keys.billing_open(ba), 0, -1)]:
            amount = int((await b.invoice_state(open_number))["open"])
            await b.payments.pay(ba, amount, "BANK_TRANSFER", f"ref-{month}-{open_number}")
        assert (await b.account(ba))["state"] == "ACTIVE"  # restored by the payment
        held_after.append({str(m) for m in await b.client.smembers(steps)})
    assert len(await b.invoices_of(ba)) >= 4
    # Each episode ends with its restoration's member only: the earlier ones went.
    assert [len(members) for members in held_after] == [1] * len(held_after)
    assert all(next(iter(members)).startswith("restore|") for members in held_after)


def assert_flat(first: dict[str, Held], last: dict[str, Held]) -> None:
    """The same keys after the last cycle as after the first, none longer or larger."""
    # The same keys, by pattern: no key per cycle left behind.
    assert Counter(map(pattern, last)) == Counter(map(pattern, first))
    # Each key no longer and no larger (the patterns' keys compared in order of name).
    by_pattern: dict[str, list[tuple[str, Held]]] = {}
    for key in sorted(first):
        by_pattern.setdefault(pattern(key), []).append((key, first[key]))
    grown: list[str] = []
    for key in sorted(last):
        _key, before = by_pattern[pattern(key)].pop(0)
        after = last[key]
        if after.kind != before.kind or after.length > before.length:
            grown.append(f"{key}: {before} -> {after}")
        elif after.memory > before.memory + TOLERANCE_BYTES:
            grown.append(f"{key}: memory {before.memory} -> {after.memory}")
    assert grown == [], "\n".join(grown)
