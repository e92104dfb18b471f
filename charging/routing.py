"""Which account and tariff a charging request goes to.

The account behind an identity and the account's tariff come from the in-process cache
(``Directory``), so rating needs no Redis read. Every ledger script checks both and
answers UNKNOWN or TARIFF, having changed nothing, when the cache was stale; ``route``
then corrects the cache and tries again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from charging.errors import StorageUnavailable
from charging.ledger import Reply
from charging.rating import Tariff
from charging.subscribers import Directory, Identity
from charging.tariffs import TariffBook

A = TypeVar("A")


@dataclass(frozen=True)
class Target:
    account: str
    # Empty when the account's tariff is not cached yet: the script names it.
    tariff_id: str
    tariff: Tariff | None


async def route(
    directory: Directory,
    tariffs: TariffBook,
    identity: Identity,
    attempt: Callable[[Target], Awaitable[Reply | A]],
    *,
    unknown_user: A,
    unknown_tariff: A,
) -> tuple[Target, Reply] | A:
    """Run ``attempt`` until a script accepts the account and tariff it was given.

    ``attempt`` may answer early (an ``A``) without a script. Returns the accepted target
    with the script's reply, or an early answer, or ``unknown_user`` / ``unknown_tariff``.
    """
    for _ in range(3):
        account = await directory.resolve(identity)
        if account is None:
            return unknown_user
        tariff_id = directory.tariff_hint(account)
        tariff = await tariffs.get(tariff_id) if tariff_id else None
        if tariff_id and tariff is None:
            return unknown_tariff
        target = Target(account, tariff_id, tariff)
        result = await attempt(target)
        if not isinstance(result, Reply):
            return result
        if result.kind == "TARIFF":
            directory.learn_tariff(account, result.body)
            continue
        if result.kind == "UNKNOWN":
            directory.forget(identity)
            if await directory.resolve(identity) == account:
                return unknown_user
            continue
        return target, result
    raise StorageUnavailable("subscriber data kept changing during the request")
