"""Every Redis key of billing (postpaid), built in one place (each package owns its key
names; the charging account's own keys, the postpaid usage among them, are in
``charging/keys.py``).

A billing account's keys (its hash, lines, pending charges, open invoices, invoice
states, payment records, credit notes, disputes, adjustments, dunning steps) are built
from the account (``account_tag``), and the indexes the background jobs walk (accounts
due for billing, the dunning watch list, restricted and to re-check, the as-of marks,
the delivery queue and the billing outbox) from the account they hold (``due_index(ba)``
and so on) or, for the jobs that walk them, as a tuple of every shard (``DUE_INDEXES``).
Each shard is a hash tag of its own (``{bill.<n>}``), so on a Redis Cluster the shards
spread over the primaries; an account's keys and its entries in the indexes share its
shard's tag, so the scripts that join an account with an index (``settle.lua``,
``pay.lua``, ``dunning.lua``) each run in one slot, atomically. Before the shards every
billing key was under the one tag ``{bill}``: ``postpaid/shards.py`` moves them once.
"""

from __future__ import annotations

import re
import zlib

TAG = "{bill}"  # the one tag of before the shards (and of what only the legacy moves read)
# The shards of billing, each its own hash tag {bill.<n>}: with redis-cli's even slot
# ranges the 16 tags fall 5, 5 and 6 on 3 primaries (tests/test_billing_shards.py).
SHARDS = 16


def shard_of(ba: str) -> int:
    """The shard of a billing account (a stable hash of its id)."""
    return zlib.crc32(ba.encode()) % SHARDS


def shard_tag(shard: int) -> str:
    """The hash tag of a shard's accounts and indexes."""
    return "{bill." + str(shard) + "}"


def account_tag(ba: str) -> str:
    """The hash tag of a billing account's keys (its shard's)."""
    return shard_tag(shard_of(ba))


# Invoices, payments and their gapless numbers live in PostgreSQL; what billing keeps in
# Redis is each account's state (open amounts, credit, dunning steps) and the indexes.
BILL_RUNS = "{bill}:runs"  # list: bill run reports (JSON); before issue 11, now rows in bill_runs
# Issued invoices live in PostgreSQL since issue 11; the keys that held them before
# (invoice, billing_invoices, bill_run, invoice_seq) are read only to move them there.
BILL_INVOICES_MOVED = "{bill}:moved:invoices"  # string: the invoices Redis kept have been moved (postpaid/legacy.py)
# string: the disputes, promises and dunning steps Redis kept have been moved (postpaid/collections_legacy.py)
BILL_COLLECTIONS_MOVED = "{bill}:moved:collections"
# string: the payments, credit notes and refunds only Redis kept have been moved (postpaid/receivables_legacy.py)
BILL_PAYMENTS_MOVED = "{bill}:moved:payments"
# string: every account's credit held before revision 0014 has its opening movement
# (postpaid/credit_movements.py)
BILL_CREDITS_OPENED = "{bill}:moved:credits"


# -- the indexes, per shard


def due_shard(shard: int) -> str:
    """zset: billing account -> end (s) of its next period to close."""
    return shard_tag(shard) + ":due"


def dunning_shard(shard: int) -> str:
    """zset: billing account -> earliest due day (s) of an open invoice."""
    return shard_tag(shard) + ":dunning"


def delivery_shard(shard: int) -> str:
    """list: numbers of issued invoices waiting to be delivered."""
    return shard_tag(shard) + ":deliver"


def recheck_shard(shard: int) -> str:
    """set: billing accounts to re-evaluate (money moved on them)."""
    return shard_tag(shard) + ":recheck"


def restricted_shard(shard: int) -> str:
    """set: billing accounts dunning has barred or suspended."""
    return shard_tag(shard) + ":restricted"


def as_of_shard(shard: int) -> str:
    """zset: billing account -> the latest instant (s) dunning ran as of."""
    return shard_tag(shard) + ":as_of"


def outbox_shard(shard: int) -> str:
    """list: billing notifications (dunning steps) waiting to be relayed."""
    return shard_tag(shard) + ":out"


DUE_INDEXES = tuple(due_shard(n) for n in range(SHARDS))
DUNNING_INDEXES = tuple(dunning_shard(n) for n in range(SHARDS))
DELIVERY_QUEUES = tuple(delivery_shard(n) for n in range(SHARDS))
RECHECK_SETS = tuple(recheck_shard(n) for n in range(SHARDS))
RESTRICTED_SETS = tuple(restricted_shard(n) for n in range(SHARDS))
OUTBOXES = tuple(outbox_shard(n) for n in range(SHARDS))


def credit_outbox_shard(shard: int) -> str:
    """list: movements of the accounts' credit (pay.lua, settle.lua) waiting to be relayed
    to PostgreSQL's ``credit_movements`` (``credit_movements.py``)."""
    return shard_tag(shard) + ":credits"


CREDIT_OUTBOXES = tuple(credit_outbox_shard(n) for n in range(SHARDS))


def settled_shard(shard: int) -> str:
    """set: numbers of the shard's invoices that may be settled (pay.lua, settle.lua,
    dispute.lua and delivery add them), whose state ``postpaid/settled.py`` drops once
    PostgreSQL answers for them."""
    return shard_tag(shard) + ":settled"


SETTLED_SETS = tuple(settled_shard(n) for n in range(SHARDS))


def audit_shard(shard: int) -> str:
    """stream: adjustments, disputes, write-offs, with who and why (PostgreSQL's audit
    trail is the record; the stream keeps its entries for its readers)."""
    return shard_tag(shard) + ":audit"


def audit(ba: str) -> str:
    return audit_shard(shard_of(ba))


def due_index(ba: str) -> str:
    return due_shard(shard_of(ba))


def dunning_index(ba: str) -> str:
    return dunning_shard(shard_of(ba))


def delivery_queue(ba: str) -> str:
    return delivery_shard(shard_of(ba))


def recheck(ba: str) -> str:
    return recheck_shard(shard_of(ba))


def restricted(ba: str) -> str:
    return restricted_shard(shard_of(ba))


def as_of(ba: str) -> str:
    return as_of_shard(shard_of(ba))


def outbox(ba: str) -> str:
    return outbox_shard(shard_of(ba))


def credit_outbox(ba: str) -> str:
    return credit_outbox_shard(shard_of(ba))


def settled(ba: str) -> str:
    return settled_shard(shard_of(ba))


# -- a billing account's keys


def billing_account(ba: str) -> str:
    """hash: customer, label, cycle_day, time_zone, credit, pay_n, paid_since, state, ..."""
    return account_tag(ba) + ":ba:" + ba


def billing_lines(ba: str) -> str:
    """hash: charging account id -> JSON {line, unit_path} of the lines this account pays for."""
    return billing_account(ba) + ":lines"


def billing_pending(ba: str) -> str:
    """list: JSON charges waiting for the next invoice (adjustments, late fees)."""
    return billing_account(ba) + ":pending"


def billing_open(ba: str) -> str:
    """list: numbers of the account's invoices with an open amount, oldest first."""
    return billing_account(ba) + ":open"


def billing_payments(ba: str) -> str:
    """list: the account's payment keys, oldest first: written before revision 0005 only
    (pay.lua no longer keeps it: it grew by one entry a payment), read by the legacy move
    (receivables_legacy.py) and the shard move."""
    return billing_account(ba) + ":pay"


def billing_dunning_done(ba: str) -> str:
    """set: the members ("<invoice>|<step>", "state|<state>|<epoch>", "restore|<epoch>") of
    the last dunning decision applied, which guard its re-application (dunning.lua);
    PostgreSQL's dunning_steps is the record of the steps taken."""
    return billing_account(ba) + ":dun"


def state_prefix(ba: str) -> str:
    """The prefix of the account's invoice states (the scripts build older invoices' keys)."""
    return account_tag(ba) + ":is:"


def invoice_state(ba: str, number: str) -> str:
    """hash: ba, total, open, disputed, due (day, s), status, delivery; only while the
    invoice is not settled (``postpaid/settled.py``)."""
    return state_prefix(ba) + number


def invoice_state_in(shard: int, number: str) -> str:
    """The same, found from the shard (the delivery queue's) rather than the account."""
    return shard_tag(shard) + ":is:" + number


def credit_note_prefix(ba: str) -> str:
    """The prefix of the credit notes' copies pay.lua kept before revision 0016 (no script
    read them; they are written no more and deleted on upgrade, ``settled.py``)."""
    return account_tag(ba) + ":cn:"


def payment(ba: str, channel: str, reference: str) -> str:
    """string: "<digest>|<record JSON>" of a payment, credit note or refund of the account."""
    return account_tag(ba) + ":pay:" + channel + ":" + reference


def dispute(ba: str, dispute_id: str) -> str:
    """hash: a dispute's status and record, with the invoice state it holds."""
    return account_tag(ba) + ":disp:" + dispute_id


def adjustment(ba: str, adjustment_id: str) -> str:
    """string, expiring: an adjustment queued on the account, kept until its outcome is
    committed (``payments.py``)."""
    return account_tag(ba) + ":adj:" + adjustment_id


def delivery_lease(shard: int, number: str) -> str:
    """string, expiring: a process is delivering this invoice (of the shard's queue)."""
    return shard_tag(shard) + ":delivering:" + number


# -- a line's keys (read by the bill run, never joined in a script with the account's)


def line_billing(account_id: str) -> str:
    """string: the billing account a charging account's usage is billed to (in the shard
    of the line's own id: the line's keys are read on their own, never in a script)."""
    return shard_tag(zlib.crc32(account_id.encode()) % SHARDS) + ":line:" + account_id


def line_history(account_id: str) -> str:
    """list: "<time s>,<state>,<plan>" changes of a postpaid line (rentals are prorated on it)."""
    return shard_tag(zlib.crc32(account_id.encode()) % SHARDS) + ":hist:" + account_id


# -- kept only to be moved (legacy modules)


def bill_run(ba: str, period: str) -> str:
    """string: the invoice number issued for this account and period (before issue 11)."""
    return TAG + ":run:" + ba + ":" + period


def invoice_seq(issuer: str) -> str:
    return TAG + ":seq:inv:" + issuer


def credit_note_seq(issuer: str) -> str:
    return TAG + ":seq:cn:" + issuer


def invoice(number: str) -> str:
    """string: the issued invoice document (JSON, immutable; before issue 11)."""
    return TAG + ":inv:" + number


def customer_disputes(customer_id: str) -> str:
    """zset: the billing disputes about a customer's invoices (score: opened, s; before 0008)."""
    return TAG + ":cdisp:" + customer_id


# SCAN pattern of every billing account's keys (any shard); BILLING_ACCOUNT_KEY tells the
# account's hash (its id) from its lines, pending charges and the rest.
BILLING_ACCOUNT_PATTERN = "{bill*}:ba:*"
BILLING_ACCOUNT_KEY = re.compile(r"^\{bill(?:\.\d+)?\}:ba:([^:]+)$")


def billing_account_of(key: str) -> str | None:
    """The billing account whose hash ``key`` is, or None for any other key."""
    m = BILLING_ACCOUNT_KEY.match(key)
    return m.group(1) if m else None


# SCAN patterns of the invoice states and of the credit notes' copies of before revision
# 0016 (any shard). A glob's ``*`` also matches other keys of the shard whose
# client-chosen part holds ``}:is:`` or ``}:cn:`` (a payment record
# ``{bill.3}:pay:CARD:x}:is:y``): a key is one of these only when it is its shard's tag,
# then ``:is:`` (or ``:cn:``), then a number. A number is the issuer's prefix (free text
# up to 200 characters, ``postpaid/config.py``), '-' and its digits (``format_number``,
# the legacy numbers likewise): the prefix may hold ':' or '}', so what tells the keys
# apart is the anchored tag with the shard's digits, the number's '-digits' end and the
# key's type (a hash for a state, a string for a copy).
INVOICE_STATE_PATTERN = "{bill.*}:is:*"
INVOICE_STATE_KEY = re.compile(r"\{bill\.(\d{1,2})\}:is:(.*-\d+)")
CREDIT_NOTE_COPY_PATTERN = "{bill.*}:cn:*"
CREDIT_NOTE_COPY_KEY = re.compile(r"\{bill\.(\d{1,2})\}:cn:(.*-\d+)")


def invoice_state_of(key: str) -> tuple[int, str] | None:
    """The shard and number of the invoice state ``key`` names, or None for any other key."""
    m = INVOICE_STATE_KEY.fullmatch(key)
    return (int(m.group(1)), m.group(2)) if m and int(m.group(1)) < SHARDS else None


def is_credit_note_copy(key: str) -> bool:
    """Whether ``key`` names a credit note's copy of before revision 0016."""
    m = CREDIT_NOTE_COPY_KEY.fullmatch(key)
    return m is not None and int(m.group(1)) < SHARDS


# The names of before the move to PostgreSQL (issue 11, revisions 0005 and 0008), read
# only by the legacy moves (postpaid/legacy.py, collections_legacy.py,
# receivables_legacy.py): those layouts were only ever under the one {bill} tag.
LEGACY_AUDIT = TAG + ":audit"


def legacy_account(ba: str) -> str:
    """A billing account's hash under the one tag (its lines, lists and sets add a suffix)."""
    return TAG + ":ba:" + ba


def legacy_invoice_state(number: str) -> str:
    return TAG + ":is:" + number


def legacy_dispute(dispute_id: str) -> str:
    return TAG + ":disp:" + dispute_id
