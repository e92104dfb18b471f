"""The dunning ladder: tables and properties. No server."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postpaid.dunning import (
    DEFAULT_LADDER,
    SEVERITY,
    ChangeState,
    Channel,
    Decision,
    InvoiceStatus,
    Ladder,
    LadderError,
    LateFee,
    Notify,
    OpenInvoice,
    Restore,
    ServiceState,
    Step,
    StepAction,
    collectible,
    evaluate,
    overdue,
    status,
)

DUE = date(2025, 3, 1)
ACTIVE, BARRED, SUSPENDED, TERMINATED = (
    ServiceState.ACTIVE,
    ServiceState.BARRED_OUTGOING,
    ServiceState.SUSPENDED,
    ServiceState.TERMINATED,
)
STEPS = {s.name: s for s in DEFAULT_LADDER.steps}
NONE: frozenset[tuple[str, str]] = frozenset()


def day(n: int) -> date:
    """``n`` days past the due date."""
    return DUE + timedelta(days=n)


def inv(number: str = "I1", amount: int = 10_000, **kw: Any) -> OpenInvoice:
    return OpenInvoice(number, kw.pop("due", DUE), amount, **kw)


def done_before(invoice: str, step: str) -> frozenset[tuple[str, str]]:
    """What a daily run has recorded up to the day before ``step``."""
    offset = STEPS[step].offset_days
    return frozenset((invoice, s.name) for s in DEFAULT_LADDER.steps if s.offset_days < offset)


def run(invoices: list[OpenInvoice], n: int, state: ServiceState = ACTIVE, done: frozenset = NONE, fee: int = 0):
    return evaluate(DEFAULT_LADDER, invoices, done, state, day(n), reconnection_fee=fee)


# --- each step of the default ladder, reached on its day by a daily run ---------------------------------------


@pytest.mark.parametrize(
    ("step", "state", "actions", "after"),
    [
        ("reminder", ACTIVE, [Notify("I1", "reminder", Channel.EMAIL)], ACTIVE),
        (
            "second_reminder",
            ACTIVE,
            [LateFee("I1", "second_reminder", 500), Notify("I1", "second_reminder", Channel.SMS)],
            ACTIVE,
        ),
        (
            "bar_outgoing",
            ACTIVE,
            [
                Notify("I1", "bar_outgoing", Channel.SMS),
                ChangeState(BARRED, "bar_outgoing: invoice I1 20 days past due, 10000 overdue"),
            ],
            BARRED,
        ),
        (
            "suspend",
            BARRED,
            [
                Notify("I1", "suspend", Channel.EMAIL),
                ChangeState(SUSPENDED, "suspend: invoice I1 35 days past due, 10000 overdue"),
            ],
            SUSPENDED,
        ),
        (
            "terminate",
            SUSPENDED,
            [
                Notify("I1", "terminate", Channel.EMAIL),
                ChangeState(TERMINATED, "terminate: invoice I1 60 days past due, 10000 overdue"),
            ],
            TERMINATED,
        ),
    ],
)
def test_each_step_on_its_day(step: str, state: ServiceState, actions: list[Any], after: ServiceState) -> None:
    d = run([inv()], STEPS[step].offset_days, state, done_before("I1", step))
    assert d.actions == tuple(actions)
    assert d.done == {("I1", step)}
    assert d.state == after


@pytest.mark.parametrize(
    ("days", "step", "target"),
    [
        (-5, None, ACTIVE),
        (0, None, ACTIVE),  # the due date itself: not overdue
        (2, None, ACTIVE),
        (3, "reminder", ACTIVE),
        (9, "reminder", ACTIVE),
        (10, "second_reminder", ACTIVE),
        (19, "second_reminder", ACTIVE),
        (20, "bar_outgoing", BARRED),
        (34, "bar_outgoing", BARRED),
        (35, "suspend", SUSPENDED),
        (59, "suspend", SUSPENDED),
        (60, "terminate", TERMINATED),
        (400, "terminate", TERMINATED),
    ],
)
def test_step_and_target_by_days_past_due(days: int, step: str | None, target: ServiceState) -> None:
    assert status(DEFAULT_LADDER, [inv()], day(days)) == (InvoiceStatus("I1", max(0, days), 10_000, step),)
    assert run([inv()], days).target == target


def test_nothing_happens_between_steps_once_recorded() -> None:
    done = frozenset({("I1", "reminder")})
    assert run([inv()], 7, done=done).actions == ()


# --- thresholds: the account's collectible overdue total against min_overdue ----------------------------------


@pytest.mark.parametrize(
    ("invoices", "step", "target"),
    [
        ([inv(amount=999)], "second_reminder", ACTIVE),  # below 10.00: reminders only
        ([inv(amount=1000)], "bar_outgoing", BARRED),  # the threshold itself is enough
        ([inv(amount=1)], "second_reminder", ACTIVE),  # reminders have no threshold
        # two invoices below the threshold each, above it together: the account total counts
        ([inv("I1", 600), inv("I2", 600, due=day(15))], "bar_outgoing", BARRED),
        # ... but an invoice not yet due does not add to the overdue total
        ([inv("I1", 600), inv("I2", 600, due=day(30))], "second_reminder", ACTIVE),
        # ... nor does a disputed part
        ([inv("I1", 1500, disputed_amount=600)], "second_reminder", ACTIVE),
        ([inv("I1", 600), inv("I2", 900, disputed_amount=500, due=day(1))], "bar_outgoing", BARRED),
        # ... nor an invoice under a promise to pay
        ([inv("I1", 600), inv("I2", 600, due=day(1), promised_until=day(30))], "second_reminder", ACTIVE),
    ],
)
def test_threshold_on_the_account_total(invoices: list[OpenInvoice], step: str, target: ServiceState) -> None:
    assert status(DEFAULT_LADDER, invoices, day(25))[0].step == step
    assert run(invoices, 25).target == target


def test_threshold_gates_each_step_on_its_own() -> None:
    ladder = Ladder(
        (
            Step("big_only", 3, StepAction.NOTIFY, Channel.EMAIL, min_overdue=5000),
            Step("any", 5, StepAction.NOTIFY, Channel.SMS),
        )
    )
    small = [inv(amount=100)]
    assert evaluate(ladder, small, NONE, ACTIVE, day(4)).actions == ()
    d = evaluate(ladder, small, NONE, ACTIVE, day(5))
    assert d.actions == (Notify("I1", "any", Channel.SMS),) and d.done == {("I1", "any")}
    # a later invoice lifts the total over 50.00: "big_only" is reached now, below the current step, so it is
    # recorded silently instead of sending a first reminder after the second
    more = [*small, inv("I2", 6000, due=day(4))]
    d = evaluate(ladder, more, d.done, ACTIVE, day(6))
    assert d.actions == ()
    assert d.done == {("I1", "big_only")}


# --- disputes and promises to pay -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("invoice", "today", "amount"),
    [
        (inv(amount=10_000), day(5), 10_000),
        (inv(amount=10_000, disputed_amount=4_000), day(5), 6_000),
        (inv(amount=10_000, disputed_amount=10_000), day(5), 0),
        (inv(amount=10_000, disputed_amount=12_000), day(5), 0),  # never below 0
        (inv(amount=10_000, promised_until=day(5)), day(5), 0),  # the promised day itself is covered
        (inv(amount=10_000, promised_until=day(5)), day(6), 10_000),  # a broken promise
        (inv(amount=10_000, disputed_amount=3_000, promised_until=day(5)), day(6), 7_000),
    ],
)
def test_collectible(invoice: OpenInvoice, today: date, amount: int) -> None:
    assert collectible(invoice, today) == amount


def test_a_fully_disputed_invoice_is_not_dunned() -> None:
    d = run([inv(disputed_amount=10_000)], 40)
    assert (d.actions, d.done, d.target) == ((), NONE, ACTIVE)
    assert status(DEFAULT_LADDER, [inv(disputed_amount=10_000)], day(40)) == (InvoiceStatus("I1", 40, 0, None),)


def test_a_disputed_invoice_is_not_dunned_for_another_ones_debt() -> None:
    d = run([inv("I1", disputed_amount=10_000), inv("I2", 5_000, due=day(5))], 12)
    assert d.actions == (Notify("I2", "reminder", Channel.EMAIL),)


def test_promise_to_pay_holds_dunning_then_a_broken_promise_catches_up() -> None:
    promised = [inv(promised_until=day(30))]
    for n in (3, 10, 25, 30):
        assert run(promised, n).actions == ()
    d = run(promised, 31)
    assert d.actions == (
        LateFee("I1", "second_reminder", 500),
        Notify("I1", "bar_outgoing", Channel.SMS),
        ChangeState(BARRED, "bar_outgoing: invoice I1 31 days past due, 10000 overdue"),
    )


def test_a_promise_to_pay_restores_a_barred_account() -> None:
    d = run([inv(promised_until=day(40))], 25, BARRED, done_before("I1", "suspend"))
    assert d.actions == (Restore(0),) and d.state == ACTIVE


# --- catch-up after skipped days ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("days", "notify", "fees", "target"),
    [
        (12, Notify("I1", "second_reminder", Channel.SMS), [LateFee("I1", "second_reminder", 500)], ACTIVE),
        (25, Notify("I1", "bar_outgoing", Channel.SMS), [LateFee("I1", "second_reminder", 500)], BARRED),
        (40, Notify("I1", "suspend", Channel.EMAIL), [LateFee("I1", "second_reminder", 500)], SUSPENDED),
        (90, Notify("I1", "terminate", Channel.EMAIL), [LateFee("I1", "second_reminder", 500)], TERMINATED),
    ],
)
def test_catch_up_sends_only_the_current_reminder_and_charges_skipped_fees(
    days: int, notify: Notify, fees: list[LateFee], target: ServiceState
) -> None:
    d = run([inv()], days)
    notifications = [a for a in d.actions if isinstance(a, Notify)]
    assert notifications == [notify]
    assert [a for a in d.actions if isinstance(a, LateFee)] == fees
    assert d.target == target
    assert [a for a in d.actions if isinstance(a, ChangeState)] == (
        []
        if target == ACTIVE
        else [ChangeState(target, f"{notify.step}: invoice I1 {days} days past due, 10000 overdue")]
    )
    # every step passed over is recorded, so none of them is sent or charged later
    assert d.done == {("I1", s.name) for s in DEFAULT_LADDER.steps if s.offset_days <= days}


def test_each_invoice_gets_its_own_step_and_fee() -> None:
    invoices = [inv("I2", 3_000, due=day(10)), inv("I1", 4_000)]
    d = run(invoices, 16)
    assert d.actions == (
        LateFee("I1", "second_reminder", 500),
        Notify("I1", "second_reminder", Channel.SMS),
        Notify("I2", "reminder", Channel.EMAIL),
    )
    assert status(DEFAULT_LADDER, invoices, day(16)) == (
        InvoiceStatus("I1", 16, 4_000, "second_reminder"),
        InvoiceStatus("I2", 6, 3_000, "reminder"),
    )


def test_a_fee_is_charged_once_even_if_its_step_is_reached_again() -> None:
    first = run([inv()], 10, done=done_before("I1", "second_reminder"))
    assert LateFee("I1", "second_reminder", 500) in first.actions
    done = done_before("I1", "second_reminder") | first.done
    # disputed for a while (nothing happens), then the dispute is settled against the customer
    assert run([inv(disputed_amount=10_000)], 12, done=done).actions == ()
    assert run([inv()], 15, done=done).actions == ()


# --- restoration and termination ------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [BARRED, SUSPENDED])
@pytest.mark.parametrize("fee", [0, 1_500])
def test_restoration_after_payment(state: ServiceState, fee: int) -> None:
    done = done_before("I1", "terminate")
    d = run([], 50, state, done, fee)
    assert d.actions == (Restore(fee),)
    assert (d.done, d.target, d.state) == (NONE, ACTIVE, ACTIVE)
    assert run([], 51, d.state, done, fee).actions == ()  # once


@pytest.mark.parametrize(
    "invoices",
    [
        [inv(amount=0)],  # paid, still listed
        [inv(disputed_amount=10_000)],
        [inv("I2", 20_000, due=day(55))],  # the next invoice is not due yet
    ],
)
def test_restoration_when_nothing_collectible_is_overdue(invoices: list[OpenInvoice]) -> None:
    assert run(invoices, 50, SUSPENDED, done_before("I1", "terminate")).actions == (Restore(0),)


def test_a_partial_payment_does_not_lift_a_bar() -> None:
    # 5.00 left: below the bar threshold, so the target is ACTIVE, but something is still overdue
    d = run([inv(amount=500)], 25, BARRED, done_before("I1", "suspend"))
    assert (d.actions, d.target, d.state) == ((), ACTIVE, BARRED)
    # nor does it step a suspension down to a bar
    d = run([inv(amount=5_000)], 25, SUSPENDED, done_before("I1", "suspend"))
    assert (d.actions, d.target, d.state) == ((), BARRED, SUSPENDED)


def test_active_account_with_nothing_overdue_has_nothing_to_do() -> None:
    assert run([], 10, ACTIVE) == Decision((), NONE, ACTIVE, ACTIVE)


@pytest.mark.parametrize("invoices", [[], [inv()], [inv("I2", 10_000, due=day(30))]])
def test_termination_is_final(invoices: list[OpenInvoice]) -> None:
    d = run(invoices, 90, TERMINATED, done_before("I1", "terminate"), fee=1_500)
    assert d.actions == () and d.done == NONE and d.state == TERMINATED


# --- idempotence and monotonicity -----------------------------------------------------------------------------

amounts = st.integers(0, 3_000)
invoice_lists = st.lists(
    st.builds(
        OpenInvoice,
        number=st.sampled_from(["I1", "I2", "I3", "I4"]),
        due=st.integers(-60, 40).map(day),
        open_amount=amounts,
        disputed_amount=st.one_of(st.just(0), amounts),
        promised_until=st.one_of(st.none(), st.integers(-30, 60).map(day)),
    ),
    max_size=4,
    unique_by=lambda i: i.number,
)


@st.composite
def ladders(draw: st.DrawFn) -> Ladder:
    n = draw(st.integers(0, 5))
    offsets = sorted(draw(st.lists(st.integers(1, 80), min_size=n, max_size=n, unique=True)))
    actions = sorted(
        draw(st.lists(st.sampled_from(StepAction), min_size=n, max_size=n)), key=lambda a: list(StepAction).index(a)
    )
    return Ladder(
        tuple(
            Step(
                f"s{k}",
                offsets[k],
                actions[k],
                draw(st.sampled_from(Channel)),
                min_overdue=draw(st.sampled_from([0, 0, 500, 2_000])),
                late_fee=draw(st.sampled_from([0, 300])),
            )
            for k in range(n)
        )
    )


any_ladder = st.one_of(st.just(DEFAULT_LADDER), ladders())
all_records = [(f"I{n}", name) for n in range(1, 5) for name in [*STEPS, "s0", "s1", "s2", "s3", "s4"]]


@settings(max_examples=300)
@given(
    ladder=any_ladder,
    invoices=invoice_lists,
    done=st.frozensets(st.sampled_from(all_records)),
    state=st.sampled_from(ServiceState),
    today=st.integers(-10, 120).map(day),
    fee=st.sampled_from([0, 1_500]),
)
def test_evaluating_again_with_the_decision_applied_does_nothing(
    ladder: Ladder, invoices: list[OpenInvoice], done: frozenset, state: ServiceState, today: date, fee: int
) -> None:
    first = evaluate(ladder, invoices, done, state, today, fee)
    assert first == evaluate(ladder, list(reversed(invoices)), done, state, today, fee)  # deterministic
    assert not first.done & done
    second = evaluate(ladder, invoices, done | first.done, first.state, today, fee)
    assert second.actions == () and second.done == NONE and second.state == first.state


@settings(max_examples=300)
@given(
    ladder=any_ladder,
    invoices=invoice_lists,
    done=st.frozensets(st.sampled_from(all_records)),
    state=st.sampled_from(ServiceState),
    first=st.integers(-10, 120),
    later=st.integers(0, 60),
)
def test_a_later_day_is_never_less_severe(
    ladder: Ladder, invoices: list[OpenInvoice], done: frozenset, state: ServiceState, first: int, later: int
) -> None:
    a = evaluate(ladder, invoices, done, state, day(first))
    b = evaluate(ladder, invoices, done, state, day(first + later))
    assert SEVERITY[a.target] <= SEVERITY[b.target]
    assert SEVERITY[a.state] <= SEVERITY[b.state]
    assert overdue(invoices, day(first)) <= overdue(invoices, day(first + later))


@settings(max_examples=200)
@given(ladder=any_ladder, invoices=invoice_lists, days=st.lists(st.integers(1, 15), max_size=12))
def test_daily_runs_with_gaps(ladder: Ladder, invoices: list[OpenInvoice], days: list[int]) -> None:
    """Runs on scattered days, applying each decision: the state only escalates, each invoice's
    notifications climb the ladder, and every fee is charged once."""
    done: frozenset[tuple[str, str]] = frozenset()
    state, today = ACTIVE, day(-5)
    fees: list[tuple[str, str]] = []
    last_notified: dict[str, int] = {}
    index = {s.name: k for k, s in enumerate(ladder.steps)}
    for gap in days:
        today += timedelta(days=gap)
        d = evaluate(ladder, invoices, done, state, today)
        assert SEVERITY[d.state] >= SEVERITY[state]
        for a in d.actions:
            if isinstance(a, LateFee):
                fees.append((a.invoice, a.step))
            if isinstance(a, Notify):
                assert index[a.step] > last_notified.get(a.invoice, -1)
                last_notified[a.invoice] = index[a.step]
        done, state = done | d.done, d.state
    assert len(fees) == len(set(fees))
    by_name = {s.name: s for s in ladder.steps}
    assert set(fees) == {r for r in done if by_name[r[1]].late_fee}


# --- configuration ---------------------------------------------------------------------------------------------

DEFAULT_CONFIG: list[dict[str, Any]] = [
    {"name": "reminder", "offset_days": 3, "action": "NOTIFY", "channel": "EMAIL"},
    {"name": "second_reminder", "offset_days": 10, "action": "NOTIFY", "channel": "SMS", "late_fee": 500},
    {"name": "bar_outgoing", "offset_days": 20, "action": "BAR_OUTGOING", "channel": "SMS", "min_overdue": 1000},
    {"name": "suspend", "offset_days": 35, "action": "SUSPEND", "channel": "EMAIL", "min_overdue": 1000},
    {"name": "terminate", "offset_days": 60, "action": "TERMINATE", "channel": "EMAIL", "min_overdue": 1000},
]


def test_default_ladder_from_config() -> None:
    assert Ladder.from_config(DEFAULT_CONFIG) == DEFAULT_LADDER
    assert Ladder.from_config([]) == Ladder(())


def changed(index: int, **fields: Any) -> list[dict[str, Any]]:
    config = [dict(step) for step in DEFAULT_CONFIG]
    for key, value in fields.items():
        if value is None:
            del config[index][key]
        else:
            config[index][key] = value
    return config


@pytest.mark.parametrize(
    ("config", "index", "step", "field", "words"),
    [
        (changed(2, offset_days=10), 2, "bar_outgoing", "offset_days", "greater than step 'second_reminder'"),
        (changed(1, offset_days=2), 1, "second_reminder", "offset_days", "greater than step 'reminder'"),
        (changed(0, offset_days=0), 0, "reminder", "offset_days", "at least 1"),
        (changed(0, offset_days="3"), 0, "reminder", "offset_days", "whole number"),
        (changed(0, offset_days=True), 0, "reminder", "offset_days", "whole number"),
        (changed(0, offset_days=None), 0, "reminder", "offset_days", "missing"),
        (changed(4, action="BAR_OUTGOING"), 4, "terminate", "action", "less severe"),
        (changed(3, action="NOTIFY"), 3, "suspend", "action", "less severe"),
        (changed(1, action="SHOUT"), 1, "second_reminder", "action", "one of NOTIFY"),
        (changed(1, channel="FAX"), 1, "second_reminder", "channel", "one of EMAIL, SMS"),
        (changed(2, min_overdue=-1), 2, "bar_outgoing", "min_overdue", "negative"),
        (changed(2, min_overdue=10.5), 2, "bar_outgoing", "min_overdue", "whole number"),
        (changed(1, late_fee=-500), 1, "second_reminder", "late_fee", "negative"),
        (changed(1, name="reminder"), 1, "reminder", "name", "earlier step"),
        (changed(1, name=""), 1, "", "name", "non-empty"),
        (changed(1, fee=500), 1, "second_reminder", "fee", "not a field"),
        ([*DEFAULT_CONFIG, "terminate"], 5, "", "step", "object"),
    ],
)
def test_config_errors_name_the_step_and_field(
    config: list[dict[str, Any]], index: int, step: str, field: str, words: str
) -> None:
    with pytest.raises(LadderError) as e:
        Ladder.from_config(config)
    assert (e.value.index, e.value.step, e.value.field) == (index, step, field)
    assert f"dunning step {index} ({step!r}): {field}: " in str(e.value)
    assert words in str(e.value)


def test_config_must_be_a_list() -> None:
    with pytest.raises(LadderError, match="steps: must be a list"):
        Ladder.from_config({"name": "reminder"})  # type: ignore[arg-type]


def test_steps_built_in_code_are_checked_too() -> None:
    with pytest.raises(LadderError, match=r"dunning step 1 \('b'\): late_fee: must not be negative"):
        Ladder(
            (Step("a", 1, StepAction.NOTIFY, Channel.SMS), Step("b", 2, StepAction.NOTIFY, Channel.SMS, late_fee=-1))
        )


@pytest.mark.parametrize(
    ("kw", "field"),
    [({"open_amount": -1}, "open_amount"), ({"disputed_amount": -5}, "disputed_amount")],
)
def test_invoice_amounts_are_not_negative(kw: dict[str, int], field: str) -> None:
    args: dict[str, Any] = {"number": "I9", "due": DUE, "open_amount": 100, **kw}
    with pytest.raises(ValueError, match=f"invoice I9: {field}"):
        OpenInvoice(**args)


def test_invoice_numbers_are_unique() -> None:
    with pytest.raises(ValueError, match="unique"):
        run([inv("I1"), inv("I1", 5)], 10)
