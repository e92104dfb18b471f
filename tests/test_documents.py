"""The versioned-document store under the catalog and the coverage table: a bad document
changes nothing, a named version keeps its content, numbered loads each get their own
version, and documents stored before the store existed are read as they are."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from charging.documents import DocumentStore
from charging.errors import Conflict, InvalidRequest


def parse(doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict) or not isinstance(doc.get("version"), str):
        raise InvalidRequest("version", "is required")
    return doc


def version_of(doc: dict[str, Any]) -> str:
    return str(doc["version"])


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield c
    await c.aclose()


async def test_a_named_version_keeps_its_content_and_a_bad_document_changes_nothing(
    client: aioredis.Redis,
) -> None:
    store = DocumentStore(client, "doc", parse, version_of=version_of)
    assert await store.current() is None
    first = await store.load({"version": "a", "x": 1})
    await store.load({"version": "b", "x": 2})
    with pytest.raises(InvalidRequest):
        await store.load({"x": 3})
    with pytest.raises(Conflict):
        await store.load({"version": "a", "x": 9})
    elsewhere = DocumentStore(client, "doc", parse, version_of=version_of)  # another process
    assert (await elsewhere.current_version()) == "b"
    assert await elsewhere.get("a") == first
    assert (await store.load({"x": 1, "version": "a"})).version == "a"  # same content: current again
    assert (await elsewhere.current_version()) == "a"


async def test_numbered_loads_race_and_the_last_version_stays_current(client: aioredis.Redis) -> None:
    stores = [DocumentStore(client, "num", parse) for _ in range(8)]
    loaded = await asyncio.gather(*(s.load({"version": "-", "n": n}) for n, s in enumerate(stores)))
    assert sorted(int(d.version) for d in loaded) == list(range(1, 9))
    current = await DocumentStore(client, "num", parse).current()
    assert current is not None and current.version == "8"


async def test_documents_stored_by_the_earlier_code_are_read_as_they_are(client: aioredis.Redis) -> None:
    await client.set("catalog:v:2026-01", json.dumps({"version": "2026-01"}))
    await client.set("catalog:current", "2026-01")
    await client.set("crm:coverage:seq", 3)
    await client.set("crm:coverage:v:3", json.dumps({"version": "c"}))
    await client.set("crm:coverage:current", 3)
    named = await DocumentStore(client, "catalog", parse, version_of=version_of).current()
    assert named is not None and named.value == {"version": "2026-01"}
    numbered = DocumentStore(client, "crm:coverage", parse)
    assert (await numbered.load({"version": "d"})).version == "4"
    assert await client.get("crm:coverage:v:4") == '{"version":"d"}'
