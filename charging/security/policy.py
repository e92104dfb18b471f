"""The policy file (``CHARGING_POLICY_FILE``): which client certificate is which caller.

    {"clients": [
      {"uri": "spiffe://operator.example/pgw-1", "roles": ["network"]},
      {"dns": "topup.bank.example", "roles": ["channel"], "channels": ["BANK"]},
      {"uri": "spiffe://operator.example/ops", "roles": ["operator", "monitor"]}
    ]}

Each client names one subject alternative name of its certificate, a URI or a DNS name
(exactly one), its roles, and for ``channel`` the TopUp channels it may recharge and
sell on. The file is checked whole at start against ``policy.schema.json`` plus what a
schema cannot say (one of uri/dns, a name listed twice, a channel role without
channels); every bad field is named and the server does not start.

Certificates are trusted by the client CA (``CHARGING_TLS_CLIENT_CA``); the policy only
says what a trusted certificate's name may do. A trusted certificate whose names are not
in the policy has no identity (UNAUTHENTICATED).

The file is followed while the server runs (``PolicyFile``): a change is read within a
second, so a compromised caller is shut out by deleting its entry, without a restart. A
changed file that is not valid is ignored with a warning naming its problems; the policy
in force stays.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from charging.errors import StartupError
from charging.schemas import DocumentInvalid, Problems, Schema, parse_json
from charging.security.identity import Identity

log = logging.getLogger("charging.security")


class PolicyInvalid(DocumentInvalid):
    """Every problem of a policy file."""


_SCHEMA: Schema | None = None


def _schema() -> Schema:
    global _SCHEMA
    if _SCHEMA is None:
        _SCHEMA = Schema("charging.security", "policy.schema.json", "policy", PolicyInvalid)
    return _SCHEMA


@dataclass(frozen=True)
class Policy:
    # ``uri:<uri>`` and ``dns:<name>`` -> the identity of a certificate with that name.
    by_name: dict[str, Identity] = field(default_factory=dict)

    def identify(self, uris: Iterable[str], dns_names: Iterable[str]) -> Identity | None:
        """The identity of a certificate with these subject alternative names: the first
        URI in the policy, else the first DNS name."""
        for uri in uris:
            found = self.by_name.get("uri:" + uri)
            if found is not None:
                return found
        for name in dns_names:
            found = self.by_name.get("dns:" + name.lower())
            if found is not None:
                return found
        return None


def parse_policy(doc: Any) -> Policy:
    """Check a parsed policy document; ``PolicyInvalid`` names every bad field."""
    problems, doc = _schema().validate(doc)
    own: Problems = []
    by_name: dict[str, Identity] = {}
    clients = doc.get("clients", []) if isinstance(doc, dict) else []
    for i, client in enumerate(clients):
        if not isinstance(client, dict):
            continue
        where = f"clients[{i}]"
        names = [k for k in ("uri", "dns") if k in client]
        if len(names) != 1:
            own.append((where, "must name exactly one of uri and dns"))
            continue
        kind = names[0]
        value = str(client[kind]) if kind == "uri" else str(client[kind]).lower()
        key = f"{kind}:{value}"
        roles = frozenset(client.get("roles", ()))
        channels = frozenset(client.get("channels", ()))
        if "channel" in roles and not channels:
            own.append((f"{where}.channels", "is required with the channel role"))
        if channels and "channel" not in roles and "operator" not in roles:
            own.append((f"{where}.channels", "only with the channel or operator role"))
        if key in by_name:
            own.append((f"{where}.{kind}", f"{value} is listed twice"))
            continue
        by_name[key] = Identity(key if kind == "dns" else value, roles, channels)
    problems += [(f, m) for f, m in own if not any(f == p or f.startswith(p + ".") for p, _ in problems)]
    if problems:
        raise PolicyInvalid(problems)
    return Policy(by_name)


def load_policy(path: str) -> Policy:
    """Read and check the policy file; ``StartupError`` naming the file and every problem."""
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise StartupError(f"CHARGING_POLICY_FILE {path}: {exc.strerror}") from None
    try:
        return parse_policy(parse_json(text, "policy", PolicyInvalid))
    except PolicyInvalid as exc:
        raise StartupError(f"CHARGING_POLICY_FILE {path}: {exc}") from None


class PolicyFile:
    """The policy file, checked at start (``StartupError``) and re-read when it changes,
    looked at no more than every ``check_s`` seconds."""

    def __init__(self, path: str, check_s: float = 1.0) -> None:
        self.path = path
        self.check_s = check_s
        self._stamp = self._read_stamp()
        self._policy = load_policy(path)
        self._checked = time.monotonic()

    def _read_stamp(self) -> tuple[int, int]:
        try:
            st = os.stat(self.path)
        except OSError:
            return (0, 0)  # gone: keep the policy in force, and notice its return
        return st.st_mtime_ns, st.st_size

    def current(self) -> Policy:
        now = time.monotonic()
        if now - self._checked < self.check_s:
            return self._policy
        self._checked = now
        stamp = self._read_stamp()
        if stamp == self._stamp or stamp == (0, 0):
            return self._policy
        self._stamp = stamp
        try:
            self._policy = load_policy(self.path)
        except StartupError as exc:
            log.warning("policy file not reloaded", extra={"error": str(exc)})
        else:
            log.info("policy file reloaded", extra={"clients": len(self._policy.by_name)})
        return self._policy
