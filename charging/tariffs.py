"""Tariffs in Redis, cached in process.

A stored tariff is immutable: a new price is a new tariff id. That makes the in-process
cache always right and lets a request be rated without reading the tariff from Redis;
the session and event scripts check that the account still has the tariff the request
was rated with.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import redis.asyncio as aioredis

from charging import keys
from charging.errors import Conflict
from charging.rating import Tariff, tariff_from_doc, tariff_to_doc
from charging.store import storage_errors

DEFAULT_TARIFF_ID = "default"


class TariffBook:
    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._cache: dict[str, Tariff] = {}

    async def get(self, tariff_id: str) -> Tariff | None:
        cached = self._cache.get(tariff_id)
        if cached is not None:
            return cached
        with storage_errors():
            raw = await self._client.get(keys.tariff(tariff_id))
        if raw is None:
            return None
        tariff = tariff_from_doc(json.loads(raw))
        self._cache[tariff_id] = tariff
        return tariff

    async def put(self, tariff: Tariff) -> Tariff:
        """Store a new tariff. Storing the same document again is a no-op; another
        document under an existing id is a ``Conflict``."""
        doc = json.dumps(tariff_to_doc(tariff), sort_keys=True)
        with storage_errors():
            created = await self._client.set(keys.tariff(tariff.id), doc, nx=True)
            if not created:
                existing = await self._client.get(keys.tariff(tariff.id))
                if existing is not None and json.loads(existing) != json.loads(doc):
                    raise Conflict(f"tariff {tariff.id} exists with other rates; tariffs are immutable")
        self._cache[tariff.id] = tariff
        return tariff


def load_tariff_file(path: str) -> Tariff:
    """Read a tariff document; an empty path means the bundled default tariff."""
    if path:
        text = Path(path).read_text()
    else:
        text = resources.files("charging").joinpath("default_tariff.json").read_text()
    return tariff_from_doc(json.loads(text))
