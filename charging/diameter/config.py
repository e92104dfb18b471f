"""The Diameter door's settings, read from ``Settings`` once and checked.

``CHARGING_DIAMETER_PEERS`` lists who may connect: comma-separated ``host@realm`` entries
(Origin-Host and Origin-Realm as the peer sends them in its CER), ``*@realm`` for any host
of a realm. Empty: any peer connecting from a loopback address (development), nobody else.

``CHARGING_DIAMETER_DEFAULT_RATING_GROUPS`` maps a Service-Context-Id to the rating group
charged for a Multiple-Services-Credit-Control without Rating-Group and
Service-Identifier (Open5GS sends such), as ``context=rating-group`` pairs.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from charging.errors import InvalidRequest

if TYPE_CHECKING:
    from charging.settings import Settings

# TLS after CER (RFC 6733 inband security): never, when the peer's CER offers it, always.
InbandTls = Literal["off", "offer", "require"]
INBAND_TLS: dict[str, InbandTls] = {"": "off", "off": "off", "offer": "offer", "require": "require"}

DIAMETER_IDENTITY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.\-]{0,253})$")


@dataclass(frozen=True)
class PeerRule:
    """One allow-list entry: an Origin-Host (``*``: any) in an Origin-Realm."""

    host: str
    realm: str

    def admits(self, host: str, realm: str) -> bool:
        return self.realm.lower() == realm.lower() and self.host in ("*", host.lower())


@dataclass(frozen=True)
class DiameterConfig:
    host: str
    port: int
    origin_host: str
    origin_realm: str
    peers: tuple[PeerRule, ...] = ()
    default_rating_groups: Mapping[str, int] = field(default_factory=dict)
    watchdog_s: float = 30.0
    answer_timeout_s: float = 5.0
    # A worker of several (charging serve --workers): the port is shared (charging/listening.py).
    shared: bool = False
    # TLS from the start on a port of its own (host, port), or None.
    tls_address: tuple[str, int] | None = None
    # TLS after CER on the cleartext address (``CHARGING_DIAMETER_INBAND_TLS``).
    inband_tls: InbandTls = "off"

    @property
    def needs_tls(self) -> bool:
        """Whether the door needs the server's TLS context (a TLS port, or TLS after CER)."""
        return self.tls_address is not None or self.inband_tls != "off"

    @property
    def loopback_only(self) -> bool:
        """No allow-list: only peers on this machine are accepted."""
        return not self.peers

    @staticmethod
    def of(s: Settings) -> DiameterConfig | None:
        """The door's configuration, or None when ``CHARGING_DIAMETER_ADDRESS`` is empty.
        A bad value raises ``InvalidRequest`` naming the variable."""
        if not s.diameter_address:
            return None
        host, sep, port = s.diameter_address.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            raise InvalidRequest("CHARGING_DIAMETER_ADDRESS", "must be host:port")
        host = host.strip("[]")
        for name, value in (
            ("CHARGING_DIAMETER_ORIGIN_HOST", s.diameter_origin_host),
            ("CHARGING_DIAMETER_ORIGIN_REALM", s.diameter_origin_realm),
        ):
            if not DIAMETER_IDENTITY.match(value):
                raise InvalidRequest(name, "must be a DiameterIdentity (a host or realm name)")
        peers = tuple(_rule(entry) for entry in s.diameter_peers.split(",") if entry.strip())
        if not peers and not _is_loopback(host):
            raise InvalidRequest(
                "CHARGING_DIAMETER_PEERS", "must list the allowed peers when the address is not loopback"
            )
        tls_address = _tls_address(s)
        if s.diameter_watchdog_s <= 0 or s.diameter_answer_timeout_s <= 0:
            raise InvalidRequest("CHARGING_DIAMETER_WATCHDOG_S", "timers must be more than 0")
        return DiameterConfig(
            shared=bool(s.worker_of),
            host=host,
            port=int(port),
            origin_host=s.diameter_origin_host,
            origin_realm=s.diameter_origin_realm,
            peers=peers,
            default_rating_groups=_defaults(s.diameter_default_rating_groups),
            watchdog_s=s.diameter_watchdog_s,
            answer_timeout_s=s.diameter_answer_timeout_s,
            tls_address=tls_address,
            inband_tls=_inband_tls(s),
        )


def _tls_address(s: Settings) -> tuple[str, int] | None:
    """``CHARGING_DIAMETER_TLS_ADDRESS``: mutual TLS needs the server's certificate and
    the CA that signs the peers' (RFC 6733 13.1: both ends are authenticated)."""
    if not s.diameter_tls_address:
        return None
    name = "CHARGING_DIAMETER_TLS_ADDRESS"
    host, sep, port = s.diameter_tls_address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise InvalidRequest(name, "must be host:port")
    if not (s.tls_cert and s.tls_key and s.tls_client_ca):
        raise InvalidRequest(name, "needs CHARGING_TLS_CERT, CHARGING_TLS_KEY and CHARGING_TLS_CLIENT_CA")
    return host.strip("[]"), int(port)


def _inband_tls(s: Settings) -> InbandTls:
    """``CHARGING_DIAMETER_INBAND_TLS``: ``off`` (or empty), ``offer`` or ``require``; TLS
    needs the same certificate settings as the TLS port."""
    name = "CHARGING_DIAMETER_INBAND_TLS"
    mode = INBAND_TLS.get(s.diameter_inband_tls.strip().lower())
    if mode is None:
        raise InvalidRequest(name, "must be off, offer or require")
    if mode != "off" and not (s.tls_cert and s.tls_key and s.tls_client_ca):
        raise InvalidRequest(name, "needs CHARGING_TLS_CERT, CHARGING_TLS_KEY and CHARGING_TLS_CLIENT_CA")
    return mode


def _rule(entry: str) -> PeerRule:
    host, sep, realm = entry.strip().partition("@")
    if not sep or not DIAMETER_IDENTITY.match(realm) or not (host == "*" or DIAMETER_IDENTITY.match(host)):
        raise InvalidRequest("CHARGING_DIAMETER_PEERS", f"{entry.strip()!r} is not host@realm or *@realm")
    return PeerRule(host.lower(), realm.lower())


def _defaults(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for entry in text.split(","):
        if not entry.strip():
            continue
        context, sep, group = entry.strip().rpartition("=")
        if not sep or not context or not group.isdigit() or int(group) > 0xFFFFFFFF:
            raise InvalidRequest(
                "CHARGING_DIAMETER_DEFAULT_RATING_GROUPS", f"{entry.strip()!r} is not service-context-id=rating-group"
            )
        out[context] = int(group)
    return out


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_peer(address: str) -> bool:
    """Whether a connecting socket's address is this machine (IPv4-mapped IPv6 too)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback
