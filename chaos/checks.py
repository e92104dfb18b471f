"""The checkers: pure functions over the final state and the history.

Each returns the violations it found (an empty list when the claim holds). The claims:

* **Money is conserved, exactly**, per account that saw only events, top-ups and bundle
  purchases: final balance = initial + top-ups - debits + refunds - bundle prices, each
  top-up counted once per idempotency key, each debit and refund once per event id, with
  the amounts their answers stated. Session accounts get the bound their usage allows
  (balance never above initial + top-ups + refunds - bundles) until the usage records
  carry each debit's money.
* **Answered once**: every answer to the same request (retransmissions, concurrent
  duplicates, the resolution pass) is the same answer.
* **Nothing acknowledged is lost**: repeating an acknowledged top-up, debit or purchase
  after every fault answers what it answered the first time and changes no balance.
* **Reservations are released**: once every session has ended or been swept, nothing is
  reserved, in money or in bucket units.
* **Buckets stay in bounds**: 0 <= reserved <= amount for every bucket.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from chaos.history import Answer, History, Operation


@dataclass(frozen=True)
class Bucket:
    bucket_id: str
    amount: int
    reserved: int


@dataclass(frozen=True)
class AccountState:
    account: str
    balance_micros: int
    reserved_micros: int
    buckets: tuple[Bucket, ...]


@dataclass(frozen=True)
class Violation:
    check: str
    account: str
    detail: str
    operations: tuple[int, ...] = ()  # seq numbers of the operations that show it


def _once(ops: Iterable[Operation]) -> dict[str, Operation]:
    """The first operation with a definite answer per identity (repeats answer the same,
    which ``answered_once`` checks)."""
    first: dict[str, Operation] = {}
    for op in ops:
        if op.outcome == "ok" and op.answer is not None and op.identity not in first:
            first[op.identity] = op
    return first


def expected_balance(initial: int, ops: list[Operation], prices: dict[str, int]) -> int:
    """Initial + top-ups - debits + refunds - bundle prices, each request once."""
    total = initial
    for op in _once(ops).values():
        answer = op.answer
        assert answer is not None
        if op.kind == "topup" and answer.code == 2001:
            total += int(op.request["amount_micros"])
        elif op.kind == "debit" and answer.code == 2001:
            total -= answer.cost_micros
        elif op.kind == "refund" and answer.code == 2001:
            total += answer.cost_micros
        elif op.kind == "buy" and answer.code == 1:  # PURCHASED
            total -= prices[op.request["bundle_id"]]
    return total


def conservation(
    history: History, initial: dict[str, int], final: dict[str, AccountState], prices: dict[str, int]
) -> list[Violation]:
    found: list[Violation] = []
    by_account: dict[str, list[Operation]] = {}
    for op in history.operations:
        by_account.setdefault(op.account, []).append(op)
    for account, start in initial.items():
        ops = by_account.get(account, [])
        state = final[account]
        expected = expected_balance(start, ops, prices)
        seqs = tuple(op.seq for op in ops)
        if any(op.kind == "session" for op in ops):
            if state.balance_micros > expected:
                found.append(
                    Violation(
                        "conservation",
                        account,
                        f"balance {state.balance_micros} is above what top-ups, refunds and purchases "
                        f"allow ({expected}) on an account whose sessions can only lower it",
                        seqs,
                    )
                )
        elif state.balance_micros != expected:
            found.append(
                Violation(
                    "conservation",
                    account,
                    f"balance {state.balance_micros} != initial {start} + top-ups - debits + refunds "
                    f"- bundles = {expected}",
                    seqs,
                )
            )
    return found


def answered_once(history: History) -> list[Violation]:
    found: list[Violation] = []
    answers: dict[str, list[tuple[int, Answer]]] = {}
    for op in history.operations:
        if op.outcome == "ok" and op.answer is not None:
            answers.setdefault(op.identity, []).append((op.seq, op.answer))
        answers.setdefault(op.identity, []).extend((op.seq, a) for a in op.replays)
    accounts = {op.identity: op.account for op in history.operations}
    for identity, seen in answers.items():
        distinct = {answer for _seq, answer in seen}
        if len(distinct) > 1:
            found.append(
                Violation(
                    "answered_once",
                    accounts[identity],
                    f"{identity} answered differently: {sorted(map(repr, distinct))}",
                    tuple(seq for seq, _answer in seen),
                )
            )
    return found


def nothing_lost(before: dict[str, AccountState], after: dict[str, AccountState]) -> list[Violation]:
    """Balances are the same before and after the pass that repeated every acknowledged
    request: a repeat that applied again means its record was lost."""
    return [
        Violation(
            "nothing_lost",
            account,
            f"repeating acknowledged requests moved the balance from {state.balance_micros} "
            f"to {after[account].balance_micros}",
        )
        for account, state in before.items()
        if after[account].balance_micros != state.balance_micros
    ]


def released(final: dict[str, AccountState]) -> list[Violation]:
    found: list[Violation] = []
    for account, state in final.items():
        held = [b for b in state.buckets if b.reserved]
        if state.reserved_micros or held:
            found.append(
                Violation(
                    "released",
                    account,
                    f"{state.reserved_micros} micros and {[(b.bucket_id, b.reserved) for b in held]} "
                    "still reserved after every session ended or was swept",
                )
            )
    return found


def buckets_in_bounds(final: dict[str, AccountState]) -> list[Violation]:
    return [
        Violation("buckets", account, f"bucket {b.bucket_id}: reserved {b.reserved}, amount {b.amount}")
        for account, state in final.items()
        for b in state.buckets
        if not 0 <= b.reserved <= b.amount
    ]
