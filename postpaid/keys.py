"""Every Redis key of billing (postpaid), built in one place (each package owns its key
names; the charging account's own keys, the postpaid usage among them, are in
``charging/keys.py``).
"""

from __future__ import annotations

# Billing documents live under one hash tag, {bill}: an invoice number sequence must be
# gapless per issuer, so issuing is serial anyway, and one slot keeps every billing
# change a single script (accounts, invoices, payments and dunning together).
BILL_DUE = "{bill}:due"  # zset: billing account -> end (s) of its next period to close
BILL_DUNNING = "{bill}:dunning"  # zset: billing account -> earliest due day (s) of an open invoice
BILL_AUDIT = "{bill}:audit"  # stream: adjustments, disputes, write-offs, with who and why
BILL_RUNS = "{bill}:runs"  # list: bill run reports (JSON); before issue 11, now rows in bill_runs
# Issued invoices live in PostgreSQL since issue 11; the keys that held them before
# (invoice, billing_invoices, bill_run, invoice_seq) are read only to move them there.
BILL_INVOICES_MOVED = "{bill}:moved:invoices"  # string: the invoices Redis kept have been moved (postpaid/legacy.py)
# string: the disputes, promises and dunning steps Redis kept have been moved (postpaid/collections_legacy.py)
BILL_COLLECTIONS_MOVED = "{bill}:moved:collections"
# string: the payments, credit notes and refunds only Redis kept have been moved (postpaid/receivables_legacy.py)
BILL_PAYMENTS_MOVED = "{bill}:moved:payments"


def billing_account(ba: str) -> str:
    """hash: customer, label, cycle_day, time_zone, credit, pay_n, paid_since, state, ..."""
    return "{bill}:ba:" + ba


def billing_lines(ba: str) -> str:
    """hash: charging account id -> JSON {line, unit_path} of the lines this account pays for."""
    return "{bill}:ba:" + ba + ":lines"


def billing_pending(ba: str) -> str:
    """list: JSON charges waiting for the next invoice (adjustments, late fees)."""
    return "{bill}:ba:" + ba + ":pending"


def billing_invoices(ba: str) -> str:
    """list: the account's invoice numbers, oldest first."""
    return "{bill}:ba:" + ba + ":inv"


def billing_open(ba: str) -> str:
    """list: numbers of the account's invoices with an open amount, oldest first."""
    return "{bill}:ba:" + ba + ":open"


def billing_payments(ba: str) -> str:
    """list: the account's payment keys, oldest first."""
    return "{bill}:ba:" + ba + ":pay"


def billing_dunning_done(ba: str) -> str:
    """set: "<invoice>|<step>" dunning steps taken and "fee|<invoice>|<step>" fees charged."""
    return "{bill}:ba:" + ba + ":dun"


def line_billing(account_id: str) -> str:
    """string: the billing account a charging account's usage is billed to."""
    return "{bill}:line:" + account_id


def line_history(account_id: str) -> str:
    """list: "<time s>,<state>,<plan>" changes of a postpaid line (rentals are prorated on it)."""
    return "{bill}:hist:" + account_id


def bill_run(ba: str, period: str) -> str:
    """string: the invoice number issued for this account and period (a bill run is idempotent)."""
    return "{bill}:run:" + ba + ":" + period


def invoice_seq(issuer: str) -> str:
    return "{bill}:seq:inv:" + issuer


def credit_note_seq(issuer: str) -> str:
    return "{bill}:seq:cn:" + issuer


def invoice(number: str) -> str:
    """string: the issued invoice document (JSON, immutable)."""
    return "{bill}:inv:" + number


def invoice_state(number: str) -> str:
    """hash: ba, total, open, disputed, due (day, s), status, delivery."""
    return "{bill}:is:" + number


def credit_note(number: str) -> str:
    return "{bill}:cn:" + number


def delivery_lease(number: str) -> str:
    """string, expiring: a process is delivering this invoice."""
    return "{bill}:delivering:" + number


def payment(channel: str, reference: str) -> str:
    return "{bill}:pay:" + channel + ":" + reference


def dispute(dispute_id: str) -> str:
    return "{bill}:disp:" + dispute_id


def customer_disputes(customer_id: str) -> str:
    """zset: the billing disputes about a customer's invoices (score: opened, s)."""
    return "{bill}:cdisp:" + customer_id


def adjustment(adjustment_id: str) -> str:
    return "{bill}:adj:" + adjustment_id


BILL_OUTBOX = "{bill}:out"  # list: billing notifications (dunning steps) waiting to be relayed
BILL_DELIVERY = "{bill}:deliver"  # list: numbers of issued invoices waiting to be delivered
BILL_RECHECK = "{bill}:recheck"  # set: billing accounts to re-evaluate (money moved on them)
BILL_RESTRICTED = "{bill}:restricted"  # set: billing accounts dunning has barred or suspended
BILL_AS_OF = "{bill}:as_of"  # zset: billing account -> the latest instant (s) dunning ran as of
