"""ChargingNotify (TS 32.291 V18.4.0 6.1.3, ``ChargingNotifyRequest`` in its OpenAPI):
the CHF telling an NF consumer, at the ``notifyUri`` it gave, to re-authorize or to stop.

The same account signals as Diameter RAR/ASR (``charging/signals.py``):

    credit   a top-up or a bundle bought: a resource whose last answer carried a
             finalUnitIndication gets {"notificationType": "REAUTHORIZATION",
             "reauthorizationDetails": [{"ratingGroup": rg}, ...]}, the rating groups
             that got the indication, once
    blocked  the line barred, suspended or terminated: {"notificationType":
             "ABORT_CHARGING"}, and the resource is forgotten here

The consumer answers 204 (or 200) and, for a re-authorization, sends its next update,
which is charged as any other (a new grant after the top-up). What it does with the
notification is its business: a lost, refused or unanswered one costs promptness only,
because that next update is answered from the account as it is.

**Sending.** One POST per notification, over HTTP/2: cleartext with prior knowledge (h2c)
to a loopback address, TLS otherwise (the certificate verified against
``CHARGING_TLS_CLIENT_CA``, the operator's NF CA, else the system's CAs; our own
certificate from ``CHARGING_TLS_CERT``/``_KEY`` as the client certificate when set). A
cleartext notifyUri off loopback is not sent to unless ``CHARGING_INSECURE``, as for our
listeners. Each POST is bounded by ``CHARGING_NCHF_NOTIFY_TIMEOUT_S`` in all, never
retried, and counted (``charging_nchf_notifications_total``: answered, refused,
unanswered, insecure, dropped). At most ``MAX_PENDING`` are under way at once; more are
dropped (counted), so a consumer that does not answer never holds up the signal hub or
the process. A 404 means the consumer no longer knows the resource: it is forgotten.

**Which process.** Resources are held by the process that charged them (as the Diameter
door holds its peers' sessions, ``charging/held.py``); signals reach every process over
Redis pub/sub, so the one holding the resource sends. An SMF keeps one HTTP/2 connection
to its CHF, so one worker; if its requests for one resource are spread over several
workers, each that charged it may notify once (the consumer's following update is
idempotent). Neither the notifyUri's path nor any subscriber identity is logged or
labelled: only its host.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import orjson

from charging import signals
from charging.held import HeldSessions
from charging.nchf import metrics
from charging.settings import Settings
from charging.subscribers import Directory, Identity

log = logging.getLogger("charging.nchf")

NotificationType = Literal["REAUTHORIZATION", "ABORT_CHARGING"]
# Notifications under way at once in one process; more are dropped (counted).
MAX_PENDING = 1_000


@dataclass
class Notified:
    """A charging data resource open at this door: where its consumer listens, and the
    rating groups whose last answer carried a finalUnitIndication."""

    account: str
    notify_uri: str
    final_unit: bool = False
    rating_groups: frozenset[int] = field(default=frozenset())


@dataclass(frozen=True)
class Notification:
    uri: str
    type: NotificationType
    rating_groups: tuple[int, ...] = ()

    def body(self) -> dict[str, Any]:
        """The ChargingNotifyRequest."""
        out: dict[str, Any] = {"notificationType": self.type}
        if self.rating_groups:
            out["reauthorizationDetails"] = [{"ratingGroup": rg} for rg in self.rating_groups]
        return out


def is_loopback(uri: str) -> bool:
    host = urlsplit(uri).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_of(uri: str) -> str:
    """The host of a notifyUri, the only part of it that is logged."""
    return urlsplit(uri).hostname or ""


def client_tls(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """TLS towards consumers: their certificate verified (host name included) against
    ``ca`` or the system's CAs; ours presented when given; HTTP/2 by ALPN."""
    context = ssl.create_default_context(cafile=ca or None)
    if cert and key:
        context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])
    return context


class ChargingNotifier:
    """The resources this process charged, and the notifications sent to their consumers."""

    def __init__(
        self,
        directory: Directory,
        *,
        timeout_s: float,
        tls: ssl.SSLContext,
        insecure: bool = False,
        hub: signals.SignalHub | None = None,
        limit: int = 200_000,
    ) -> None:
        self.directory = directory
        self.timeout_s = timeout_s
        self.insecure = insecure
        self.held: HeldSessions[Notified] = HeldSessions(limit)
        # http1=False: HTTP/2 only, with prior knowledge on http:// (h2c), ALPN on https://.
        # trust_env=False: no proxy from the environment between the CHF and its consumers.
        self._http = httpx.AsyncClient(http1=False, http2=True, verify=tls, timeout=timeout_s, trust_env=False)
        self._pending: set[asyncio.Task[None]] = set()
        self._closed = False
        if hub is not None:
            hub.add(self.signalled)

    @classmethod
    def of(cls, s: Settings, directory: Directory, hub: signals.SignalHub | None) -> ChargingNotifier:
        tls = client_tls(s.tls_cert, s.tls_key, s.tls_client_ca)
        return cls(directory, timeout_s=s.nchf_notify_timeout_s, tls=tls, insecure=s.insecure, hub=hub)

    async def hold(self, ref: str, identity: Identity, notify_uri: str, groups: Iterable[tuple[int, bool]]) -> None:
        """Remember an open resource after a successful create or update: ``groups`` are
        the rating groups answered, each with whether it got a finalUnitIndication (the
        ones not answered keep their state)."""
        held = self.held.get(ref)
        if held is None:
            if not notify_uri:
                return  # a consumer that gave no notifyUri cannot be told anything
            account = await self.directory.resolve(identity)  # cached: the core just used it
            if account is None:
                return
            held = Notified(account, notify_uri)
            self.held.record(ref, held)
        elif notify_uri:
            held.notify_uri = notify_uri
        final = set(held.rating_groups)
        for rating_group, final_unit in groups:
            if final_unit:
                final.add(rating_group)
            else:
                final.discard(rating_group)
        held.rating_groups = frozenset(final)
        held.final_unit = bool(final)

    def forget(self, ref: str) -> None:
        """The resource is released, or refused as a whole."""
        self.held.forget(ref)

    async def signalled(self, kind: signals.Kind, account: str) -> None:
        """A hub listener: start the notifications ``kind`` asks for, without waiting for
        their answers."""
        for ref, held in self.held.of_account(account):
            action = signals.due(kind, held.final_unit)
            if action == "reauth":
                notification = Notification(held.notify_uri, "REAUTHORIZATION", tuple(sorted(held.rating_groups)))
                held.final_unit, held.rating_groups = False, frozenset()
            elif action == "abort":
                self.held.forget(ref)
                notification = Notification(held.notify_uri, "ABORT_CHARGING")
            else:
                continue
            self.start(ref, notification)

    def start(self, ref: str, notification: Notification) -> None:
        if self._closed:  # stopping: a signal heard after the door closed goes nowhere
            return
        if len(self._pending) >= MAX_PENDING:
            metrics.NOTIFICATIONS.labels(notification.type, "dropped").inc()
            return
        task = asyncio.create_task(self.send(ref, notification))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def settled(self) -> None:
        """Until every notification under way has been answered or has timed out."""
        while self._pending:
            await asyncio.wait(set(self._pending))

    async def send(self, ref: str, notification: Notification) -> None:
        """POST one notification, once, within the timeout; count what came of it."""
        kind = notification.type
        if notification.uri.startswith("http://") and not (self.insecure or is_loopback(notification.uri)):
            metrics.NOTIFICATIONS.labels(kind, "insecure").inc()
            log.warning("Nchf notification not sent in cleartext", extra={"notify_host": host_of(notification.uri)})
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                answer = await self._http.post(
                    notification.uri,
                    content=orjson.dumps(notification.body()),
                    headers={"content-type": "application/json"},
                )
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            metrics.NOTIFICATIONS.labels(kind, "unanswered").inc()
            log.warning(
                "Nchf notification unanswered",
                extra={"notify_host": host_of(notification.uri), "error": type(exc).__name__},
            )
            return
        if answer.status_code in (200, 204):
            metrics.NOTIFICATIONS.labels(kind, "answered").inc()
            return
        metrics.NOTIFICATIONS.labels(kind, "refused").inc()
        log.warning(
            "Nchf notification refused",
            extra={"notify_host": host_of(notification.uri), "status": answer.status_code},
        )
        if answer.status_code == 404:
            self.held.forget(ref)  # the consumer no longer knows the resource

    async def close(self) -> None:
        self._closed = True
        for task in list(self._pending):
            task.cancel()
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=1.0)
        await self._http.aclose()
