"""Every Redis key the system uses, built in one place.

Keys that belong to a billing account start with the hash tag of the account's pool
``{a:<root>}`` so that one pool's keys land in one Redis Cluster slot and every Lua
script touches a single slot. A standalone account is its own root (id ``5``, prefix
``{a:5}``); a member of a corporate pool has an id ``<root>.<n>`` (``5.2``, prefix
``{a:5}:2``), so its keys share the slot of the pool it draws on. Global keys are few:
the identity index, the account id sequence, the catalogs, the notification stream and
the due indexes of the sweeper and the renewer (tags ``{sweep}``, ``{renew}``).

Per account (PREFIX as above):
  PREFIX                 hash: balance, reserved, plan, status, msisdn, imsi, currency
  PREFIX:sx              zset: open session id -> supervision deadline (ms)
  PREFIX:s:SESSION       hash: per rating group u<rg> reserved units, m<rg> reserved money,
                         c<rg> cumulative used units, n<rg> request number of the reservation;
                         dl deadline, cv catalog version the session is rated with
  PREFIX:r:N:SESSION     string: answer to request number N of SESSION (retransmissions)
  PREFIX:e:EVENT         string: answer to a debit/refund event (idempotency)
  PREFIX:t:KEY           string: answer to a top-up or bundle purchase (idempotency)
  PREFIX:bk              hash: bucket id -> packed unit bucket (see ledger_lib.lua)
  PREFIX:out             list: notifications waiting to be relayed to the stream
"""

from __future__ import annotations

ACCOUNT_SEQ = "seq:account"
SWEEP_DUE = "{sweep}:due"
SWEEP_EPOCH = "{sweep}:epoch"
SWEEP_INDEX = (SWEEP_DUE, SWEEP_EPOCH)
# Accounts whose plan renews a bundle, by the time of the next renewal.
RENEW_INDEX = ("{renew}:due", "{renew}:epoch")


def pool_of(account_id: str) -> str | None:
    """The root account whose buckets a pool member draws on, or None."""
    root, dot, _member = account_id.partition(".")
    return root if dot else None


def account_tag(account_id: str) -> str:
    root, dot, member = account_id.partition(".")
    return "{a:" + root + "}" + (":" + member if dot else "")


def account(account_id: str) -> str:
    return account_tag(account_id)


def sessions(account_id: str) -> str:
    return account_tag(account_id) + ":sx"


def session_prefix(account_id: str) -> str:
    return account_tag(account_id) + ":s:"


def session(account_id: str, session_id: str) -> str:
    return session_prefix(account_id) + session_id


def answer(account_id: str, session_id: str, request_number: int) -> str:
    return f"{account_tag(account_id)}:r:{request_number}:{session_id}"


def buckets(account_id: str) -> str:
    return account_tag(account_id) + ":bk"


def outbox(account_id: str) -> str:
    return account_tag(account_id) + ":out"


def event(account_id: str, event_id: str) -> str:
    return account_tag(account_id) + ":e:" + event_id


def topup(account_id: str, idempotency_key: str) -> str:
    return account_tag(account_id) + ":t:" + idempotency_key


def identity(kind: str, value: str) -> str:
    """Index from a subscriber identity (kind ``msisdn`` or ``imsi``) to its account id."""
    return f"id:{kind}:{value}"


CATALOG_CURRENT = "catalog:current"
# Stream of notifications (thresholds, expiries) for other parts of the system.
NOTIFICATIONS = "stream:notifications"


def catalog(version: str) -> str:
    return "catalog:v:" + version
