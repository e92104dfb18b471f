"""Finding customers by name through the keyed blind index: whole words, any order,
accents and case ignored; no name in clear in any key; kept up when a customer is
created, renamed or taken back; filled for customers stored before it existed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from charging.errors import InvalidRequest, NotFound
from provisioning import keys
from provisioning.customers import Customer, Customers
from provisioning.names import MAX_WORDS, NameIndex, crm_salt, name_print, words
from provisioning.screening import Screener
from tests.conftest import SEALER


def test_words_are_case_folded_without_accents() -> None:
    assert words("José  O'Brien-NÚÑEZ") == {"jose", "o", "brien", "nunez"}
    assert words("Straße") == {"strasse"}
    assert words(" _-. ") == frozenset()


def test_prints_are_keyed() -> None:
    assert name_print("salt-a", "anna") == name_print("salt-a", "anna")
    assert name_print("salt-a", "anna") != name_print("salt-b", "anna")
    assert "anna" not in name_print("salt-a", "anna")


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def store(client: aioredis.Redis) -> tuple[aioredis.Redis, Customers]:
    customers = Customers(client, Screener(client, "the-salt"), SEALER)
    people = ["Anna Muster", "Anna-Lena Müller", "Jürgen Muster", "Nordwind Logistik GmbH", "Ánna Schmidt"]
    for n, name in enumerate(people, 1):
        await customers.create(Customer(str(n), "INDIVIDUAL", created=n, name=name))
    return client, customers


def ids(found: tuple[list[Customer], str]) -> list[str]:
    return [c.id for c in found[0]]


async def test_whole_words_any_order_accents_and_case_ignored(client: aioredis.Redis) -> None:
    client, customers = await store(client)
    assert ids(await customers.named("anna")) == ["1", "2", "5"]
    assert ids(await customers.named("MUSTER anna")) == ["1"]
    assert ids(await customers.named("muller")) == ["2"]
    assert ids(await customers.named("Müller Lena")) == ["2"]
    assert ids(await customers.named("muster")) == ["1", "3"]
    assert ids(await customers.named("Must")) == []  # whole words only
    assert await customers.named("  ") == ([], "")
    # A page at a time, and with the listing's other filters.
    first, token = await customers.named("anna", size=2)
    assert ([c.id for c in first], token) == (["1", "2"], "2")
    assert await customers.named("anna", size=2, after=int(token)) == ([await customers.get("5")], "")
    await client.hset(keys.customer("2"), "kind", "CORPORATE")
    assert ids(await customers.named("anna", kind="CORPORATE")) == ["2"]
    assert ids(await customers.search(name="anna", kind="INDIVIDUAL")) == ["1", "5"]
    with pytest.raises(InvalidRequest) as err:
        await customers.named(" ".join(f"w{n}" for n in range(MAX_WORDS + 1)))
    assert err.value.field == "name"
    # Nothing of a name in clear in the keys: only keyed prints.
    every_key = " ".join([str(k) for k in await client.keys("*")]).casefold()
    assert "anna" not in every_key and "muster" not in every_key
    assert await client.smembers(keys.name_words(name_print("the-salt", "anna"))) == {"1", "2", "5"}


async def test_renaming_moves_the_customer_and_refusal_takes_it_back(client: aioredis.Redis) -> None:
    client, customers = await store(client)
    await customers.rename("1", "Anna Beispiel")
    assert ids(await customers.named("muster")) == ["3"]
    assert ids(await customers.named("beispiel anna")) == ["1"]
    assert (await customers.get("1")) == Customer("1", "INDIVIDUAL", created=1, name="Anna Beispiel")
    assert not await client.sismember(keys.name_words(name_print("the-salt", "muster")), "1")
    with pytest.raises(NotFound):
        await customers.rename("99", "Nobody")
    pipe = client.pipeline(transaction=True)
    customers.forget_in(pipe, "3", "Jürgen Muster")
    await pipe.execute()
    assert await customers.named("muster") == ([], "")
    assert not await client.exists(keys.name_words(name_print("the-salt", "jurgen")))


async def test_a_stale_entry_never_shows(client: aioredis.Redis) -> None:
    client, customers = await store(client)
    # An index entry the customer's name does not back (left by a crash between steps).
    await client.sadd(keys.name_words(name_print("the-salt", "muster")), "4")
    assert ids(await customers.named("muster")) == ["1", "3"]


async def test_backfill_indexes_customers_stored_before_the_index(client: aioredis.Redis) -> None:
    client, customers = await store(client)
    index_keys = [str(k) for k in await client.keys("{crm}:name:*")]
    await client.delete(*index_keys)
    assert await customers.named("anna") == ([], "")
    assert await client.get(keys.SALT) is None
    assert await crm_salt(client, "") == ""
    await client.set(keys.SALT, "the-salt")
    salt = await crm_salt(client, "")
    assert salt == "the-salt" and await crm_salt(client, "configured") == "configured"
    index = NameIndex(client, salt)
    assert await index.backfill(SEALER) == 5
    assert ids(await customers.named("anna")) == ["1", "2", "5"]
    assert await index.backfill(SEALER) == 5  # again: the same sets
    assert sorted(str(k) for k in await client.keys("{crm}:name:*")) == sorted(index_keys)
