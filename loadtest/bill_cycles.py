"""Redis memory per postpaid line after one monthly bill cycle and after twelve (part of
``loadtest/bill_bench.py``; ``tests/test_bill_cycles_memory.py`` checks it key by key).

Lines are written as ``bill_bench.populate`` writes them; each month gets usage in the
form the charging scripts record it, then the bill run on the period's end, a payment of
every open amount (``Payments.pay``: PostgreSQL first, then ``pay.lua``), the delivery pass
and the relay of the credit outboxes to PostgreSQL, as the server's jobs do. The figure is ``MEMORY
USAGE`` summed over every key of the lines' slots and the billing shards, per line."""

from __future__ import annotations

import random

import redis

from charging import keys
from charging.catalogs import CatalogBook
from charging.cdr_relay import CdrRelay, drain
from charging.cdr_store import CdrStore
from charging.clock import ManualClock
from charging.database import open_pool
from loadtest.scale_load import Router
from postpaid import config as billing_config
from postpaid import keys as bill_keys
from postpaid import periods
from postpaid.billing import Billing
from postpaid.credit_movements import credit_rows

CYCLES = 12


def usage(router: Router, lines: int, records: int, period: periods.Period, seed: int) -> None:
    """A month of usage on every line (aggregates and itemised records) in ``period``."""
    from loadtest.bill_bench import CALLS  # the bench's call mix

    rnd = random.Random(seed)
    start_s = period.end_s - 28 * 86_400
    for n in range(1, lines + 1):
        acct = str(n)
        agg: dict[str, list[int]] = {}
        items = []
        for i in range(records):
            service, zone, band, roam, dest, units, cost = CALLS[rnd.randrange(len(CALLS))]
            field = f"{period.id}|{service}|{zone}|{band}|{roam}"
            a = agg.setdefault(field, [0, 0, 0])
            a[0], a[1], a[2] = a[0] + units, a[1] + cost, a[2] + 1
            at_ms = (start_s + 3600 + i * 60) * 1000
            items.append(f"{period.id},{at_ms},{service},{zone},{band},{roam},{dest},{units},{cost},s{seed}-{n}-{i}")
        client = router.clients[router.port_of(keys.account(acct))]
        pipe = client.pipeline(transaction=False)
        pipe.hincrby(keys.account(acct), "balance", -sum(a[1] for a in agg.values()))
        pipe.hset(keys.usage(acct), mapping={f: f"{a[0]},{a[1]},{a[2]}" for f, a in agg.items()})
        pipe.rpush(keys.usage_records(acct), *items)
        pipe.execute()


def held(ports: list[int]) -> int:
    """MEMORY USAGE summed over the keys of the lines' slots and the billing shards."""
    total = 0
    for port in ports:
        r = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
        for key in r.scan_iter(count=1000):
            if key.startswith(("{a:", "{bill.")):
                total += int(r.memory_usage(key, samples=0) or 0)
        r.close()
    return total


async def cycle(redis_url: str, url: str, period: periods.Period, month: int) -> None:
    """Bill the period, pay every open amount, run delivery, relay the credit outboxes."""
    from loadtest.bill_bench import SEALER, redis_client

    client = await redis_client(redis_url)
    catalogs = CatalogBook(client)
    await catalogs.start("", prefer_file=False)
    clock = ManualClock((period.end_s + 86_400) * 1000)
    config = billing_config.default()
    pool = await open_pool(url, 3)
    billing = Billing(client, config, catalogs, clock, database=pool, sealer=SEALER)
    report = await billing.runs.run()
    if report.failed or report.issued != report.accounts:
        raise RuntimeError(f"bill run of {period.id}: {report.as_dict()}")
    async for key in client.scan_iter(match="{bill.*}:ba:*:open", count=1000):
        ba = bill_keys.billing_account_of(str(key)[: -len(":open")])
        assert ba is not None
        due = 0
        for number in await client.lrange(key, 0, -1):
            due += int(await client.hget(bill_keys.invoice_state(ba, str(number)), "open") or 0)
        if due > 0:
            await billing.payments.pay(ba, due, "BANK_TRANSFER", f"m{month}-{ba}")
    await billing.deliver_queued()  # no channel here: the queue is emptied, the invoices stay PENDING
    relay = CdrRelay(client, CdrStore(pool), clock, kept=credit_rows())
    await relay.scan()
    await drain(relay)
    await pool.close()
    await client.aclose()


async def per_line(redis_url: str, url: str, router: Router, ports: list[int], lines: int, tz: str) -> tuple[int, int]:
    """Bytes of Redis per line after the first cycle and after the twelfth (the lines
    populated already, with the first month's usage)."""
    from loadtest.bill_bench import PERIOD_START

    period = periods.period_at(1, tz, PERIOD_START)
    after: list[int] = []
    for month in range(1, CYCLES + 1):
        if month > 1:
            usage(router, lines, 40, period, month)
        await cycle(redis_url, url, period, month)
        after.append(held(ports))
        period = periods.following(period, tz)
    return after[0] // lines, after[-1] // lines
