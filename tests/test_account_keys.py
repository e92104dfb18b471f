"""``keys.AccountKeys``, the per-account keys the hot path builds once, names exactly the
keys of the functions in ``keys.py`` (a standalone account and a pool member), in one slot."""

from __future__ import annotations

import pytest

from charging import keys
from charging.cluster_link import slot_of


@pytest.mark.parametrize("account", ["5", "5.2", "123456"])
def test_account_keys_are_the_key_functions_names(account: str) -> None:
    k = keys.AccountKeys.of(account)
    assert (k.tag, k.account, k.sessions, k.buckets, k.outbox) == (
        keys.account_tag(account),
        keys.account(account),
        keys.sessions(account),
        keys.buckets(account),
        keys.outbox(account),
    )
    assert (k.usage, k.usage_records, k.cdr_outbox) == (
        keys.usage(account),
        keys.usage_records(account),
        keys.cdr_outbox(account),
    )
    assert k.session("s;1") == keys.session(account, "s;1")
    assert k.answer("s;1", 7) == keys.answer(account, "s;1", 7)
    assert k.session_refunds("s;1") == keys.session_refunds(account, "s;1")
    assert k.event("e-1") == keys.event(account, "e-1")
    root = keys.pool_of(account)
    assert k.pool == ((keys.buckets(root), keys.account(root), keys.outbox(root)) if root else ())
    names = [k.account, k.sessions, k.session("s"), k.answer("s", 1), k.event("e"), k.cdr_outbox, *k.pool]
    assert len({slot_of(name) for name in names}) == 1
