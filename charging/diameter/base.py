"""The base protocol's own exchanges (RFC 6733 section 5): CER/CEA, DWR/DWA, DPR/DPA.

Pure: a request's AVPs in, the answer's AVPs out; the connection (``connection.py``)
sends them and changes state. A CER is accepted when its Origin-Host/Realm are allowed
(3010 DIAMETER_UNKNOWN_PEER otherwise) and it advertises the Credit-Control application
(Auth-Application-Id 4, directly, inside Vendor-Specific-Application-Id, or the relay
application); otherwise 5010 DIAMETER_NO_COMMON_APPLICATION. Either refusal closes the
connection after the CEA.

Inband security (RFC 6733 2.2, 6.10; RFC 3588's TLS after CER): the CER lists the
Inband-Security-Id values the peer can do (none listed: NO_INBAND_SECURITY); with
``CHARGING_DIAMETER_INBAND_TLS`` at ``offer`` TLS is chosen when offered, at ``require``
it must be offered; the CEA names the choice and a TLS handshake follows on the same
connection. No common choice: 5017 DIAMETER_NO_COMMON_SECURITY.
"""

from __future__ import annotations

from dataclasses import dataclass

from diameter.message.avp import Avp

from charging.diameter import dictionary as d
from charging.diameter.codec import Refused, new, placeholder, value
from charging.diameter.config import DiameterConfig, InbandTls
from charging.diameter.peers import Peer, admits

PRODUCT_NAME = "charging"
FIRMWARE_REVISION = 1
NO_INBAND_SECURITY = 0
TLS = 1  # Inband-Security-Id TLS
NO_COMMON_SECURITY = 5017
# Disconnect-Cause (RFC 6733 5.4.3)
REBOOTING = 0


@dataclass(frozen=True)
class Identity:
    """Who we are on the wire."""

    origin_host: str
    origin_realm: str
    state_id: int
    host_ip: str

    def origin(self) -> list[Avp]:
        return [new(d.ORIGIN_HOST, self.origin_host.encode()), new(d.ORIGIN_REALM, self.origin_realm.encode())]


def capabilities(me: Identity) -> list[Avp]:
    """What a CEA (or our CER) says about us after Result-Code."""
    return [
        *me.origin(),
        new(d.HOST_IP_ADDRESS, me.host_ip),
        new(d.VENDOR_ID, 0),
        new(d.PRODUCT_NAME, PRODUCT_NAME),
        new(d.ORIGIN_STATE_ID, me.state_id),
        new(d.SUPPORTED_VENDOR_ID, d.TGPP),
        new(d.AUTH_APPLICATION_ID, d.CREDIT_CONTROL_APP),
        new(d.FIRMWARE_REVISION, FIRMWARE_REVISION),
    ]


def text(avp: Avp | None) -> str:
    """A DiameterIdentity (OctetString) or UTF8String value as text."""
    if avp is None:
        return ""
    raw = value(avp)
    if isinstance(raw, bytes):
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise Refused(d.Code.INVALID_AVP_VALUE, avp) from None
    return str(raw)


def origin_of(avps: list[Avp]) -> tuple[str, str]:
    """Origin-Host and Origin-Realm of a message; ``Refused`` 5005 naming the missing one."""
    host, realm = d.find(avps, d.ORIGIN_HOST), d.find(avps, d.ORIGIN_REALM)
    if host is None:
        raise Refused(d.Code.MISSING_AVP, placeholder(d.ORIGIN_HOST))
    if realm is None:
        raise Refused(d.Code.MISSING_AVP, placeholder(d.ORIGIN_REALM))
    return text(host), text(realm)


def check_cer(avps: list[Avp], config: DiameterConfig, remote_ip: str, certified: frozenset[str] | None = None) -> Peer:
    """The peer a CER opens a connection for, or ``Refused`` with the CEA's result code.
    ``certified``: on a TLS connection, the DNS names of the peer's certificate (lower
    case), one of which must be its Origin-Host (RFC 6733 13.1)."""
    host, realm = origin_of(avps)
    if not admits(config, host, realm, remote_ip):
        raise Refused(d.Code.UNKNOWN_PEER, message="peer not allowed")
    if certified is not None and host.lower() not in certified:
        raise Refused(d.Code.UNKNOWN_PEER, message="Origin-Host is not named by the peer's certificate")
    apps = [value(a) for a in d.find_all(avps, d.AUTH_APPLICATION_ID)]
    for group in d.find_all(avps, d.VENDOR_SPECIFIC_APPLICATION_ID):
        apps += [value(a) for a in d.find_all(value(group), d.AUTH_APPLICATION_ID)]
    if d.CREDIT_CONTROL_APP not in apps and d.RELAY_APP not in apps:
        raise Refused(d.Code.NO_COMMON_APPLICATION, message="Auth-Application-Id 4 (Credit-Control) is required")
    state = d.find(avps, d.ORIGIN_STATE_ID)
    return Peer(host, realm, int(value(state)) if state is not None else 0)


def inband_security(avps: list[Avp], mode: InbandTls) -> int:
    """The Inband-Security-Id chosen for a CER's connection (``TLS``: a TLS handshake
    follows the CEA), or ``Refused`` 5017 when the peer offers nothing ``mode`` allows."""
    offered = {value(a) for a in d.find_all(avps, d.INBAND_SECURITY_ID)} or {NO_INBAND_SECURITY}
    if mode != "off" and TLS in offered:
        return TLS
    if mode != "require" and NO_INBAND_SECURITY in offered:
        return NO_INBAND_SECURITY
    if mode == "require":
        raise Refused(NO_COMMON_SECURITY, message="TLS (Inband-Security-Id 1) is required")
    raise Refused(NO_COMMON_SECURITY, message="only NO_INBAND_SECURITY is offered")


def result(code: int, me: Identity, failed: Avp | None = None, message: str = "") -> list[Avp]:
    """Result-Code, our origin, then Error-Message and Failed-AVP when given."""
    avps = [new(d.RESULT_CODE, code), *me.origin()]
    if message:
        avps.append(new(d.ERROR_MESSAGE, message))
    if failed is not None:
        avps.append(new(d.FAILED_AVP, [failed]))
    return avps


def watchdog_answer(me: Identity) -> list[Avp]:
    return [*result(d.Code.SUCCESS, me), new(d.ORIGIN_STATE_ID, me.state_id)]


def watchdog_request(me: Identity) -> list[Avp]:
    return [*me.origin(), new(d.ORIGIN_STATE_ID, me.state_id)]


def disconnect_request(me: Identity, cause: int = REBOOTING) -> list[Avp]:
    return [*me.origin(), new(d.DISCONNECT_CAUSE, cause)]
