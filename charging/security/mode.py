"""Which security mode a server starts in, decided from its settings alone (pure).

    TLS certificate and key set      -> SECURED: TLS, callers identified (certificate or
                                        token) and held to their roles
    no TLS, loopback address only    -> LOCAL: the development policy, every caller is
                                        ``local`` with every role (``make run``)
    no TLS, other address, INSECURE  -> INSECURE: as LOCAL, with a warning at every start
    otherwise                        -> refused: ``StartupError`` naming what is missing

A non-loopback address needs both TLS and a policy file: TLS without a policy would
leave every machine caller without an identity.
"""

from __future__ import annotations

import enum
import ipaddress

from charging.errors import StartupError


class Mode(enum.Enum):
    SECURED = "secured"
    LOCAL = "local"
    INSECURE = "insecure"


def is_loopback(address: str) -> bool:
    """Whether host:port listens on loopback only (``localhost``, 127.0.0.0/8, ::1)."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name, or empty (every address)


def decide(addresses: list[str], tls: bool, policy: bool, insecure: bool) -> Mode:
    """The mode for a server listening on ``addresses`` (``StartupError`` when it may not
    start as configured)."""
    exposed = [a for a in addresses if a and not is_loopback(a)]
    if exposed and not (tls and policy):
        if insecure:
            return Mode.INSECURE
        missing = []
        if not tls:
            missing.append("TLS (CHARGING_TLS_CERT and CHARGING_TLS_KEY)")
        if not policy:
            missing.append("policy (CHARGING_POLICY_FILE)")
        raise StartupError(
            f"gRPC address {exposed[0]} is not loopback and has no {' and no '.join(missing)}; "
            "set them, or CHARGING_INSECURE=true to serve it unauthenticated"
        )
    if tls:
        return Mode.SECURED
    return Mode.INSECURE if exposed else Mode.LOCAL
