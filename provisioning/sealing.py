"""Personal data is sealed before it reaches Redis, with AES-256-GCM.

A sealed value is text, so it fits a hash field, a list element or a string key:

    enc:<key id>:<base64url of a 12-byte random nonce, the ciphertext and its 16-byte tag>

The key id names the key that sealed it, so keys can rotate: the key ring holds every
key still in use, the last one seals, any of them opens (``rotation.py`` re-seals old
values under the newest key). What a value is (``kind``: ``customer.email``,
``order.request``...) is bound to it as associated data: a value copied into another
kind of field does not open. A value without the ``enc:`` prefix was written before
sealing existed and is read as it is, until a rotation seals it.

The key ring comes from ``CHARGING_DATA_KEY`` or the file ``CHARGING_DATA_KEY_FILE``:
entries ``<id>:<base64 of 32 bytes>``, separated by commas or new lines, ids of 1-16
letters, digits, ``-`` or ``_``. With neither, a development key is generated once into
``<redis_dir>/data.key`` (0600) and a warning says so: every process sharing the
data must then read that same file.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from charging.errors import StartupError
from charging.settings import Settings

log = logging.getLogger("provisioning.sealing")

PREFIX = "enc:"
DEV_KEY_FILE = "data.key"
KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,16}$")
NONCE_BYTES = 12


class Unreadable(Exception):
    """A sealed value that no key of the ring opens (an unknown key id, a value altered
    or moved into another kind of field). Never carries the value."""


@dataclass(frozen=True)
class Sealer:
    keys: Mapping[str, AESGCM]
    current: str

    @classmethod
    def from_text(cls, text: str, source: str) -> Sealer:
        """A key ring from ``<id>:<base64>`` entries; the last one seals. ``source``
        names where they came from in errors, which never show key material."""
        keys: dict[str, AESGCM] = {}
        current = ""
        for n, entry in enumerate(re.split(r"[,\s]+", text.strip()), 1):
            kid, _, b64 = entry.partition(":")
            if not KEY_ID.match(kid):
                raise StartupError(f"{source}: entry {n} needs an id of 1-16 letters, digits, - or _ before ':'")
            try:
                raw = base64.b64decode(b64, validate=True)
            except binascii.Error:
                raw = b""
            if len(raw) != 32:
                raise StartupError(f"{source}: key {kid} is not the base64 of 32 bytes")
            if kid in keys:
                raise StartupError(f"{source}: key id {kid} is given twice")
            keys[kid], current = AESGCM(raw), kid
        return cls(keys, current)

    def seal(self, text: str, kind: str) -> str:
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self.keys[self.current].encrypt(nonce, text.encode(), kind.encode())
        return f"{PREFIX}{self.current}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def open(self, value: str, kind: str) -> str:
        """The clear text of a sealed value; a value from before sealing as it is."""
        if not value.startswith(PREFIX):
            return value
        kid, _, b64 = value[len(PREFIX) :].partition(":")
        key = self.keys.get(kid)
        if key is None:
            raise Unreadable(f"{kind}: sealed with key {kid!r}, which is not in the key ring")
        try:
            raw = base64.urlsafe_b64decode(b64)
            return key.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], kind.encode()).decode()
        except (InvalidTag, binascii.Error, ValueError):
            raise Unreadable(f"{kind}: a sealed value does not open with key {kid!r}") from None

    def current_prefix(self) -> str:
        """How every value sealed with the key that seals now begins."""
        return f"{PREFIX}{self.current}:"

    def is_current(self, value: str) -> bool:
        """Sealed with the key that seals now (a rotation leaves it as it is)."""
        return value.startswith(self.current_prefix())


def new_key_entry(kid: str) -> str:
    """A fresh ``<id>:<base64>`` key ring entry."""
    return f"{kid}:{base64.b64encode(secrets.token_bytes(32)).decode()}"


def load_sealer(settings: Settings, *, generate: bool = True) -> Sealer:
    """The key ring the settings name, or the development key file (made if missing,
    unless ``generate`` is false: a tool must not seal with a key no server has)."""
    if settings.data_key:
        return Sealer.from_text(settings.data_key, "CHARGING_DATA_KEY")
    if settings.data_key_file:
        path = Path(settings.data_key_file)
        try:
            text = path.read_text()
        except OSError as exc:
            raise StartupError(f"CHARGING_DATA_KEY_FILE: cannot read {path}: {exc.strerror}") from None
        return Sealer.from_text(text, f"CHARGING_DATA_KEY_FILE ({path})")
    directory = settings.redis_dir
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / DEV_KEY_FILE
    if not generate and not path.exists():
        raise StartupError(f"no data key: set CHARGING_DATA_KEY or CHARGING_DATA_KEY_FILE (no {path} either)")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(new_key_entry("dev1") + "\n")
        log.warning(
            "generated a development key for personal data; set CHARGING_DATA_KEY or CHARGING_DATA_KEY_FILE "
            "in production, and give every process sharing this Redis the same keys",
            extra={"key_file": str(path)},
        )
    return Sealer.from_text(path.read_text(), f"the development key file {path}")
