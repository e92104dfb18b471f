"""The billing Lua scripts (``postpaid/*.lua``, each headed by its KEYS, ARGV and reply)
and the records of their arguments.

Line scripts run in the charging account's slot; the others in the billing account's (``postpaid/keys.py``).

Each script's header lists ARGV under ``-- ARGV <Record>`` by the field names of its
record here, in order, and the script reads them into locals of the same names;
``tests/test_script_headers.py`` holds the two sides together (as for
``charging/script_args.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from charging.ledger import LuaScript
from charging.script_args import Arg

ENROL = LuaScript("enrol.lua", package="postpaid")
CLOSE = LuaScript("charging:ledger_lib.lua", "close.lua", package="postpaid")
CREDIT = LuaScript("credit.lua", package="postpaid")
SETTLE = LuaScript("slot_lib.lua", "settle.lua", package="postpaid")
PAY = LuaScript("slot_lib.lua", "pay.lua", package="postpaid")
DUNNING = LuaScript("dunning.lua", package="postpaid")
PURGE = LuaScript("purge.lua", package="postpaid")
DISPUTE = LuaScript("dispute.lua", package="postpaid")
PREPAID_CLOSE = LuaScript("prepaid_close.lua", package="postpaid")
CREDIT_OPEN = LuaScript("credit_open.lua", package="postpaid")
SETTLED = LuaScript("settled.lua", package="postpaid")
DELIVERED = LuaScript("delivered.lua", package="postpaid")
REDELIVER = LuaScript("redeliver.lua", package="postpaid")


@dataclass(frozen=True, slots=True)
class EnrolArgs:
    """enrol.lua: make a charging account postpaid."""

    # The open bill periods, packed (postpaid/periods.py ``pack``).
    periods: str
    credit_limit: int

    def to_argv(self) -> tuple[Arg, ...]:
        return (self.periods, self.credit_limit)


@dataclass(frozen=True, slots=True)
class CloseArgs:
    """close.lua: close a line's bill period and read its usage."""

    period: str
    # The periods that stay open after it, packed.
    following: str

    def to_argv(self) -> tuple[Arg, ...]:
        return (self.period, self.following)


@dataclass(frozen=True, slots=True)
class CreditArgs:
    """credit.lua: set a line's credit limit and overdue amount (micros; None keeps it)."""

    credit_limit: int | None
    overdue: int | None

    def to_argv(self) -> tuple[Arg, ...]:
        return ("" if self.credit_limit is None else self.credit_limit, "" if self.overdue is None else self.overdue)


@dataclass(frozen=True, slots=True)
class SettleArgs:
    """settle.lua: apply an issued invoice to its account, once."""

    number: str
    # The account's count of settled invoices this one was composed on.
    account_seq: int
    total: int
    due_s: int
    issued_s: int
    period: str
    # '' for a final invoice.
    next_period: str
    next_end_s: int
    # A final invoice: the line that leaves the account, else ''.
    final_line: str
    deposit: int
    # Pending charges it took, from the head of the list.
    pending_taken: int
    # What the invoice listed as received since the last one.
    paid_counted: int
    credited_counted: int
    notes_counted: int
    state_prefix: str

    def to_argv(self) -> tuple[Arg, ...]:
        return (
            self.number,
            self.account_seq,
            self.total,
            self.due_s,
            self.issued_s,
            self.period,
            self.next_period,
            self.next_end_s,
            self.final_line,
            self.deposit,
            self.pending_taken,
            self.paid_counted,
            self.credited_counted,
            self.notes_counted,
            self.state_prefix,
        )


@dataclass(frozen=True, slots=True)
class PayArgs:
    """pay.lua: a payment, a credit note or a refund, once per record key."""

    kind: Literal["PAY", "CREDIT", "REFUND"]
    digest: str
    amount: int
    at_s: int
    state_prefix: str
    # The record JSON, with ALLOCATIONS (and for a credit note NUMBER) to fill in.
    record: str
    # The most credit the account may hold (minor units): more is refused (LIMIT).
    max_credit: int
    # For a credit note only: the invoice, the disputed amount it settles and its number
    # (from its gapless series in PostgreSQL).
    invoice: str = ""
    release: int = 0
    note_number: str = ""
    # Decide only (before the movement is committed in PostgreSQL): {'OK'} or the refusal.
    check: bool = False
    # A credit note on a settled invoice (its state left Redis; PostgreSQL bounded it).
    settled: bool = False
    # How long (s) the record lives: the caller deletes it once the outcome is committed
    # in PostgreSQL, which answers a retry from then on; this bounds it when the process
    # dies between the two (CHARGING_IDEMPOTENCY_TTL_S, far longer than any retry).
    record_ttl_s: int = field(kw_only=True)

    def to_argv(self) -> tuple[Arg, ...]:
        return (
            self.kind,
            self.digest,
            self.amount,
            self.at_s,
            self.state_prefix,
            self.record,
            self.max_credit,
            self.invoice,
            self.release,
            self.note_number,
            "1" if self.check else "",
            "1" if self.settled else "",
            self.record_ttl_s,
        )


@dataclass(frozen=True, slots=True)
class DunningStep:
    """One step of a dunning decision: applied once, by its member."""

    member: str
    # A charge JSON for the next invoice, '' none.
    charge: str
    # A notification for the billing outbox, '' none.
    note: str

    def to_argv(self) -> tuple[Arg, ...]:
        return (self.member, self.charge, self.note)


@dataclass(frozen=True, slots=True)
class DunningArgs:
    """dunning.lua: apply one committed dunning decision."""

    # The service state to record, '' keep.
    state: str
    steps: tuple[DunningStep, ...]
    now_s: int

    def to_argv(self) -> tuple[Arg, ...]:
        argv: tuple[Arg, ...] = (self.state, len(self.steps))
        for step in self.steps:
            argv += step.to_argv()
        return (*argv, self.now_s)


@dataclass(frozen=True, slots=True)
class PurgeArgs:
    """purge.lua: drop a line's invoiced usage up to a period."""

    period: str

    def to_argv(self) -> tuple[Arg, ...]:
        return (self.period,)


@dataclass(frozen=True, slots=True)
class DisputeArgs:
    """dispute.lua: open, accept, reject or release a dispute."""

    op: Literal["OPEN", "ACCEPT", "REJECT", "RELEASE"]
    amount: int
    # The dispute record JSON.
    record: str

    def to_argv(self) -> tuple[Arg, ...]:
        return (self.op, self.amount, self.record)


@dataclass(frozen=True, slots=True)
class PrepaidCloseArgs:
    """prepaid_close.lua: record a terminated prepaid line's balance, once."""

    policy: str
    at_s: int
    actor: str

    def to_argv(self) -> tuple[Arg, ...]:
        return (self.policy, self.at_s, self.actor)


@dataclass(frozen=True, slots=True)
class CreditOpenArgs:
    """credit_open.lua: the credit an account held before revision 0014, as a movement."""

    at_s: int

    def to_argv(self) -> tuple[Arg, ...]:
        return (self.at_s,)


@dataclass(frozen=True, slots=True)
class SettledArgs:
    """settled.lua: is an invoice settled as Redis sees it; drop its state."""

    op: Literal["CHECK", "DROP"]
    number: str
    # DROP: the invoice's members of the account's dunning steps ("<invoice>|<step>").
    members: tuple[str, ...] = ()

    def to_argv(self) -> tuple[Arg, ...]:
        return (self.op, self.number, *self.members)


@dataclass(frozen=True, slots=True)
class DeliveredArgs:
    """delivered.lua: an invoice's delivery outcome, on a state Redis still holds."""

    delivery: str
    delivery_detail: str
    delivered_on: str

    def to_argv(self) -> tuple[Arg, ...]:
        return (self.delivery, self.delivery_detail, self.delivered_on)


@dataclass(frozen=True, slots=True)
class RedeliverArgs:
    """redeliver.lua: a delivery to try again later, on a state Redis still holds."""

    number: str
    max_attempts: int

    def to_argv(self) -> tuple[Arg, ...]:
        return (self.number, self.max_attempts)
