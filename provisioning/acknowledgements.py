"""Acting on the network's acknowledgements: charging, the line, the order, billing.

The provisioning worker records each acknowledgement as soon as it arrives and then
calls ``acknowledged``, again with backoff until it succeeds, so everything here may run
more than once for the same acknowledgement. Only an acknowledgement changes what
charging allows (``lifecycle.CHARGING_STATUS``): an active line everything, a
barred-outgoing one incoming and emergency, a suspended one emergency only. A first
activation counts as a gross addition, a termination as a disconnection and puts the
number in quarantine; the line's order completes, and postpaid billing hears of the
change with who pays for the line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from charging.catalogs import CatalogBook
from charging.clock import Clock
from charging.subscribers import Directory, Identity
from provisioning.base import CustomerBase
from provisioning.customers import Customer, Customers
from provisioning.lifecycle import CHARGING_STATUS, LineState, TerminationReason
from provisioning.lines import Line, Lines
from provisioning.order_records import OrderRecord, Record, line_change
from provisioning.order_store import OrderStore
from provisioning.orders import Order, Orders, Step
from provisioning.organisation import Organisation, paying_unit, unit_path
from provisioning.quarantine import Quarantine


class LineBilling(Protocol):
    async def line_changed(
        self,
        *,
        line: Line,
        state: str,
        plan_id: str,
        customer: Customer,
        paying_unit: str,
        unit_path: tuple[str, ...],
        label: str,
    ) -> None: ...

    async def credit_changed(self, account_ids: Sequence[str], credit_limit_micros: int) -> None: ...


@dataclass
class Acknowledgements:
    directory: Directory
    catalogs: CatalogBook
    clock: Clock
    orders: Orders
    customers: Customers
    organisation: Organisation
    lines: Lines
    quarantine: Quarantine
    base: CustomerBase | None
    # Postpaid billing (postpaid/billing.py): told about every acknowledged line change.
    billing: LineBilling | None = None
    # Orders and lines' history in PostgreSQL (order_store.py); None: Redis only.
    store: OrderStore | None = None

    async def acknowledged(self, msisdn: str, state: str, product: str = "") -> None:
        """The network acknowledged a line's state and product: charging, the line and
        the order follow."""
        if state not in {s.value for s in LineState}:
            return
        line_state = LineState(state)
        line = await self.lines.get(msisdn)
        if line is None:
            return
        now_ms = self.clock.now_ms()
        now_s = now_ms // 1000
        order = await self.orders.get(line.order_id) if line.order_id else None
        completed = None
        if order is not None and order.status == "IN_PROGRESS":
            acknowledged = Step("provisioning", "acknowledged", (f"network state {state}",), now_s)
            completed = replace(order, status="COMPLETED").with_step(acknowledged)
        changed = await self._record(line, line_state, product, completed, now_ms)
        identity = Identity("msisdn", msisdn)
        await self.directory.set_status(identity, CHARGING_STATUS[line_state])
        new_plan = None
        plan = self.catalogs.current.plans.get(product)
        if plan is not None and product != line.plan_id:
            await self.directory.set_plan(identity, plan)
            new_plan = plan.id
        kind = line.customer_type
        if line_state is LineState.TERMINATED and line.state is not LineState.TERMINATED:
            reason = TerminationReason(line.termination_reason or "DISSATISFIED")
            await self.quarantine.start(msisdn, reason, now_s)
            if self.base is not None:
                await self.base.disconnected(kind, reason.value, now_s)
        if line_state is LineState.ACTIVE and line.state is LineState.PENDING_ACTIVATION and self.base:
            await self.base.added(kind, now_s)
        await self.lines.acknowledged(msisdn, line_state, new_plan, changed=changed)
        await self.customers.refresh_state(line.customer_id)
        if self.billing is not None:
            await self._tell_billing(line, line_state.value, new_plan or line.plan_id)
        if completed is not None and self.store is not None:
            await self.orders.drop(completed.crm_order_id)  # its rows (written first) answer now
        elif completed is not None:
            await self.orders.save(completed)

    async def _record(self, line: Line, state: LineState, product: str, completed: Order | None, now_ms: int) -> bool:
        """The rows first (PostgreSQL): the line's new state or plan in its history, the
        order completed; a retry after a crash writes the same rows, kept once (the line's
        count of changes, which numbers the row, is raised only after). Whether the line
        changed."""
        plan = product if product in self.catalogs.current.plans else line.plan_id
        changed = (state, plan) != (line.state, line.plan_id)
        if self.store is None:
            return changed
        records: list[Record] = []
        if changed:
            records.append(line_change(line, "acknowledged", now_ms, state=state.value, plan_id=plan))
        if completed is not None:
            records.append(OrderRecord(completed, now_ms))
        if records:
            await self.store.write(records)
        return changed

    async def _tell_billing(self, line: Line, state: str, plan_id: str) -> None:
        """Postpaid billing hears of every acknowledged change, with who pays for the line."""
        assert self.billing is not None
        customer_id = line.customer_id
        # (a customer gone meanwhile is enrolled without credit terms or email)
        customer = await self.customers.get(customer_id) or Customer(customer_id, kind="", created=0)
        paying, label = "", f"Customer {customer_id}"
        path: tuple[str, ...] = ()
        if line.unit_id:
            units = await self.organisation.units(customer_id)
            if line.unit_id in units:
                paying = paying_unit(units, line.unit_id)
                path = unit_path(units, line.unit_id)
                label = path[0]
        await self.billing.line_changed(
            line=line,
            state=state,
            plan_id=plan_id,
            customer=customer,
            paying_unit=paying,
            unit_path=path,
            label=label,
        )
