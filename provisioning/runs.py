"""One run of an order: the order it builds step by step, what its checks decided, and
what a refusal takes back.

A run starts from a claim (``orders.py``): a new order id, or the take-over of a run
that was interrupted. The checks of an order are decided once and the decision is
recorded with the order as it stood (``OrderRun.decided``), so a resumed run continues
from there instead of checking again against a world its first run already changed. A
step that refuses the order raises ``Rejected``; the run records it, and takes back in
the deciding transaction what it made for a customer that will not be (``undo``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from redis.asyncio.client import Pipeline

from provisioning.credit import CreditDecision
from provisioning.orders import Claim, Order, Orders, Step


class Rejected(Exception):
    """A step refuses the order; the run records it and rejects the order."""

    def __init__(self, step: str, *reasons: str) -> None:
        super().__init__(step, *reasons)
        self.step = step
        self.reasons = reasons


@dataclass(frozen=True)
class Decision:
    """What an order's checks decided, once: the plan offered, from which catalog
    version, the credit decision (postpaid) and, for a further line, its unit."""

    plan_id: str
    catalog: str
    credit: CreditDecision | None
    unit_id: str | None = None

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "plan_id": self.plan_id,
            "catalog": self.catalog,
            "credit": None if self.credit is None else asdict(self.credit),
        }
        if self.unit_id is not None:
            doc["unit_id"] = self.unit_id
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Decision:
        credit = doc["credit"]
        return cls(
            plan_id=str(doc["plan_id"]),
            catalog=str(doc["catalog"]),
            credit=None if credit is None else CreditDecision(**{**credit, "reasons": tuple(credit["reasons"])}),
            unit_id=None if doc.get("unit_id") is None else str(doc["unit_id"]),
        )


class OrderRun:
    """One run of an order: its document and the steps recorded on it."""

    def __init__(self, claim: Claim, now_s: int) -> None:
        self.request = claim.request
        self.work = claim.work
        decided = claim.work.get("decided")
        # A resumed run continues the document of the run that decided the order.
        self.order = Order.from_doc(json.loads(decided)["order"]) if decided else claim.order
        self.now_s = now_s
        # Rules (ages, velocity per day, plan versions, quarantine) as of the submission.
        self.decided_s = now_s if self.order.submitted_at is None else self.order.submitted_at
        # What a rejection takes back: what this run made for a customer that won't be.
        self.undo: list[Callable[[Pipeline], Any]] = []

    @property
    def id(self) -> str:
        return self.order.crm_order_id

    def step(self, name: str, outcome: str, *reasons: str) -> None:
        self.order = self.order.with_step(Step(name, outcome, reasons, self.now_s))

    def problems(self, *problems: tuple[str, str]) -> None:
        """The fields of the request that are wrong, and what is wrong with each."""
        self.order = replace(self.order, problems=problems)

    async def decided(self, orders: Orders, check: Callable[[], Awaitable[Decision]]) -> Decision:
        """What the order's checks decided (plan, credit, unit): checked once; a resumed
        run reads it back, so a velocity count or a line limit that the first run's own
        customer and line now take part in cannot refuse the order later."""
        stored = self.work.get("decided")
        if stored is not None:
            return Decision.from_doc(json.loads(stored)["facts"])
        decision = await check()
        await orders.note(self.id, "decided", json.dumps({"order": self.order.to_doc(), "facts": decision.to_doc()}))
        return decision
