"""What every client asked and what it saw: the history the checkers explain.

An operation is one request with its identity (the idempotency key, event id or session
request number that makes a repeat the same request). Its outcome is ``ok`` (answered,
whatever the result code), ``refused`` (a gRPC error that says nothing happened:
INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, PERMISSION_DENIED) or ``unknown`` (a
timeout, UNAVAILABLE, a reset: it may or may not have been applied). Unknown outcomes are
resolved at the end by sending the same request again until it is answered: the stored
answer of the first attempt, or the first application now; either way the history then
knows what happened exactly once.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Outcome = Literal["ok", "refused", "unknown"]
Kind = Literal["topup", "debit", "refund", "buy", "session", "status"]


@dataclass(frozen=True)
class Answer:
    """The parts of an answer the checkers compare (one shape for every kind)."""

    code: int  # RFC 8506 result code, or the purchase result for bundles, 2001 for top-ups
    cost_micros: int = 0  # money debited (debit, a session step's usage), given back (refund)
    units: int = 0  # units debited or refunded, or granted (a session step)
    balance_micros: int | None = None  # balance after, where the answer carries it
    refund_information: str = ""  # hex
    tariff_change_time: int = 0  # a session grant's: when the tariff changes within it (0: it does not)


@dataclass
class Operation:
    seq: int  # order of issue in the run
    client: int
    kind: Kind
    account: str  # account id
    identity: str  # what makes a repeat the same request: key, event id, session:number
    request: dict[str, Any]  # enough to send it again
    at_s: float  # monotonic time of issue, relative to the run's start
    outcome: Outcome = "unknown"
    answer: Answer | None = None
    error: str = ""
    resolved: bool = False  # the answer came from the resolution pass
    acked_at: float = 0.0  # wall clock when it was answered
    replays: list[Answer] = field(default_factory=list)  # answers to deliberate repeats

    @property
    def applied(self) -> bool:
        """Acknowledged as done: 2001, or a bundle PURCHASED (a refusal such as 4012 changed
        nothing and may leave no record; a status change is a setting, not a movement)."""
        return (
            self.kind != "status" and self.outcome == "ok" and self.answer is not None and self.answer.code in (2001, 1)
        )

    @property
    def record_id(self) -> str:
        """The id its record has in PostgreSQL (charging/cdrs.py): a debit's or refund's
        usage row, a top-up's or bundle sale's audit entry."""
        return f"{self.account}:{'e' if self.kind in ('debit', 'refund') else self.kind[0]}:{self.identity}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass
class Fault:
    at_s: float
    kind: str  # kill_server, pause_server, kill_redis
    detail: str = ""


@dataclass
class History:
    operations: list[Operation] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)

    def add(self, op: Operation) -> Operation:
        self.operations.append(op)
        return op

    def of(self, kind: Kind) -> list[Operation]:
        return [op for op in self.operations if op.kind == kind]

    def counts(self) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = {}
        for op in self.operations:
            row = table.setdefault(op.kind, {})
            label = op.outcome + (" (resolved)" if op.resolved else "")
            row[label] = row.get(label, 0) + 1
        return table

    def write(self, path: str) -> None:
        with open(path, "w") as out:
            for fault in self.faults:
                out.write(json.dumps({"fault": asdict(fault)}) + "\n")
            for op in self.operations:
                out.write(op.to_json() + "\n")
