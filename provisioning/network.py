"""The network side of provisioning: an adapter interface and its HTTP JSON adapter (to
an HLR/HSS or a provisioning gateway).

Commands are idempotent on their ``command_id``: the adapter may send one several
times (a timeout does not tell whether the network applied it) and the network applies
it once. Timeouts, connection failures and 5xx answers are retryable; a 4xx answer is a
rejection that retrying will not fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import httpx


class NetworkError(Exception):
    """The network could not be reached or did not answer in time: try again later."""


class NetworkRejected(Exception):
    """The network refused the command: retrying the same command will not help."""


@dataclass(frozen=True)
class Ack:
    line: str
    state: str


class NetworkAdapter(Protocol):
    async def send(self, line: str, command: str, command_id: str, product: str = "") -> Ack: ...

    async def aclose(self) -> None: ...


class HttpNetworkAdapter:
    def __init__(self, base_url: str, *, timeout_s: float = 2.0) -> None:
        self._client = httpx.AsyncClient(base_url=base_url, timeout=timeout_s)

    async def send(self, line: str, command: str, command_id: str, product: str = "") -> Ack:
        body = {"line": line, "command": command, "command_id": command_id, "product": product}
        try:
            response = await self._client.post("/commands", json=body)
        except httpx.HTTPError as exc:
            raise NetworkError(f"{type(exc).__name__}") from exc
        if response.status_code >= 500:
            raise NetworkError(f"network answered {response.status_code}")
        if response.status_code >= 400:
            raise NetworkRejected(f"network refused {command}: {response.status_code}")
        doc = response.json()
        return Ack(str(doc.get("line", line)), str(doc.get("state", "")))

    async def aclose(self) -> None:
        await self._client.aclose()
