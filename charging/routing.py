"""Which account, plan and catalog a charging request is rated with.

The account behind an identity and the account's plan come from the in-process cache
(``Directory``), the catalog from ``CatalogBook``, so rating needs no Redis read. Every
ledger script checks what it was given and answers, having changed nothing, UNKNOWN
(the identity is not on that account), PLAN (the account has another plan) or CATALOG
(the session is rated with another catalog version); ``route`` then corrects its view
and tries again. A session script also answers TARIFF (a split report was rated around
another tariff change than the session announced): the attempt has seen the announced
changes in that reply (``sessions.py``) and ``route`` tries again. Each try again is
counted by what the script answered (``charging_stale_view_retries_total{kind}``): a
steady rate of them means caches lag or gateways split reports on another grid.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from charging import metrics
from charging.catalog import Catalog, Plan
from charging.catalogs import CatalogBook
from charging.errors import StorageUnavailable
from charging.ledger import Reply
from charging.subscribers import Directory, Identity

A = TypeVar("A")


@dataclass(frozen=True)
class Target:
    account: str
    # Empty when the account's plan is not cached yet: the script names it.
    plan_id: str
    catalog: Catalog
    plan: Plan | None


async def route(
    directory: Directory,
    catalogs: CatalogBook,
    identity: Identity,
    attempt: Callable[[Target], Awaitable[Reply | A]],
    *,
    unknown_user: A,
    unknown_plan: A,
) -> tuple[Target, Reply] | A:
    """Run ``attempt`` until a script accepts the account, plan and catalog it was given.

    ``attempt`` may answer early (an ``A``) without a script. Returns the accepted target
    with the script's reply, or an early answer, or ``unknown_user`` / ``unknown_plan``.
    """
    catalog = await catalogs.fresh()
    for _ in range(4):
        account = await directory.resolve(identity)
        if account is None:
            return unknown_user
        plan_id = directory.plan_hint(account)
        plan = _plan(catalog, catalogs.current, plan_id) if plan_id else None
        if plan_id and plan is None:
            return unknown_plan
        target = Target(account, plan_id, catalog, plan)
        result = await attempt(target)
        if not isinstance(result, Reply):
            return result
        if result.kind in _RETRIED:
            _RETRIED[result.kind].inc()
        if result.kind == "PLAN":
            directory.learn_plan(account, result.body)
            continue
        if result.kind == "CATALOG":
            pinned = await catalogs.version(result.body)
            if pinned is None:
                return unknown_plan
            catalog = pinned
            continue
        if result.kind == "TARIFF":
            continue
        if result.kind == "UNKNOWN":
            directory.forget(identity)
            if await directory.resolve(identity) == account:
                return unknown_user
            continue
        return target, result
    raise StorageUnavailable("subscriber data kept changing during the request")


_RETRIED = {kind: metrics.STALE_VIEW_RETRIES.labels(kind) for kind in ("PLAN", "CATALOG", "TARIFF", "UNKNOWN")}


def _plan(catalog: Catalog, current: Catalog, plan_id: str) -> Plan | None:
    """The plan to rate an account naming ``plan_id`` with, in ``catalog``: its successor
    while a migration rewrites the accounts; and in an older catalog a session is pinned
    to, the plan the current catalog migrated to ``plan_id`` (the session keeps the
    prices it started with)."""
    plan = catalog.plan_of(plan_id)
    if plan is None and catalog is not current:
        olds = (old for old, new in current.moved_plans.items() if new == plan_id and old in catalog.plans)
        plan = catalog.plans.get(next(olds, ""))
    return plan
