"""Line lifecycle: states, the orders that move a line between them, and what each
move asks of the network. Pure: times are parameters.

    PENDING_ACTIVATION --(network acknowledged ACTIVATE)--> ACTIVE
    ACTIVE <--BAR_OUTGOING / RESUME--> BARRED_OUTGOING
    ACTIVE, BARRED_OUTGOING --SUSPEND--> SUSPENDED --RESUME--> ACTIVE
    any state but TERMINATED --TERMINATE (with a reason)--> TERMINATED

A line becomes ACTIVE only when the network acknowledges its activation, so NEW_LINE
leaves it PENDING_ACTIVATION. A terminated number is quarantined before it can be given
to another customer.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

DAY_S = 86_400


class LineState(Enum):
    PENDING_ACTIVATION = "pending_activation"
    ACTIVE = "active"
    BARRED_OUTGOING = "barred_outgoing"
    SUSPENDED = "suspended"
    TERMINATED = "terminated"


class OrderKind(Enum):
    NEW_LINE = "NEW_LINE"
    CHANGE_PRODUCT = "CHANGE_PRODUCT"
    BAR_OUTGOING = "BAR_OUTGOING"
    SUSPEND = "SUSPEND"
    RESUME = "RESUME"
    TERMINATE = "TERMINATE"


class TerminationReason(Enum):
    MOVED_AWAY = "MOVED_AWAY"
    DISSATISFIED = "DISSATISFIED"
    NON_PAYMENT = "NON_PAYMENT"
    FRAUD = "FRAUD"


# What the provisioning adapter sends to the network for each order.
NETWORK_COMMAND = {
    OrderKind.NEW_LINE: "ACTIVATE",
    OrderKind.CHANGE_PRODUCT: "CHANGE_PRODUCT",
    OrderKind.BAR_OUTGOING: "BAR_OUTGOING",
    OrderKind.SUSPEND: "SUSPEND",
    OrderKind.RESUME: "RESUME",
    OrderKind.TERMINATE: "TERMINATE",
}

_S = LineState
# (state, order) -> state once the network has acknowledged the command
TRANSITIONS: dict[tuple[LineState, OrderKind], LineState] = {
    (_S.PENDING_ACTIVATION, OrderKind.NEW_LINE): _S.ACTIVE,
    (_S.ACTIVE, OrderKind.CHANGE_PRODUCT): _S.ACTIVE,
    (_S.BARRED_OUTGOING, OrderKind.CHANGE_PRODUCT): _S.BARRED_OUTGOING,
    (_S.SUSPENDED, OrderKind.CHANGE_PRODUCT): _S.SUSPENDED,
    (_S.ACTIVE, OrderKind.BAR_OUTGOING): _S.BARRED_OUTGOING,
    (_S.ACTIVE, OrderKind.SUSPEND): _S.SUSPENDED,
    (_S.BARRED_OUTGOING, OrderKind.SUSPEND): _S.SUSPENDED,
    (_S.BARRED_OUTGOING, OrderKind.RESUME): _S.ACTIVE,
    (_S.SUSPENDED, OrderKind.RESUME): _S.ACTIVE,
    (_S.PENDING_ACTIVATION, OrderKind.TERMINATE): _S.TERMINATED,
    (_S.ACTIVE, OrderKind.TERMINATE): _S.TERMINATED,
    (_S.BARRED_OUTGOING, OrderKind.TERMINATE): _S.TERMINATED,
    (_S.SUSPENDED, OrderKind.TERMINATE): _S.TERMINATED,
}

# What charging allows in each state (see charging/session.lua).
CHARGING_STATUS = {
    _S.PENDING_ACTIVATION: "barred",
    _S.ACTIVE: "active",
    _S.BARRED_OUTGOING: "barred_outgoing",
    _S.SUSPENDED: "suspended",
    _S.TERMINATED: "barred",
}

QUARANTINE_DAYS = {
    TerminationReason.MOVED_AWAY: 90,
    TerminationReason.DISSATISFIED: 90,
    TerminationReason.NON_PAYMENT: 180,
    TerminationReason.FRAUD: 365,
}


class InvalidTransition(ValueError):
    def __init__(self, state: LineState, order: OrderKind) -> None:
        super().__init__(f"a line in state {state.value} cannot take a {order.value} order")
        self.state = state
        self.order = order


@dataclass(frozen=True)
class Move:
    """An accepted order: where the line goes once the network acknowledges it."""

    target: LineState
    network_command: str


def accept(state: LineState, order: OrderKind, reason: TerminationReason | None = None) -> Move:
    """Check an order against the line's state; a termination needs a reason."""
    target = TRANSITIONS.get((state, order))
    if target is None:
        raise InvalidTransition(state, order)
    if order is OrderKind.TERMINATE and reason is None:
        raise ValueError("a TERMINATE order needs a termination reason")
    return Move(target, NETWORK_COMMAND[order])


def reusable_from(terminated_at_s: int, reason: TerminationReason) -> int:
    """When a terminated number may be given to another customer."""
    return terminated_at_s + QUARANTINE_DAYS[reason] * DAY_S
