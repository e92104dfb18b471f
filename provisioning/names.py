"""Finding customers by name without keeping names in clear: a keyed blind index.

Names are sealed at rest (``sealing.py``), so Redis cannot compare them. Each word of a
name is normalised (``words``: accents removed, case-folded, split on anything that is
not a letter or digit) and keyed with HMAC-SHA256 under the CRM's secret salt (the one
the identity-document fingerprints use, ``CHARGING_CRM_SALT`` or ``crm:salt``):
``crm:name:<print>`` is the set of ids of the customers with that word in their name.
Without the salt the prints cannot be computed from a guessed name; the set sizes do
show how common a word is, which is what any index of names gives away.

A search for "Müller Anna" intersects the sets of its words (whole words, any order),
then opens each candidate's name and checks its words again, so an entry left behind by
a renamed or forgotten customer never shows up. The index is maintained when a customer
is created, renamed or taken back (``customers.py``) and filled for customers stored
before it existed by ``backfill`` (``charging rotate-data-key`` runs it; running it
again adds nothing).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from provisioning import keys
from provisioning.sealing import Sealer

# A query with more words than this is refused by the callers' checks (each is a set read).
MAX_WORDS = 8
WORD = re.compile(r"[^\W_]+")


def words(name: str) -> frozenset[str]:
    """The words of a name as the index keys them: "José  O'Brien-Núñez" gives
    {"jose", "o", "brien", "nunez"}."""
    decomposed = unicodedata.normalize("NFKD", name)
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return frozenset(WORD.findall(plain.casefold()))


def name_print(salt: str, word: str) -> str:
    """The keyed, non-reversible print of one normalised word."""
    return hmac.new(salt.encode(), b"name\x1f" + word.encode(), hashlib.sha256).hexdigest()[:32]


async def crm_salt(client: aioredis.Redis, configured: str) -> str:
    """The salt the CRM's prints are keyed with: the configured one, else the one the
    server generated into Redis ("" when no server has run yet)."""
    if configured:
        return configured
    stored = await client.get(keys.SALT)
    return "" if stored is None else str(stored)


class NameIndex:
    def __init__(self, client: aioredis.Redis, salt: str) -> None:
        self.client = client
        self.salt = salt

    def prints(self, name: str) -> list[str]:
        return sorted(name_print(self.salt, w) for w in words(name))

    def add_in(self, pipe: Pipeline, customer_id: str, name: str) -> None:
        for p in self.prints(name):
            pipe.sadd(keys.name_words(p), customer_id)

    def remove_in(self, pipe: Pipeline, customer_id: str, name: str) -> None:
        for p in self.prints(name):
            pipe.srem(keys.name_words(p), customer_id)

    async def candidates(self, query: str) -> list[str]:
        """Ids of the customers whose name has every word of ``query``, as the index
        says (callers check the opened names), in id order."""
        prints = self.prints(query)
        if not prints:
            return []
        found = await self.client.sinter([keys.name_words(p) for p in prints])
        return sorted((str(i) for i in found), key=int)

    async def backfill(self, sealer: Sealer) -> int:
        """Index every stored customer's name; answers how many customers were indexed.
        Adding to a set twice changes nothing, so it may run again at any time."""
        indexed = 0
        for customer_id in [str(c) for c in await self.client.zrange(keys.CUSTOMERS, 0, -1)]:
            sealed = await self.client.hget(keys.customer(customer_id), "name")
            if not sealed:
                continue
            pipe = self.client.pipeline(transaction=True)
            self.add_in(pipe, customer_id, sealer.open(str(sealed), "customer.name"))
            await pipe.execute()
            indexed += 1
        return indexed


def matches(query: str, name: str) -> bool:
    """Every word of the query is a word of the name."""
    wanted = words(query)
    return bool(wanted) and wanted <= words(name)
