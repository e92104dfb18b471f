"""Dunning: the collections ladder of a postpaid billing account. Pure: no Redis, no clock
(``today`` is a parameter). Money in integer minor units (cents), as in ``invoices.py``.

A ladder is an ordered tuple of steps, each ``offset_days`` after an invoice's due date:

    reminder         +3  NOTIFY        EMAIL
    second_reminder +10  NOTIFY        SMS    late fee 5.00
    bar_outgoing    +20  BAR_OUTGOING  SMS    when at least 10.00 is overdue
    suspend         +35  SUSPEND       EMAIL  when at least 10.00 is overdue
    terminate       +60  TERMINATE     EMAIL  when at least 10.00 is overdue: final invoice, hand-over to collection

The rules, per billing account:

* The collectible amount of an invoice is ``open - disputed`` (never below 0), and 0 while a
  promise to pay is in force (``today <= promised_until``). The account's overdue amount is
  the sum of the collectible amounts of its invoices past due (``today > due``).
* A step is reached for an invoice when the invoice is at least ``offset_days`` past due, has
  something collectible, and the **account's** overdue amount is at least ``min_overdue``:
  the threshold is on the account total, so three small unpaid invoices weigh as much as one
  large one. An invoice's current step is its highest reached step.
* The target state is the state of the most severe action among the reached steps (ACTIVE
  when none). Dunning only escalates: ``ChangeState`` when the target is more severe than the
  current state. The way back is ``Restore``: when nothing collectible is overdue any more
  (paid, disputed, or promised) and the account is BARRED_OUTGOING or SUSPENDED, it goes
  back to ACTIVE, with the reconnection fee if one is configured. A partial payment does not
  lift a bar. The ``state`` given is the one dunning controls; a bar the customer asked for
  is not this module's business.
* TERMINATED is final: a terminated account gets no actions at all, never a restoration
  (its debt is with the collection agency since the TERMINATE step).
* Notifications: one per invoice at most, for its current step, when that step is newly
  reached (not in ``done``). After skipped days (a batch outage, a promise broken) the
  customer gets the current step's message only, not every missed reminder.
* Late fees: once per (invoice, step), for every reached step with a fee that is not in
  ``done``, including steps skipped on catch-up: the fee is for being that late, which the
  customer was, not for the letter.
* ``done`` holds (invoice number, step name) for every reached step already handled
  (notified, passed over on catch-up, fee charged). A fee is charged exactly when its step is
  first recorded, so ``done`` is also the record of the fees charged.

Apply a ``Decision`` by carrying out its actions, then ``done |= decision.done`` and
``state = decision.state``; evaluating again on the same day then gives no actions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from enum import Enum


class StepAction(Enum):
    """What a step does besides notifying, from least to most severe."""

    NOTIFY = "NOTIFY"
    BAR_OUTGOING = "BAR_OUTGOING"
    SUSPEND = "SUSPEND"
    TERMINATE = "TERMINATE"


class Channel(Enum):
    EMAIL = "EMAIL"
    SMS = "SMS"


class ServiceState(Enum):
    """The account's service state; the names are those of ``provisioning.lifecycle.LineState``."""

    ACTIVE = "ACTIVE"
    BARRED_OUTGOING = "BARRED_OUTGOING"
    SUSPENDED = "SUSPENDED"
    TERMINATED = "TERMINATED"


STATE_OF_ACTION = {
    StepAction.NOTIFY: ServiceState.ACTIVE,
    StepAction.BAR_OUTGOING: ServiceState.BARRED_OUTGOING,
    StepAction.SUSPEND: ServiceState.SUSPENDED,
    StepAction.TERMINATE: ServiceState.TERMINATED,
}
SEVERITY = {state: rank for rank, state in enumerate(ServiceState)}


class LadderError(ValueError):
    """A bad ladder; ``index``, ``step`` and ``field`` say where."""

    def __init__(self, index: int | None, step: str, field: str, problem: str) -> None:
        where = "dunning ladder" if index is None else f"dunning step {index} ({step!r})"
        super().__init__(f"{where}: {field}: {problem}")
        self.index = index
        self.step = step
        self.field = field


@dataclass(frozen=True)
class Step:
    name: str
    offset_days: int  # days after the due date, at least 1
    action: StepAction
    channel: Channel
    min_overdue: int = 0  # minor units the account must have overdue for the step to apply
    late_fee: int = 0  # minor units, 0 for none


_REQUIRED = ("name", "offset_days", "action", "channel")
_OPTIONAL = ("min_overdue", "late_fee")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(index: int, step: Step, previous: Step | None) -> None:
    def fail(field: str, problem: str) -> LadderError:
        return LadderError(index, str(step.name), field, problem)

    if not isinstance(step.name, str) or not step.name:
        raise fail("name", "must be a non-empty string")
    if not isinstance(step.action, StepAction):
        raise fail("action", f"must be one of {', '.join(a.value for a in StepAction)}, got {step.action!r}")
    if not isinstance(step.channel, Channel):
        raise fail("channel", f"must be one of {', '.join(c.value for c in Channel)}, got {step.channel!r}")
    for field in ("offset_days", "min_overdue", "late_fee"):
        value = getattr(step, field)
        if not _is_int(value):
            raise fail(field, f"must be a whole number, got {value!r}")
    if step.offset_days < 1:
        raise fail("offset_days", f"must be at least 1 (a step acts on an overdue invoice), got {step.offset_days}")
    if step.min_overdue < 0:
        raise fail("min_overdue", f"must not be negative, got {step.min_overdue}")
    if step.late_fee < 0:
        raise fail("late_fee", f"must not be negative, got {step.late_fee}")
    if previous is None:
        return
    if step.offset_days <= previous.offset_days:
        raise fail(
            "offset_days",
            f"must be greater than step {previous.name!r}'s {previous.offset_days}, got {step.offset_days}",
        )
    if SEVERITY[STATE_OF_ACTION[step.action]] < SEVERITY[STATE_OF_ACTION[previous.action]]:
        raise fail(
            "action", f"{step.action.value} is less severe than step {previous.name!r}'s {previous.action.value}"
        )


@dataclass(frozen=True)
class Ladder:
    """Steps by increasing offset and non-decreasing severity, names unique (``done`` keys on them)."""

    steps: tuple[Step, ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        previous: Step | None = None
        for index, step in enumerate(self.steps):
            _check(index, step, previous)
            if step.name in seen:
                raise LadderError(index, step.name, "name", "is used by an earlier step")
            seen.add(step.name)
            previous = step

    @staticmethod
    def from_config(config: Sequence[Mapping[str, object]]) -> Ladder:
        """A ladder from plain data (a JSON list of objects with the fields of ``Step``;
        ``action`` and ``channel`` by name). Raises ``LadderError`` naming step and field."""
        if isinstance(config, (str, bytes, Mapping)) or not isinstance(config, Sequence):
            raise LadderError(None, "", "steps", "must be a list of steps")
        steps = []
        for index, item in enumerate(config):
            if not isinstance(item, Mapping):
                raise LadderError(index, "", "step", "must be an object")
            name = str(item.get("name", ""))
            for key in item:
                if key not in _REQUIRED and key not in _OPTIONAL:
                    raise LadderError(index, name, str(key), "is not a field of a step")
            for key in _REQUIRED:
                if key not in item:
                    raise LadderError(index, name, key, "is missing")
            action = next((a for a in StepAction if a.value == item["action"]), None)
            if action is None:
                allowed = ", ".join(a.value for a in StepAction)
                raise LadderError(index, name, "action", f"must be one of {allowed}, got {item['action']!r}")
            channel = next((c for c in Channel if c.value == item["channel"]), None)
            if channel is None:
                allowed = ", ".join(c.value for c in Channel)
                raise LadderError(index, name, "channel", f"must be one of {allowed}, got {item['channel']!r}")
            steps.append(
                Step(
                    name=item["name"],  # type: ignore[arg-type]  # checked by Ladder
                    offset_days=item["offset_days"],  # type: ignore[arg-type]
                    action=action,
                    channel=channel,
                    min_overdue=item.get("min_overdue", 0),  # type: ignore[arg-type]
                    late_fee=item.get("late_fee", 0),  # type: ignore[arg-type]
                )
            )
        return Ladder(tuple(steps))


_A = StepAction
DEFAULT_LADDER = Ladder(
    (
        Step("reminder", 3, _A.NOTIFY, Channel.EMAIL),
        Step("second_reminder", 10, _A.NOTIFY, Channel.SMS, late_fee=500),
        # Barred outgoing still receives SMS; a suspended line does not, hence e-mail after.
        Step("bar_outgoing", 20, _A.BAR_OUTGOING, Channel.SMS, min_overdue=1000),
        Step("suspend", 35, _A.SUSPEND, Channel.EMAIL, min_overdue=1000),
        Step("terminate", 60, _A.TERMINATE, Channel.EMAIL, min_overdue=1000),
    )
)


@dataclass(frozen=True)
class OpenInvoice:
    number: str
    due: date
    open_amount: int  # minor units still unpaid
    disputed_amount: int = 0
    promised_until: date | None = None  # a promise to pay holds dunning up to and including this day

    def __post_init__(self) -> None:
        for field in ("open_amount", "disputed_amount"):
            value = getattr(self, field)
            if not _is_int(value) or value < 0:
                raise ValueError(f"invoice {self.number}: {field} must be a whole number >= 0, got {value!r}")


def collectible(invoice: OpenInvoice, today: date) -> int:
    """Open minus disputed, never below 0; 0 while a promise to pay is in force."""
    if invoice.promised_until is not None and today <= invoice.promised_until:
        return 0
    return max(0, invoice.open_amount - invoice.disputed_amount)


def days_past_due(invoice: OpenInvoice, today: date) -> int:
    """Negative before the due date, 0 on it."""
    return (today - invoice.due).days


def overdue(invoices: Iterable[OpenInvoice], today: date) -> int:
    """The account's collectible amount on invoices past due: what ``min_overdue`` is compared with."""
    return sum(collectible(i, today) for i in invoices if days_past_due(i, today) > 0)


def _ordered(invoices: Iterable[OpenInvoice]) -> list[OpenInvoice]:
    ordered = sorted(invoices, key=lambda i: (i.due, i.number))
    numbers = [i.number for i in ordered]
    if len(set(numbers)) != len(numbers):
        raise ValueError("invoice numbers must be unique")
    return ordered


def _reached(ladder: Ladder, invoice: OpenInvoice, today: date, account_overdue: int) -> list[int]:
    """Indices of the steps reached for this invoice, ascending."""
    days = days_past_due(invoice, today)
    if collectible(invoice, today) == 0:
        return []
    return [
        k for k, step in enumerate(ladder.steps) if step.offset_days <= days and account_overdue >= step.min_overdue
    ]


@dataclass(frozen=True)
class Notify:
    invoice: str
    step: str
    channel: Channel


@dataclass(frozen=True)
class LateFee:
    invoice: str
    step: str
    amount: int  # minor units


@dataclass(frozen=True)
class ChangeState:
    """Escalate the account's service; to TERMINATED also means final invoice and hand-over to collection."""

    target: ServiceState
    reason: str


@dataclass(frozen=True)
class Restore:
    """Back to ACTIVE; charge ``reconnection_fee`` (minor units) when it is not 0."""

    reconnection_fee: int


Action = Notify | LateFee | ChangeState | Restore


@dataclass(frozen=True)
class Decision:
    """``actions`` in a fixed order (per invoice by due date then number: its late fees in
    ladder order, then its notification; the state change last). ``done`` are the records to
    add; ``target`` the state the reached steps call for; ``state`` the one after the actions."""

    actions: tuple[Action, ...]
    done: frozenset[tuple[str, str]]
    target: ServiceState
    state: ServiceState


def evaluate(
    ladder: Ladder,
    invoices: Iterable[OpenInvoice],
    done: frozenset[tuple[str, str]],
    state: ServiceState,
    today: date,
    reconnection_fee: int = 0,
) -> Decision:
    """What dunning does today for one billing account (the rules are in the module docstring)."""
    if not _is_int(reconnection_fee) or reconnection_fee < 0:
        raise ValueError(f"reconnection_fee must be a whole number >= 0, got {reconnection_fee!r}")
    ordered = _ordered(invoices)
    account_overdue = overdue(ordered, today)
    actions: list[Action] = []
    records: set[tuple[str, str]] = set()
    target, worst, reason = ServiceState.ACTIVE, (-1, -1), ""
    for invoice in ordered:
        reached = _reached(ladder, invoice, today, account_overdue)
        if not reached:
            continue
        current = ladder.steps[reached[-1]]
        rank = (SEVERITY[STATE_OF_ACTION[current.action]], reached[-1])
        if rank > worst:
            days = days_past_due(invoice, today)
            target, worst = STATE_OF_ACTION[current.action], rank
            reason = f"{current.name}: invoice {invoice.number} {days} days past due, {account_overdue} overdue"
        for k in reached:
            step = ladder.steps[k]
            key = (invoice.number, step.name)
            if key in done:
                continue
            records.add(key)
            if step.late_fee:
                actions.append(LateFee(invoice.number, step.name, step.late_fee))
        if (invoice.number, current.name) not in done:
            actions.append(Notify(invoice.number, current.name, current.channel))

    if state is ServiceState.TERMINATED:
        return Decision((), frozenset(), target, state)
    after: ServiceState = state
    if SEVERITY[target] > SEVERITY[state]:
        actions.append(ChangeState(target, reason))
        after = target
    elif account_overdue == 0 and state in (ServiceState.BARRED_OUTGOING, ServiceState.SUSPENDED):
        actions.append(Restore(reconnection_fee))
        after = ServiceState.ACTIVE
    return Decision(tuple(actions), frozenset(records), target, after)


@dataclass(frozen=True)
class InvoiceStatus:
    invoice: str
    days_overdue: int  # 0 until the day after the due date
    collectible: int
    step: str | None  # the current (highest reached) step, None before the first


def status(ladder: Ladder, invoices: Iterable[OpenInvoice], today: date) -> tuple[InvoiceStatus, ...]:
    """Where each open invoice stands on the ladder today, by due date then number."""
    ordered = _ordered(invoices)
    account_overdue = overdue(ordered, today)
    out = []
    for invoice in ordered:
        reached = _reached(ladder, invoice, today, account_overdue)
        out.append(
            InvoiceStatus(
                invoice=invoice.number,
                days_overdue=max(0, days_past_due(invoice, today)),
                collectible=collectible(invoice, today),
                step=ladder.steps[reached[-1]].name if reached else None,
            )
        )
    return tuple(out)


def promise_outcome(invoices: Iterable[OpenInvoice], until: date, today: date) -> str | None:
    """How a promise to pay up to ``until`` turned out, judged on the account's invoices
    without the promise: KEPT once nothing collectible is open, or when its day has passed
    with nothing collectible overdue; BROKEN when its day has passed with something
    overdue; None while it still runs."""
    ordered = list(invoices)
    if sum(collectible(i, today) for i in ordered) == 0:
        return "KEPT"
    if today <= until:
        return None
    return "BROKEN" if overdue(ordered, today) > 0 else "KEPT"
