"""Payment allocation rules: tables and properties, no server."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postpaid.allocation import Standing, credit_note, issue, pay, refund

OPEN = Standing((("INV-1", 1000), ("INV-2", 500)), 0, 1500)


@pytest.mark.parametrize(
    ("amount", "allocations", "open_", "credit"),
    [
        (300, (("INV-1", 300),), (("INV-1", 700), ("INV-2", 500)), 0),  # partial: the rest stays open
        (1000, (("INV-1", 1000),), (("INV-2", 500),), 0),
        (1200, (("INV-1", 1000), ("INV-2", 200)), (("INV-2", 300),), 0),
        (1777, (("INV-1", 1000), ("INV-2", 500)), (), 277),  # overpaid: credit
    ],
)
def test_a_payment_pays_the_oldest_invoice_first(
    amount: int, allocations: tuple[tuple[str, int], ...], open_: tuple[tuple[str, int], ...], credit: int
) -> None:
    out = pay(OPEN, amount)
    assert out.allocations == allocations
    assert out.standing == Standing(open_, credit, 1500 - amount)


def test_a_credit_note_settles_its_own_invoice_first_and_credit_pays_the_next_invoice() -> None:
    out = credit_note(OPEN, "INV-2", 700)
    assert out.allocations == (("INV-2", 500), ("INV-1", 200))
    assert out.standing.open == (("INV-1", 800),)
    overpaid = pay(out.standing, 1000)
    assert overpaid.standing.credit == 200
    after = issue(overpaid.standing, "INV-3", 450)
    assert (after.open, after.credit) == ((("INV-3", 250),), 0)
    assert issue(Standing((), 900, -900), "INV-4", 450) == Standing((), 450, -450)
    with pytest.raises(ValueError):
        refund(after, 1)


amounts = st.integers(1, 5000)
standings = st.lists(amounts, max_size=5).map(
    lambda xs: Standing(tuple((f"INV-{i}", a) for i, a in enumerate(xs)), 0, sum(xs))
)
moves = st.lists(
    st.tuples(st.sampled_from(["pay", "credit", "refund", "issue"]), st.integers(-2000, 5000), st.integers(0, 9)),
    max_size=8,
)


@given(s=standings, amount=amounts)
def test_payments_allocate_oldest_first_and_keep_the_rest_as_credit(s: Standing, amount: int) -> None:
    out = pay(s, amount)
    paid = dict(out.allocations)
    assert sum(paid.values()) + out.standing.credit - s.credit == amount
    numbers = [n for n, _ in s.open]
    assert [n for n, _ in out.allocations] == numbers[: len(out.allocations)]  # a prefix, oldest first
    for number, was in s.open[: max(len(out.allocations) - 1, 0)]:
        assert paid[number] == was  # every invoice before the last one paid is paid in full
    assert all(0 < a <= s.open_of(n) for n, a in out.allocations)
    assert out.standing.open == tuple((n, a - paid.get(n, 0)) for n, a in s.open if a > paid.get(n, 0))
    if out.standing.credit > s.credit:
        assert out.standing.open == ()  # credit only once nothing is open


@given(s=standings, moves=moves)
def test_every_movement_keeps_the_balance_equal_to_open_less_credit(
    s: Standing, moves: list[tuple[str, int, int]]
) -> None:
    for n, (kind, amount, which) in enumerate(moves):
        if kind == "issue":
            s = issue(s, f"NEW-{n}", amount)
        elif kind == "refund":
            s = refund(s, min(abs(amount), s.credit)) if s.credit else s
        elif amount > 0 and kind == "pay":
            s = pay(s, amount).standing
        elif amount > 0 and s.open:
            s = credit_note(s, s.open[which % len(s.open)][0], amount).standing
        assert s.balance == sum(a for _, a in s.open) - s.credit
        assert s.credit >= 0 and all(a > 0 for _, a in s.open)


@given(s=standings, extra=st.integers(1, 5000), total=st.integers(0, 10_000))
def test_an_overpayment_pays_the_next_invoice(s: Standing, extra: int, total: int) -> None:
    owed = sum(a for _, a in s.open)
    paid = pay(s, owed + extra).standing
    assert (paid.open, paid.credit) == ((), s.credit + extra)
    after = issue(paid, "NEXT", total)
    assert after.open_of("NEXT") == max(total - paid.credit, 0)
    assert after.credit == max(paid.credit - total, 0)
