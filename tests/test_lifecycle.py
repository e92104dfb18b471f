"""Line lifecycle rules: every state and order, as a table. No server."""

from __future__ import annotations

import pytest

from provisioning.lifecycle import (
    CHARGING_STATUS,
    DAY_S,
    InvalidTransition,
    LineState,
    OrderKind,
    TerminationReason,
    accept,
    reusable_from,
)

S, K = LineState, OrderKind
ALLOWED = {
    (S.PENDING_ACTIVATION, K.NEW_LINE): (S.ACTIVE, "ACTIVATE"),
    (S.PENDING_ACTIVATION, K.TERMINATE): (S.TERMINATED, "TERMINATE"),
    (S.ACTIVE, K.CHANGE_PRODUCT): (S.ACTIVE, "CHANGE_PRODUCT"),
    (S.ACTIVE, K.BAR_OUTGOING): (S.BARRED_OUTGOING, "BAR_OUTGOING"),
    (S.ACTIVE, K.SUSPEND): (S.SUSPENDED, "SUSPEND"),
    (S.ACTIVE, K.TERMINATE): (S.TERMINATED, "TERMINATE"),
    (S.BARRED_OUTGOING, K.CHANGE_PRODUCT): (S.BARRED_OUTGOING, "CHANGE_PRODUCT"),
    (S.BARRED_OUTGOING, K.SUSPEND): (S.SUSPENDED, "SUSPEND"),
    (S.BARRED_OUTGOING, K.RESUME): (S.ACTIVE, "RESUME"),
    (S.BARRED_OUTGOING, K.TERMINATE): (S.TERMINATED, "TERMINATE"),
    (S.SUSPENDED, K.CHANGE_PRODUCT): (S.SUSPENDED, "CHANGE_PRODUCT"),
    (S.SUSPENDED, K.RESUME): (S.ACTIVE, "RESUME"),
    (S.SUSPENDED, K.TERMINATE): (S.TERMINATED, "TERMINATE"),
}


@pytest.mark.parametrize("state", list(S))
@pytest.mark.parametrize("order", list(K))
def test_every_state_and_order(state: LineState, order: OrderKind) -> None:
    expected = ALLOWED.get((state, order))
    if expected is None:
        with pytest.raises(InvalidTransition):
            accept(state, order, TerminationReason.DISSATISFIED)
    else:
        move = accept(state, order, TerminationReason.DISSATISFIED)
        assert (move.target, move.network_command) == expected


def test_termination_needs_a_reason() -> None:
    with pytest.raises(ValueError, match="reason"):
        accept(S.ACTIVE, K.TERMINATE)


@pytest.mark.parametrize(
    ("reason", "days"),
    [
        (TerminationReason.MOVED_AWAY, 90),
        (TerminationReason.DISSATISFIED, 90),
        (TerminationReason.NON_PAYMENT, 180),
        (TerminationReason.FRAUD, 365),
    ],
)
def test_terminated_numbers_are_quarantined(reason: TerminationReason, days: int) -> None:
    assert reusable_from(1_000, reason) == 1_000 + days * DAY_S


def test_charging_sees_every_state() -> None:
    assert set(CHARGING_STATUS) == set(S)
    assert set(CHARGING_STATUS.values()) <= {"active", "barred_outgoing", "suspended", "barred"}
