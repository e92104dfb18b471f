"""Recharges and bundle purchases from top-up channels, each applied once per
idempotency key."""

from __future__ import annotations

import re
from dataclasses import dataclass

from charging import keys
from charging.buckets import Bucket, buckets_of, consumption_order, pack, unpack
from charging.context import Context
from charging.errors import Conflict, InvalidRequest, LimitExceeded, NotFound
from charging.money import MAX_AMOUNT, MAX_BALANCE
from charging.script_args import BuyArgs, TopupArgs
from charging.security.identity import caller_name
from charging.subscribers import Account, Identity

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


@dataclass(frozen=True)
class BundlePurchase:
    identity: Identity
    bundle_id: str
    channel: str
    idempotency_key: str
    digest: str
    # Included in the plan's rental (a postpaid plan's recurring bundle): given, not sold.
    included: bool = False


@dataclass(frozen=True)
class PurchaseResult:
    # OK, FUNDS (not enough money: nothing changed), DENIED (barred), CURRENCY
    outcome: str
    account_id: str
    currency: str
    balance_micros: int
    reserved_micros: int
    bucket_ids: tuple[str, ...]
    replayed: bool


class TopUps:
    def __init__(self, ctx: Context, *, idempotency_ttl_s: int) -> None:
        self.ctx = ctx
        self.idempotency_ttl_s = idempotency_ttl_s

    async def buy_bundle(self, req: BundlePurchase) -> PurchaseResult:
        """Buy a bundle of the running catalog with the money balance."""
        check_recharge(1, req.channel, req.idempotency_key)
        bundle = (await self.ctx.catalogs.fresh()).bundles.get(req.bundle_id)
        if bundle is None:
            raise InvalidRequest("bundle_id", f"no bundle {req.bundle_id!r} in the catalog")
        account = await self.ctx.directory.resolve(req.identity)
        if account is None:
            raise NotFound("no subscriber has this identity")
        now = self.ctx.clock.now_ms()
        price = 0 if req.included else bundle.price_micros
        args = BuyArgs(
            digest=req.digest,
            price=price,
            answer_ttl_s=self.idempotency_ttl_s,
            now_ms=now,
            low_balance_micros=self.ctx.low_balance_micros,
            bundle_id=bundle.id,
            currency=bundle.currency,
            actor=caller_name(),
            channel=req.channel,
            records=self.ctx.usage_records,
            buckets=tuple(pack(b) for b in buckets_of(bundle, now // 1000)),
        )
        reply = await self.ctx.ledger.buy(account, req.idempotency_key, args)
        if reply.kind == "UNKNOWN":
            self.ctx.directory.forget(req.identity)
            raise NotFound("no subscriber has this identity")
        if reply.kind == "CONFLICT":
            raise Conflict("idempotency_key was already used for another purchase")
        if reply.outbox:
            self.ctx.wake_relay(account)
        outcome, balance, reserved, ids = reply.body.split(" ")
        bucket_ids = () if ids == "-" else tuple(ids.split("|"))
        if outcome == "OK":  # also on a replay: the hint is idempotent, and may have been lost
            # The sweeper records what is left of the buckets when they expire.
            expiry_ms = (now // 1000 + bundle.validity_days * 86_400) * 1000
            await self.ctx.ledger.hint(keys.sweep_index(account), account, expiry_ms)
        return PurchaseResult(
            outcome, account, bundle.currency, int(balance), int(reserved), bucket_ids, reply.kind == "REPLAY"
        )

    async def buckets(self, account_id: str) -> list[Bucket]:
        """The account's buckets that have not expired, in consumption order."""
        now_s = self.ctx.clock.now_ms() // 1000
        stored = (unpack(i, t) for i, t in (await self.ctx.ledger.buckets(account_id)).items())
        return sorted((b for b in stored if now_s < b.expiry_s), key=consumption_order)

    async def recharge(self, req: Recharge) -> RechargeResult:
        check_recharge(req.amount_micros, req.channel, req.idempotency_key)
        account = await self.ctx.directory.resolve(req.identity)
        if account is None:
            raise NotFound("no subscriber has this identity")
        args = TopupArgs(
            req.digest,
            req.amount_micros,
            self.idempotency_ttl_s,
            MAX_BALANCE,
            self.ctx.low_balance_micros,
            now_ms=self.ctx.clock.now_ms(),
            actor=caller_name(),
            channel=req.channel,
            records=self.ctx.usage_records,
        )
        reply = await self.ctx.ledger.topup(account, req.idempotency_key, args)
        if reply.kind == "UNKNOWN":
            self.ctx.directory.forget(req.identity)
            raise NotFound("no subscriber has this identity")
        if reply.kind == "CONFLICT":
            raise Conflict("idempotency_key was already used for another recharge")
        if reply.kind == "LIMIT":
            raise LimitExceeded(f"the balance would exceed {MAX_BALANCE} micros")
        if reply.kind == "POSTPAID":
            raise InvalidRequest("subscriber", "is a postpaid line: its invoices are paid through Billing")
        balance, reserved, currency = reply.body.split(" ")
        return RechargeResult(account, currency, int(balance), int(reserved), replayed=reply.kind == "REPLAY")

    async def balance(self, identity: Identity) -> Account:
        return await self.ctx.directory.get(identity)
