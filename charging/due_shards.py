"""The sharded due indexes of the sweeper and the renewer.

Each index (``due_index.lua``: a zset of accounts by the time to look at them and a hash
of epochs) is kept in ``keys.DUE_SHARDS`` shards, each under a hash tag of its own
(``{sweep:<n>}``, ``{renew:<n>}``), so on a Redis Cluster every primary holds some shards
and serves their share of the hints (one per INITIAL request) and of the takes. An
account lives in one shard (``keys.due_shard``): the hint and the settle of an account
go to its shard, and a pass walks every shard in turn (``take_all``).

Before the shards each index was one pair of keys (``{sweep}:due``, ``{sweep}:epoch``).
``adopt_unsharded`` moves what such an index holds into the shards: each account is
hinted in its shard at the time it was due, then removed from the old index, so a move
interrupted half way is finished by the next start, and an account hinted twice is
looked at no later than the earlier time (a hint only ever brings the time forward).
The old epoch hash is dropped once the old zset is empty: a take in the old index can no
longer happen, and a settle after the move finds a new epoch and keeps the account.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from charging.ledger import Ledger
from charging.store import storage_errors

log = logging.getLogger("charging.due_shards")

BATCH = 500

Index = tuple[str, str]


async def take_all(
    ledger: Ledger, shards: Sequence[Index], now_ms: int, lease_ms: int, limit: int
) -> list[tuple[Index, str, str, int]]:
    """The accounts due by ``now_ms`` in every shard, each with its shard (to settle it
    there), at most ``limit`` per shard."""
    taken: list[tuple[Index, str, str, int]] = []
    for shard in shards:
        for account, epoch, due in await ledger.take_due(shard, now_ms, lease_ms, limit):
            taken.append((shard, account, epoch, due))
    return taken


async def adopt_unsharded(ledger: Ledger, old: Index, index_of: Callable[[str], Index]) -> int:
    """Move the accounts of the unsharded index ``old`` into the shards ``index_of``
    names (see the module docstring); answers how many moved."""
    client = ledger.client
    moved = 0
    with storage_errors():
        while True:
            raw = await client.execute("ZRANGE", old[0], 0, BATCH - 1, "WITHSCORES")
            if not raw:
                break
            pairs = [(str(raw[i]), int(float(raw[i + 1]))) for i in range(0, len(raw), 2)]
            for account, due_ms in pairs:
                await ledger.hint(index_of(account), account, due_ms)
            await client.execute("ZREM", old[0], *[account for account, _ in pairs])
            moved += len(pairs)
        await client.execute("DEL", old[1])
    if moved:
        log.info("due index moved into its shards", extra={"index": old[0], "accounts": moved})
    return moved
