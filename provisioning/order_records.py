"""Orders and lines' history as rows: what each row is, and the record outbox's entries
that carry them. Pure.

An order becomes rows when it is decided (``orders.Orders.finish``): the order, every
step it took with its outcome and reasons, and its status; and again when the network
acknowledges it (COMPLETED, with the acknowledgement's step). A line's history is a row
per state (and plan) it took: ``ordered`` when its order created it (pending
activation), ``acknowledged`` when the network acknowledged a state or a plan, ``found``
for the state a line had when an installation moved to these tables.

What is decided inside a Redis transaction reaches the tables through the record outbox
``{crm}:orders:rows`` (``keys.ORDER_ROWS``), pushed in that transaction: one entry per
record, ``["p", time (ms), "order" | "line", the record as JSON]``; the usage records'
relay moves them (``charging/cdr_relay.py``, ``order_store.py``). Every row's key comes
from the record itself (the order id with a step's position or the status; a line
change's id names the line, its order, state and plan and the line's count of changes
before it), so the same record written by
the relay, by the order run at once, again after a crash or by the legacy move is one
row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from charging.cdrs import BadRecord
from provisioning.lifecycle import LineState
from provisioning.lines import Line
from provisioning.orders import Order, row_entry

LAYOUT = "p"
CAUSES = ("ordered", "acknowledged", "found")


@dataclass(frozen=True)
class OrderRecord:
    """An order as it stood when it reached its status (decided, or completed)."""

    order: Order
    at_ms: int


@dataclass(frozen=True)
class LineChange:
    """A state (and plan) a line took: when, why and by which order."""

    msisdn: str
    customer_id: str
    account_id: str
    state: str
    plan_id: str
    order_id: str
    cause: str
    reason: str
    at_ms: int
    # what the line is and the unit it serves ("" on rows written before revision 0015)
    customer_type: str = ""
    unit_id: str = ""
    # the line's count of acknowledged changes before this one (``Line.changes``): a line
    # may take the same state twice under one order, each a row of its own
    sequence: int = 0

    @property
    def change_id(self) -> str:
        return f"{self.msisdn}:{self.order_id}:{self.state}:{self.plan_id}:{self.sequence}"

    def to_doc(self) -> dict[str, Any]:
        return {
            "msisdn": self.msisdn,
            "customer_id": self.customer_id,
            "account_id": self.account_id,
            "state": self.state,
            "plan_id": self.plan_id,
            "order_id": self.order_id,
            "cause": self.cause,
            "reason": self.reason,
            "customer_type": self.customer_type,
            "unit_id": self.unit_id,
            "sequence": self.sequence,
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any], at_ms: int) -> LineChange:
        return cls(
            msisdn=str(doc["msisdn"]),
            customer_id=str(doc["customer_id"]),
            account_id=str(doc["account_id"]),
            state=str(doc["state"]),
            plan_id=str(doc["plan_id"]),
            order_id=str(doc["order_id"]),
            cause=str(doc["cause"]),
            reason=str(doc["reason"]),
            at_ms=at_ms,
            customer_type=str(doc.get("customer_type", "")),
            unit_id=str(doc.get("unit_id", "")),
            sequence=int(doc.get("sequence", 0)),
        )

    def to_line(self) -> Line:
        """The line as this change left it (its latest change: the line as it is)."""
        return Line(
            msisdn=self.msisdn,
            customer_id=self.customer_id,
            account_id=self.account_id,
            plan_id=self.plan_id,
            state=LineState(self.state),
            order_id=self.order_id,
            customer_type=self.customer_type or "MOBILE_PREPAID",
            unit_id=self.unit_id,
            termination_reason=self.reason,
        )


Record = OrderRecord | LineChange


def line_change(line: Line, cause: str, at_ms: int, *, state: str = "", plan_id: str = "") -> LineChange:
    """The change of ``line`` to ``state`` and ``plan_id`` (by default those it has)."""
    reason = line.termination_reason if (state or line.state.value) == "terminated" else ""
    return LineChange(
        msisdn=line.msisdn,
        customer_id=line.customer_id,
        account_id=line.account_id,
        state=state or line.state.value,
        plan_id=plan_id or line.plan_id,
        order_id=line.order_id,
        cause=cause,
        reason=reason,
        at_ms=at_ms,
        customer_type=line.customer_type,
        unit_id=line.unit_id,
        sequence=line.changes,
    )


def ordered_entry(line: Line, at_ms: int) -> str:
    """The entry of a new line's first state: pending activation, by the order that made it."""
    return entry(line_change(line, "ordered", at_ms, state="pending_activation"))


def entry(record: Record) -> str:
    """The record outbox entry of a record."""
    if isinstance(record, OrderRecord):
        return row_entry("order", record.at_ms, record.order.to_doc())
    return row_entry("line", record.at_ms, record.to_doc())


def parse(text: str) -> Record:
    """The record an outbox entry carries; ``BadRecord`` when it is not one."""
    try:
        v = json.loads(text)
        if not isinstance(v, list) or len(v) != 4 or v[0] != LAYOUT or v[2] not in ("order", "line"):
            raise BadRecord("not an order or line record")
        at_ms, doc = int(v[1]), json.loads(v[3])
        if v[2] == "order":
            order = Order.from_doc(doc)
            if order.status not in ("IN_PROGRESS", "REJECTED", "COMPLETED"):
                raise BadRecord(f"an order record of status {order.status}")
            return OrderRecord(order, at_ms)
        change = LineChange.from_doc(doc, at_ms)
        if change.cause not in CAUSES:
            raise BadRecord(f"a line change of cause {change.cause}")
        return change
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise BadRecord(str(exc)) from None
