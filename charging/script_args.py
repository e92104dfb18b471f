"""The arguments of the ledger's Lua scripts (``charging/*.lua``), one record per script.

A script's ARGV is positional; the record is its only definition on this side. Each
script's header lists ARGV under ``-- ARGV <Record>`` by these field names, in this order,
and the script reads them into locals of the same names; ``tests/test_script_headers.py``
holds the two sides together. A repeated group (a session's rating groups) is a record
of its own, sent as a count followed by the groups.

``to_argv()`` is on the hot path (one call per charging request): a hand-written tuple,
no reflection. Booleans go over the wire as the letters or digits the script compares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol

from charging.rating import NO_RATE

Arg = str | int


class ScriptArgs(Protocol):
    """A script's argument record: what ``LuaScript`` sends as ARGV."""

    def to_argv(self) -> tuple[Arg, ...]: ...


@dataclass(frozen=True, slots=True)
class RatingGroupArgs:
    """One rating group of a session request (17 values)."""

    rating_group: int
    # A result code decided in Python (5031, 4011, 5004), or 0: rate it.
    preset_code: int
    want: int
    final: bool
    validity_s: int
    tariff_change_s: int
    used_before: int
    rate_before: str
    used_after: int
    rate_after: str
    sizing_rate: str
    unit: int
    service: str
    zone: str
    band: str
    roaming: bool
    # The tariff change that rate_before and rate_after are the rates around (s, 0: none
    # found): session.lua refuses a split at another one than the session announced.
    split_at_s: int = 0

    @classmethod
    def unrated(cls, rating_group: int, code: int, final: bool) -> RatingGroupArgs:
        """A rating group answered ``code`` without rating it: nothing wanted, used or rated."""
        return cls(rating_group, code, 0, final, 0, 0, 0, NO_RATE, 0, NO_RATE, NO_RATE, 0, "", "", "", False)

    @classmethod
    def free(
        cls, rating_group: int, final: bool, used: int, unit: int, where: tuple[str, str, str, bool]
    ) -> RatingGroupArgs:
        """A rating group not credit-controlled (4011): not rated, its reported usage
        recorded (``used``: 0 when it could not be counted)."""
        service, zone, band, roaming = where
        return cls(rating_group, 4011, 0, final, 0, 0, used, NO_RATE, 0, NO_RATE, NO_RATE, unit, service, zone, band,
                   roaming)  # fmt: skip

    def to_argv(self) -> tuple[Arg, ...]:
        return (
            self.rating_group,
            self.preset_code,
            self.want,
            1 if self.final else 0,
            self.validity_s,
            self.tariff_change_s,
            self.used_before,
            self.rate_before,
            self.used_after,
            self.rate_after,
            self.sizing_rate,
            self.unit,
            self.service,
            self.zone,
            self.band,
            "R" if self.roaming else "",
            self.split_at_s,
        )


@dataclass(frozen=True, slots=True)
class SessionArgs:
    """session.lua: one INITIAL, UPDATE or TERMINATE request."""

    now_ms: int
    kind: Literal["I", "U", "T"]
    session_id: str
    request_number: int
    digest: str
    identity_field: str
    identity_value: str
    plan_id: str
    answer_ttl_s: int
    supervision_ms: int
    catalog_version: str
    low_balance_micros: int
    terminating: bool
    destination: str
    # Usage is billed while available money stays at or above -overrun_floor (micros).
    overrun_floor: int
    refund_ttl_s: int
    # MCC+MNC of the serving network ("" unknown), written into the usage records.
    visited_network: str
    # Append a usage record per rating group with usage to the record outbox (cdrs.py).
    records: bool
    groups: tuple[RatingGroupArgs, ...]

    def to_argv(self) -> tuple[Arg, ...]:
        argv: tuple[Arg, ...] = (
            self.now_ms,
            self.kind,
            self.session_id,
            self.request_number,
            self.digest,
            self.identity_field,
            self.identity_value,
            self.plan_id,
            self.answer_ttl_s,
            self.supervision_ms,
            self.catalog_version,
            self.low_balance_micros,
            "T" if self.terminating else "O",
            self.destination,
            self.overrun_floor,
            self.refund_ttl_s,
            self.visited_network,
            1 if self.records else 0,
            len(self.groups),
        )
        for g in self.groups:
            argv += g.to_argv()
        return argv


@dataclass(frozen=True, slots=True)
class EventArgs:
    """event.lua: one debit, refund, balance check or price enquiry."""

    # F: a debit the plan rates free (answered 4011, recorded, nothing taken).
    action: Literal["D", "R", "C", "P", "F"]
    digest: str
    identity_field: str
    identity_value: str
    plan_id: str
    rating_group: int
    units: int
    answer_ttl_s: int
    max_balance: int
    rate: str
    unit: int
    service: str
    zone: str
    band: str
    now_ms: int
    low_balance_micros: int
    terminating: bool
    roaming: bool
    destination: str
    event_id: str
    # A refund of session usage: the request number whose record it draws on; "" for a
    # refund of an event and for everything else.
    refund_field: str
    visited_network: str
    # Who asked (identity.caller_name), named in a refund's audit entry.
    actor: str
    records: bool
    # The catalog version a debit was priced with, for its usage record ('' not priced: a refund).
    catalog_version: str = ""

    def to_argv(self) -> tuple[Arg, ...]:
        return (
            self.action,
            self.digest,
            self.identity_field,
            self.identity_value,
            self.plan_id,
            self.rating_group,
            self.units,
            self.answer_ttl_s,
            self.max_balance,
            self.rate,
            self.unit,
            self.service,
            self.zone,
            self.band,
            self.now_ms,
            self.low_balance_micros,
            "T" if self.terminating else "O",
            "R" if self.roaming else "",
            self.destination,
            self.event_id,
            self.refund_field,
            self.visited_network,
            self.actor,
            1 if self.records else 0,
            self.catalog_version,
        )


@dataclass(frozen=True, slots=True)
class TopupArgs:
    """topup.lua: credit the money balance once per idempotency key."""

    digest: str
    amount: int
    answer_ttl_s: int
    max_balance: int
    low_balance_micros: int
    now_ms: int
    # Who asked (identity.caller_name) and on which channel, for the audit entry.
    actor: str
    channel: str
    records: bool

    def to_argv(self) -> tuple[Arg, ...]:
        return (
            self.digest,
            self.amount,
            self.answer_ttl_s,
            self.max_balance,
            self.low_balance_micros,
            self.now_ms,
            self.actor,
            self.channel,
            1 if self.records else 0,
        )


@dataclass(frozen=True, slots=True)
class BuyArgs:
    """buy.lua: buy a bundle with the money balance once per idempotency key."""

    digest: str
    price: int
    answer_ttl_s: int
    now_ms: int
    low_balance_micros: int
    bundle_id: str
    currency: str
    actor: str
    channel: str
    records: bool
    # The new buckets in stored form (charging/buckets.py ``pack``), any number.
    buckets: tuple[str, ...]

    def to_argv(self) -> tuple[Arg, ...]:
        return (
            self.digest,
            self.price,
            self.answer_ttl_s,
            self.now_ms,
            self.low_balance_micros,
            self.bundle_id,
            self.currency,
            self.actor,
            self.channel,
            1 if self.records else 0,
            *self.buckets,
        )


@dataclass(frozen=True, slots=True)
class SweepArgs:
    """sweep.lua: release the sessions past their supervision time."""

    now_ms: int
    # A usage record per released session (Settings.usage_records).
    records: bool
    # The ids of the sessions due when the caller looked; their keys go in KEYS.
    sessions: tuple[str, ...]

    def to_argv(self) -> tuple[Arg, ...]:
        return (self.now_ms, 1 if self.records else 0, *self.sessions)


# due_index.lua: ARGV[1] is the record's OP, the rest are its fields.


@dataclass(frozen=True, slots=True)
class DueHint:
    """Look at the account no later than the deadline."""

    OP: ClassVar[str] = "hint"

    account: str
    deadline_ms: int

    def to_argv(self) -> tuple[Arg, ...]:
        return (self.OP, self.account, self.deadline_ms)


@dataclass(frozen=True, slots=True)
class DueTake:
    """Lease the accounts due by now."""

    OP: ClassVar[str] = "take"

    now_ms: int
    lease_ms: int
    limit: int

    def to_argv(self) -> tuple[Arg, ...]:
        return (self.OP, self.now_ms, self.lease_ms, self.limit)


@dataclass(frozen=True, slots=True)
class DueSettle:
    """Reschedule a taken account, or forget it (``next_ms`` 0)."""

    OP: ClassVar[str] = "settle"

    account: str
    epoch: str
    next_ms: int

    def to_argv(self) -> tuple[Arg, ...]:
        return (self.OP, self.account, self.epoch, self.next_ms)


@dataclass(frozen=True, slots=True)
class OutboxTrimArgs:
    """outbox_trim.lua: the entries copied to the stream, in order."""

    entries: tuple[str, ...]

    def to_argv(self) -> tuple[Arg, ...]:
        return self.entries


@dataclass(frozen=True, slots=True)
class CdrTrimArgs:
    """cdr_trim.lua: the head of a record outbox the relay committed."""

    first: str
    count: int

    def to_argv(self) -> tuple[Arg, ...]:
        return (self.first, self.count)


@dataclass(frozen=True, slots=True)
class PlanJoin:
    """plan_index.lua: put an account on a plan of the running catalog."""

    OP: ClassVar[str] = "join"

    account: str
    plan_id: str

    def to_argv(self) -> tuple[Arg, ...]:
        return (self.OP, self.account, self.plan_id)


@dataclass(frozen=True, slots=True)
class PlanLeave:
    """plan_index.lua: take an account off a plan (its creation failed)."""

    OP: ClassVar[str] = "leave"

    account: str

    def to_argv(self) -> tuple[Arg, ...]:
        return (self.OP, self.account)


@dataclass(frozen=True, slots=True)
class CatalogSwitch:
    """plan_index.lua: make a catalog current unless it strands plans in use."""

    OP: ClassVar[str] = "switch"

    expected_version: str
    version: str
    # JSON {guards: [[label, [key index, ...]], ...],
    #       moves: [[old, new, members old idx, members new idx, moving old idx], ...], plans: [...]}
    plan_json: str
    audit_entry: str = ""  # the load's record outbox entry (cdrs.subject_change_entry), '' for none
    version_entry: str = ""  # the version applied, for the history outbox (document_history.py), '' for none

    def to_argv(self) -> tuple[Arg, ...]:
        return (self.OP, self.expected_version, self.version, self.plan_json, self.audit_entry, self.version_entry)


@dataclass(frozen=True, slots=True)
class PlanIndexInit:
    """plan_index.lua: the running catalog's plans, on the index's first start."""

    OP: ClassVar[str] = "init"

    version: str
    plan_ids: tuple[str, ...]

    def to_argv(self) -> tuple[Arg, ...]:
        return (self.OP, self.version, *self.plan_ids)


@dataclass(frozen=True, slots=True)
class PlanMoveArgs:
    """plan_move.lua: move one account from a migrated plan to its successor."""

    old_plan: str
    new_plan: str

    def to_argv(self) -> tuple[Arg, ...]:
        return (self.old_plan, self.new_plan)


@dataclass(frozen=True, slots=True)
class LeaseExtend:
    """lease.lua: keep a job lease this holder still holds."""

    OP: ClassVar[str] = "extend"

    token: str
    ttl_ms: int

    def to_argv(self) -> tuple[Arg, ...]:
        return (self.OP, self.token, self.ttl_ms)


@dataclass(frozen=True, slots=True)
class LeaseRelease:
    """lease.lua: give back a job lease this holder still holds."""

    OP: ClassVar[str] = "release"

    token: str

    def to_argv(self) -> tuple[Arg, ...]:
        return (self.OP, self.token)
