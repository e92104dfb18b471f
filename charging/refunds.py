"""Refund tokens (3GPP TS 32.299 Refund-Information): what a debit answer hands out and a
refund presents to get back what that debit took.

The token names the debit's refund record, which the debiting script wrote in the
account's hash slot with what each bucket and the money gave (an event's with its
answer, ``keys.event``; a session's in ``keys.session_refunds``); ``ledger_lib.lua``
``take_refund`` consumes it. An event debit's token names its event id; a session
request's names the session id and the request number, and covers the usage of every
rating group that request reported (the refund names the rating group). Tokens are
opaque bytes to clients (a versioned reference; JSON tools such as grpcurl and the
bundled client show them in base64, as the protobuf JSON mapping does for bytes). They
grant nothing by themselves: a record is found only under the account of the subscriber
asking, and gives back at most what its debit took.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

VERSION = "1"
# The ids a record can be under: event and session ids as the API accepts them.
ID = re.compile(r"^[\x21-\x7e]{1,256}$")
MAX_REQUEST_NUMBER = 2**32 - 1
MAX_TOKEN_BYTES = 400


@dataclass(frozen=True)
class RefundRef:
    """The debit a token names: an event (``request_number`` 0), or one session request."""

    kind: Literal["e", "s"]
    debit_id: str
    request_number: int = 0

    @property
    def token(self) -> bytes:
        if self.kind == "e":
            text = f"{VERSION}:e:{self.debit_id}"
        else:
            text = f"{VERSION}:s:{self.request_number}:{self.debit_id}"
        return text.encode()

    @property
    def field(self) -> str:
        """The record's field in a session's refund hash; "" for an event's record."""
        return str(self.request_number) if self.kind == "s" else ""


def event_token(event_id: str) -> bytes:
    return RefundRef("e", event_id).token


def session_token(session_id: str, request_number: int) -> bytes:
    return RefundRef("s", session_id, request_number).token


def parse_token(token: bytes) -> RefundRef | None:
    """The debit a token names, or None when it is not a token this system hands out."""
    if not token or len(token) > MAX_TOKEN_BYTES:
        return None
    try:
        text = token.decode("ascii")
    except UnicodeDecodeError:
        return None
    version, _, rest = text.partition(":")
    kind, _, rest = rest.partition(":")
    ref: RefundRef | None = None
    if version != VERSION:
        return None
    if kind == "e" and ID.match(rest):
        ref = RefundRef("e", rest)
    elif kind == "s":
        number, _, session_id = rest.partition(":")
        if number.isdigit() and int(number) <= MAX_REQUEST_NUMBER and ID.match(session_id):
            ref = RefundRef("s", session_id, int(number))
    # One spelling per token (no leading zeros in a request number).
    return ref if ref is not None and ref.token == token else None
