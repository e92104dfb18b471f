"""Registering the CHF in an NRF (Nnrf_NFManagement, TS 29.510), so that SMFs that
discover their CHF (free5GC's does, it has no other way) find this one.

With ``CHARGING_NCHF_NRF_URL`` set, a background job (``nrf``) registers the NF profile
(NFRegister: PUT ``{nrf}/nnrf-nfm/v1/nf-instances/{nfInstanceId}``) on its first pass
and then sends a heartbeat (NFUpdate: PATCH ``/nfStatus`` REGISTERED) every
``heartBeatTimer`` seconds, registering again when the NRF has forgotten the instance
(404). An NRF that cannot be reached is retried with the job's backoff; it never stops
the server. On stop the instance is deregistered (DELETE) before the listener drains.

The profile's one service is ``nchf-convergedcharging`` v3 with ``apiPrefix`` =
``CHARGING_NCHF_API_PREFIX`` (or ``http(s)://<address>:<port>`` of the listener); the
instance id is ``CHARGING_NCHF_INSTANCE_ID`` or a UUID derived from the prefix, so a
restarted server replaces its own registration instead of adding another.
"""

from __future__ import annotations

import ipaddress
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

log = logging.getLogger("charging.nchf")

HEARTBEAT_S = 60
SERVICE = "nchf-convergedcharging"


@dataclass(frozen=True)
class Registration:
    nrf_url: str
    api_prefix: str
    instance_id: str

    @staticmethod
    def of(nrf_url: str, api_prefix: str, instance_id: str = "") -> Registration:
        return Registration(
            nrf_url.rstrip("/"), api_prefix.rstrip("/"), instance_id or str(uuid.uuid5(uuid.NAMESPACE_URL, api_prefix))
        )

    @property
    def url(self) -> str:
        return f"{self.nrf_url}/nnrf-nfm/v1/nf-instances/{self.instance_id}"

    def profile(self) -> dict[str, Any]:
        """The NFProfile (TS 29.510) of this CHF."""
        scheme, _, rest = self.api_prefix.partition("://")
        host = rest.split("/", 1)[0].rpartition(":")[0].strip("[]") or rest.split("/", 1)[0]
        out: dict[str, Any] = {
            "nfInstanceId": self.instance_id,
            "nfType": "CHF",
            "nfStatus": "REGISTERED",
            "heartBeatTimer": HEARTBEAT_S,
            "nfServices": [
                {
                    "serviceInstanceId": f"{SERVICE}-0",
                    "serviceName": SERVICE,
                    "versions": [{"apiVersionInUri": "v3", "apiFullVersion": "3.2.0"}],
                    "scheme": scheme,
                    "nfServiceStatus": "REGISTERED",
                    "apiPrefix": self.api_prefix,
                }
            ],
        }
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            out["fqdn"] = host
        else:
            out["ipv4Addresses" if address.version == 4 else "ipv6Addresses"] = [str(address)]
        return out


class NrfClient:
    """Register, keep alive and deregister one NF instance."""

    def __init__(self, registration: Registration, timeout_s: float = 5.0) -> None:
        self.registration = registration
        self._http = httpx.AsyncClient(timeout=timeout_s)
        self.registered = False
        self._closed = False

    async def keep_registered(self) -> None:
        """One pass of the ``nrf`` job: register, or send the heartbeat."""
        if self._closed:
            return  # deregistered on stop: a pass still under way must not register again
        if self.registered:
            answer = await self._http.patch(
                self.registration.url,
                content=b'[{"op": "replace", "path": "/nfStatus", "value": "REGISTERED"}]',
                headers={"content-type": "application/json-patch+json"},
            )
            if answer.status_code == 404:
                self.registered = False
            elif answer.status_code >= 300:
                raise RuntimeError(f"NRF heartbeat answered {answer.status_code}")
            else:
                return
        answer = await self._http.put(self.registration.url, json=self.registration.profile())
        if answer.status_code not in (200, 201):
            raise RuntimeError(f"NRF registration answered {answer.status_code}: {answer.text[:200]}")
        self.registered = True
        log.info("registered in the NRF", extra={"nf_instance_id": self.registration.instance_id})

    async def close(self) -> None:
        """Deregister (best effort: the NRF drops an instance without heartbeats anyway)."""
        self._closed = True
        try:
            if self.registered:
                await self._http.delete(self.registration.url)
                self.registered = False
        except httpx.HTTPError as exc:
            log.warning("NRF deregistration failed", extra={"error": str(exc)})
        finally:
            await self._http.aclose()
