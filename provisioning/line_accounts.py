"""The charging account behind a new line: made once per order, also across a crash.

An order run asks charging's directory (``charging.subscribers``) for a new account for
the line, barred until the network acknowledges the line. The run records the account's
id on the order's work once it has it; a crash before that would leave an account made
for the line but known to nobody, and the next run's ``create`` would find the number
taken. So before its first try, a run notes the newest account id charging had given
out, and a run that finds the number taken adopts the account holding it if that
account is newer than the note, was made for exactly this line (number, SIM, plan) and
no other order's line uses it. Everything is done through charging's own functions:
provisioning never names charging's keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from charging.catalog import Plan
from charging.errors import Conflict, InvalidRequest
from charging.subscribers import Directory, Identity
from provisioning.lifecycle import CHARGING_STATUS, LineState
from provisioning.lines import Lines
from provisioning.orders import Orders
from provisioning.runs import OrderRun, Rejected


@dataclass
class LineAccounts:
    directory: Directory
    orders: Orders
    lines: Lines

    async def open(
        self,
        run: OrderRun,
        msisdn: Identity,
        imsi: Identity | None,
        plan: Plan,
        initial_balance: int,
        credit_limit: int | None,
    ) -> str:
        """The line's charging account (barred while the line is pending), with the
        customer's credit limit when postpaid; returns its id."""
        account_id = await self._account(run, msisdn, imsi, plan, initial_balance)
        if credit_limit is not None:
            await self.directory.set_credit_limit(account_id, credit_limit)
        return account_id

    async def _account(
        self, run: OrderRun, msisdn: Identity, imsi: Identity | None, plan: Plan, initial_balance: int
    ) -> str:
        """Created once per order."""
        work = await self.orders.work(run.id)
        if work.get("account_id"):
            return work["account_id"]
        newest = str(await self.directory.newest_account_id())
        seq = await self.orders.note(run.id, "account_seq", newest, keep=True)
        if plan.customer_type.value.endswith("POSTPAID"):
            initial_balance = 0  # a postpaid line spends credit headroom, not money paid in advance
        try:
            account = await self.directory.create(
                msisdn, imsi, plan, initial_balance, status=CHARGING_STATUS[LineState.PENDING_ACTIVATION]
            )
            account_id = account.account_id
        except InvalidRequest as exc:
            run.problems((exc.field, exc.message))
            raise Rejected("line", "the order has invalid fields") from None
        except Conflict as exc:
            found = await self._left_behind(run, msisdn, imsi, plan, int(seq))
            if found is None:
                raise Rejected("line", str(exc)) from None
            account_id = found
        return await self.orders.note(run.id, "account_id", account_id)

    async def _left_behind(
        self, run: OrderRun, msisdn: Identity, imsi: Identity | None, plan: Plan, seq: int
    ) -> str | None:
        """The account an interrupted run of this order created but did not record."""
        account_id = await self.directory.orphan(msisdn, imsi, plan.id, newer_than=seq)
        if account_id is None:
            return None
        line = await self.lines.get(msisdn.value)
        if line is not None and line.account_id == account_id and line.order_id != run.id:
            return None
        try:
            await self.directory.adopt(account_id, msisdn, imsi)
        except Conflict as exc:
            raise Rejected("line", str(exc)) from None
        return account_id
