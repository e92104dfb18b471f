"""A payment or credit note recorded by a process of its own that kills itself (SIGKILL)
at a chosen point, for the crash tests:
``python -m tests.payment_process REDIS_URL DATABASE_URL KIND BA INVOICE POINT``.

KIND ``payment`` pays 1000 on BA (channel BANK_TRANSFER, reference ``crash-1``);
``credit_note`` credits 400 of INVOICE (key ``crash-cn``); ``refund`` refunds 200 of
BA's credit (reference ``crash-r``); ``adjustment`` charges 250 on BA's next invoice
(id ``crash-adj``); ``dispute`` opens dispute ``crash-d`` on 500 of INVOICE; ``accept``
accepts it (opened before by the test). The points:
  after_commit   the movement and its pending application are committed; Redis has not
                 heard of it
  after_redis    Redis applied it; its outcome row is not written
  none           no crash: both complete
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

from charging.clock import ManualClock
from charging.database import open_pool
from postpaid import config as billing_config
from postpaid.disputes import Disputes
from postpaid.invoice_book import InvoiceBook
from postpaid.payments import Payments
from postpaid.receivables import Movement
from postpaid.scripts import PayArgs
from tests.conftest import SEALER, async_redis_client


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class CrashingDisputes(Disputes):
    point = "none"
    op = ""  # the dispute script's operation it dies before

    async def apply(self, application_id: str, ba: str, payload: dict[str, Any]) -> None:
        if self.point == "after_commit" and payload["op"] == self.op:
            die()
        await super().apply(application_id, ba, payload)


class Crashing(Payments):
    point = "none"

    async def apply(self, movement: Movement) -> dict[str, Any]:
        if self.point == "after_commit":
            die()
        return await super().apply(movement)

    async def _decide(self, record_key: str, ba: str, args: PayArgs) -> list[Any]:
        reply = await super()._decide(record_key, ba, args)
        if self.point == "after_redis" and not args.check:
            die()
        return reply


async def main(redis_url: str, database_url: str, kind: str, ba: str, invoice: str, point: str) -> None:
    client = await async_redis_client(redis_url)
    pool = await open_pool(database_url, 2)
    config = billing_config.default()
    payments = Crashing(
        client, config, ManualClock(), InvoiceBook(pool, config.issuer.id, config.issuer.number_prefix, SEALER)
    )
    payments.point = point
    payments.disputes = CrashingDisputes(payments)
    payments.disputes.point = point
    payments.disputes.op = "ACCEPT" if kind == "accept" else "OPEN"
    if kind == "payment":
        await payments.pay(ba, 1000, "BANK_TRANSFER", "crash-1")
    elif kind == "refund":
        await payments.refund(ba, 200, "crash-r", "asked")
    elif kind == "dispute":
        await payments.open_dispute("crash-d", invoice, 500, "never called", "agent-3")
    elif kind == "accept":
        payments.point = "none"  # the crash is the dispute's
        await payments.resolve_dispute("crash-d", True, "agreed", "agent-3")
    elif kind == "adjustment":
        await payments.adjust("crash-adj", ba, 250, "late fee by hand", "agent-7")
    else:
        await payments.credit_note(invoice, 400, "goodwill", "crash-cn")
    await pool.close()
    await client.aclose()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:7]))
