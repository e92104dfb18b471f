"""Recharges from top-up channels, applied once per idempotency key."""

from __future__ import annotations

import re
from dataclasses import dataclass

from charging.errors import Conflict, InvalidRequest, LimitExceeded, NotFound
from charging.ledger import Ledger
from charging.money import MAX_AMOUNT, MAX_BALANCE
from charging.subscribers import Account, Directory, Identity

CHANNELS = ("retail", "bank", "voucher", "app", "ussd", "operator")
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,128}$")


@dataclass(frozen=True)
class Recharge:
    identity: Identity
    amount_micros: int
    channel: str
    idempotency_key: str
    digest: str


@dataclass(frozen=True)
class RechargeResult:
    account_id: str
    currency: str
    balance_micros: int
    reserved_micros: int
    replayed: bool

    @property
    def available_micros(self) -> int:
        return self.balance_micros - self.reserved_micros


def check_recharge(amount_micros: int, channel: str, idempotency_key: str) -> None:
    if not 0 < amount_micros <= MAX_AMOUNT:
        raise InvalidRequest("amount_micros", f"must be between 1 and {MAX_AMOUNT}")
    if channel not in CHANNELS:
        raise InvalidRequest("channel", f"must be one of {', '.join(CHANNELS)}")
    if not IDEMPOTENCY_KEY.match(idempotency_key):
        raise InvalidRequest("idempotency_key", "must be 1-128 printable characters without spaces")


class TopUps:
    def __init__(self, ledger: Ledger, directory: Directory, *, idempotency_ttl_s: int) -> None:
        self.ledger = ledger
        self.directory = directory
        self.idempotency_ttl_s = idempotency_ttl_s

    async def recharge(self, req: Recharge) -> RechargeResult:
        check_recharge(req.amount_micros, req.channel, req.idempotency_key)
        account = await self.directory.resolve(req.identity)
        if account is None:
            raise NotFound("no subscriber has this identity")
        args = (req.digest, req.amount_micros, self.idempotency_ttl_s, MAX_BALANCE)
        reply = await self.ledger.topup(account, req.idempotency_key, args)
        if reply.kind == "UNKNOWN":
            self.directory.forget(req.identity)
            raise NotFound("no subscriber has this identity")
        if reply.kind == "CONFLICT":
            raise Conflict("idempotency_key was already used for another recharge")
        if reply.kind == "LIMIT":
            raise LimitExceeded(f"the balance would exceed {MAX_BALANCE} micros")
        balance, reserved, currency = reply.body.split(" ")
        return RechargeResult(account, currency, int(balance), int(reserved), replayed=reply.kind == "REPLAY")

    async def balance(self, identity: Identity) -> Account:
        return await self.directory.get(identity)
