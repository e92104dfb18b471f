"""Every Redis key the system uses, built in one place.

Keys that belong to a billing account start with the hash tag of the account's pool
``{a:<root>}`` so that one pool's keys land in one Redis Cluster slot and every Lua
script touches a single slot. A standalone account is its own root (id ``5``, prefix
``{a:5}``); a member of a corporate pool has an id ``<root>.<n>`` (``5.2``, prefix
``{a:5}:2``), so its keys share the slot of the pool it draws on. Global keys are few:
the identity index, the account id sequence, the catalogs (``catalog:...``, laid out by
``documents.py``), the notification stream and
the due indexes of the sweeper and the renewer, each in ``DUE_SHARDS`` shards with a hash tag
of their own (``{sweep:<n>}``, ``{renew:<n>}``), so that on a Redis Cluster the shards
spread over the primaries (``due_shards.py``).

Per account (PREFIX as above):
  PREFIX                 hash: balance, reserved, plan, status, msisdn, imsi, currency
  PREFIX:sx              zset: open session id -> supervision deadline (ms)
  PREFIX:s:SESSION       hash: per rating group u<rg> reserved units, m<rg> reserved money,
                         c<rg> cumulative used units, n<rg> request number of the reservation,
                         t<rg> tariff change time its grant announced (0: none);
                         dl deadline, cv catalog version the session is rated with
  PREFIX:r:N:SESSION     string: answer to request number N of SESSION (retransmissions)
  PREFIX:e:EVENT         string: answer to a debit/refund event (idempotency); a debit's
                         is followed by its refund record (event.lua)
  PREFIX:rf:s:SESSION    hash: request number -> refund record of the usage it debited
  PREFIX:t:KEY           string: answer to a top-up or bundle purchase (idempotency)
  PREFIX:bk              hash: bucket id -> packed unit bucket (see ledger_lib.lua)
  PREFIX:out             list: notifications waiting to be relayed to the stream
  PREFIX:cdr             list: usage records and money movements waiting to be relayed to
                         PostgreSQL (charging/cdrs.py, charging/cdr_relay.py)
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

from charging.document_history import history_key
from charging.documents import current_key, records_key

ACCOUNT_SEQ = "seq:account"

# The due indexes (``due_index.lua``): the sweeper's (accounts with sessions or buckets to
# look after) and the renewer's (accounts whose plan renews a bundle). Each is a zset
# account -> time to look (ms) and a hash account -> epoch, in DUE_SHARDS shards with a
# hash tag each; an account is in the shard ``due_shard`` names. With redis-cli's even
# slot ranges the 16 tags fall 7, 5 and 4 on 3 primaries (tests/test_due_shards.py); more
# primaries than shards would leave some without a shard.
DUE_SHARDS = 16
# The single indexes of before the shards, moved into them once (``due_shards.py``).
UNSHARDED_SWEEP = ("{sweep}:due", "{sweep}:epoch")
UNSHARDED_RENEW = ("{renew}:due", "{renew}:epoch")


def due_shard(account_id: str) -> int:
    """The due-index shard of an account (a stable hash of its id)."""
    return zlib.crc32(account_id.encode()) % DUE_SHARDS


def sweep_shard(shard: int) -> tuple[str, str]:
    return (f"{{sweep:{shard}}}:due", f"{{sweep:{shard}}}:epoch")


def renew_shard(shard: int) -> tuple[str, str]:
    return (f"{{renew:{shard}}}:due", f"{{renew:{shard}}}:epoch")


SWEEP_SHARDS = tuple(sweep_shard(n) for n in range(DUE_SHARDS))
RENEW_SHARDS = tuple(renew_shard(n) for n in range(DUE_SHARDS))


def sweep_index(account_id: str) -> tuple[str, str]:
    """The sweeper's index shard that holds the account."""
    return SWEEP_SHARDS[due_shard(account_id)]


def renew_index(account_id: str) -> tuple[str, str]:
    """The renewer's index shard that holds the account."""
    return RENEW_SHARDS[due_shard(account_id)]


# Pub/sub channel of account signals (``signals.py``): "<kind> <account id>", heard by
# every process's signal hub, which hands them to the Diameter door and the gRPC watchers.
SIGNALS = "signals:accounts"
# On a Redis Cluster the signals go on sharded channels (SPUBLISH/SSUBSCRIBE), one per
# due shard with a hash tag of its own, so each primary carries its share of them (the 16
# tags fall 5, 5 and 6 on 3 primaries): a PUBLISH on the one channel above is sent by one
# primary to every node of the cluster, whatever the account (every top-up's signal).
SIGNAL_CHANNELS = tuple(f"{{signals:{n}}}:accounts" for n in range(DUE_SHARDS))


def account_signals(account_id: str) -> str:
    """The sharded signal channel of an account (on a Redis Cluster)."""
    return SIGNAL_CHANNELS[due_shard(account_id)]


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


def cdr_outbox(account_id: str) -> str:
    """list: usage records and money movements (JSON arrays, charging/cdrs.py) waiting for
    the relay to PostgreSQL. In the account's own slot, like every key a script touches."""
    return account_tag(account_id) + ":cdr"


# SCAN pattern of every CDR outbox (a standalone account's, a pool member's); the match
# is checked again with CDR_OUTBOX_KEY (a session id may end in ":cdr").
CDR_OUTBOX_PATTERN = "{a:*:cdr"
CDR_OUTBOX_KEY = re.compile(r"^\{a:([^}:]+)\}(?::(\d+))?:cdr$")


def cdr_outbox_account(key: str) -> str | None:
    """The account whose CDR outbox ``key`` is, or None for any other key."""
    m = CDR_OUTBOX_KEY.match(key)
    if m is None:
        return None
    return m.group(1) + ("." + m.group(2) if m.group(2) else "")


def event(account_id: str, event_id: str) -> str:
    return account_tag(account_id) + ":e:" + event_id


def session_refunds(account_id: str, session_id: str) -> str:
    """hash: request number -> what the usage that request reported took, for its refunds."""
    return account_tag(account_id) + ":rf:s:" + session_id


def topup(account_id: str, idempotency_key: str) -> str:
    return account_tag(account_id) + ":t:" + idempotency_key


def identity(kind: str, value: str) -> str:
    """Index from a subscriber identity (kind ``msisdn`` or ``imsi``) to its account id."""
    return f"id:{kind}:{value}"


# Stream of notifications (thresholds, expiries) for other parts of the system.
NOTIFICATIONS = "stream:notifications"


# Postpaid usage of a charging account (written by the debiting scripts, ledger_lib.lua).
def usage(account_id: str) -> str:
    """hash: "<period>|<service>|<zone>|<band>|<roaming>" -> "units,cost micros,records"."""
    return account_tag(account_id) + ":u"


def usage_records(account_id: str) -> str:
    """list: itemised usage records, oldest first."""
    return account_tag(account_id) + ":ud"


# Billing's key names are postpaid's own (postpaid/keys.py).


# Which accounts are on which plan (plan_index.py). Global keys like the identity index:
# a catalog load checks and changes them in one script, apart from any account's slot,
# so they share one hash tag, {catalog} (one slot on a Redis Cluster).
# The catalog's versions are a document store named "{catalog}" (documents.py builds
# {catalog}:v:<version> and {catalog}:current); the plan index's scripts need the pointer.
CATALOG = "{catalog}"
CATALOG_CURRENT = current_key(CATALOG)
CATALOG_RECORDS = records_key(CATALOG)  # list: the catalog loads' audit entries, for the relay
CATALOG_HISTORY = history_key(CATALOG)  # list: the catalog versions applied, for the relay
CATALOG_PLANS = "{catalog}:plans"  # set: plan ids of the running catalog (accounts may join these)
PLAN_MOVES = "{catalog}:plan:moves"  # hash: migrated plan -> its successor (kept; a few entries per year)
# The names before the {catalog} tag, renamed at start on a single server (catalogs.py).
UNTAGGED_CATALOG = ("catalog", "catalog:plans", "plan:moves", "plan:members:", "plan:moving:")


def plan_members(plan_id: str) -> str:
    """set: ids of the accounts on the plan (SCARD counts them)."""
    return "{catalog}:plan:members:" + plan_id


def plan_moving(plan_id: str) -> str:
    """set: ids of accounts of a dropped plan whose hash still names it (the load moves them)."""
    return "{catalog}:plan:moving:" + plan_id


# Processes and hosts (charging/leases.py, charging/changes.py).
def lease(job: str, shard: str = "") -> str:
    """The lease of a background job (of one shard of it): one holder among all processes.
    Its own hash tag, so each lease is one key of one slot."""
    return "lease:{" + job + (":" + shard if shard else "") + "}"


CHANGES = "changes"  # pub/sub channel: "<document> <version>" after a change other processes cache


def change_acks(document: str, version: str) -> str:
    """Counter of the processes that applied ``version`` of ``document`` (changes.py)."""
    return f"changes:ack:{document}:{version}"


@dataclass(frozen=True, slots=True)
class AccountKeys:
    """The keys of one account that its charging scripts name, built once per account
    (the hot path's ``Ledger`` keeps them): the same names as the functions above."""

    tag: str
    account: str
    sessions: str
    buckets: str
    outbox: str
    usage: str
    usage_records: str
    cdr_outbox: str
    # A pool member's pool keys: the root's buckets, account hash and outbox (same slot).
    pool: tuple[str, ...]

    @classmethod
    def of(cls, account_id: str) -> AccountKeys:
        root = pool_of(account_id)
        pool = (buckets(root), account(root), outbox(root)) if root is not None else ()
        return cls(
            account_tag(account_id),
            account(account_id),
            sessions(account_id),
            buckets(account_id),
            outbox(account_id),
            usage(account_id),
            usage_records(account_id),
            cdr_outbox(account_id),
            pool,
        )

    def session(self, session_id: str) -> str:
        return self.tag + ":s:" + session_id

    def answer(self, session_id: str, request_number: int) -> str:
        return f"{self.tag}:r:{request_number}:{session_id}"

    def session_refunds(self, session_id: str) -> str:
        return self.tag + ":rf:s:" + session_id

    def event(self, event_id: str) -> str:
        return self.tag + ":e:" + event_id
