"""Account changes that charging clients holding sessions must hear about, whichever
process made them: one mechanism for every door.

    credit   a top-up or a bundle bought: sessions of the account that got a
             final-unit indication are re-authorized (Diameter RAR, gRPC ``REAUTHORIZE``),
             so the gateway asks for a new grant and lifts its redirect
    blocked  the line barred, suspended or terminated: its sessions are aborted
             (Diameter ASR, gRPC ``ABORT``)

The process that made the change publishes ``<kind> <account>`` on the Redis pub/sub
channel ``keys.SIGNALS`` (after the change is stored; a failed publish is logged and
counted, the change stands). Every server process has one ``SignalHub``: one
subscription, handing each signal to its listeners (the Diameter door, the gRPC session
watch). Each listener keeps the sessions it answers in a ``HeldSessions`` table
(``held.py``) and asks ``due`` what a signal means for each of them; the one that charged
the session tells its client, so it works with several server processes.

The same subscription carries a door's own messages between processes (``on``/``send``,
``claim``): the Diameter door relays a RAR/ASR to the process holding its peer's
connection (``diameter/relay.py``).

On a Redis Cluster a PUBLISH goes from the primary that takes it to every node of the
cluster, and with one channel every signal would take the same primary: the signals go
instead on sharded channels (Redis 7, SPUBLISH/SSUBSCRIBE), the account's among
``keys.SIGNAL_CHANNELS`` (16, spread over the primaries), which reach only the primary of
the channel's slot and its replicas. Each hub subscribes to all of them (one connection per
primary, one reader each) and subscribes again when the slots move (a failover). A single
server keeps PUBLISH/SUBSCRIBE on ``keys.SIGNALS``; the door's own channels (``on``) stay
plain channels on both (few messages).

Pub/sub delivers at most once: a lost signal costs promptness only, never correctness,
because the next update of the session is answered by the core from the account as it
is (a new grant after a top-up, 4010 on a barred line). Clients that ignore RAR (Open5GS
answers it and does nothing) or do not know ASR get the right answers all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Literal

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import ClusterNode, ClusterPubSub, RedisCluster

from charging import keys, metrics
from charging.subscribers import Account, Directory, Identity
from charging.topups import BundlePurchase, PurchaseResult, Recharge, RechargeResult, TopUps

log = logging.getLogger("charging.signals")

Kind = Literal["credit", "blocked"]
Action = Literal["reauth", "abort"]
Listener = Callable[[Kind, str], Awaitable[None]]
# A handler of another channel's messages (``SignalHub.on``).
Handler = Callable[[str], Awaitable[None]]
# Terminated lines are "barred" in charging; a barred-outgoing line keeps incoming service.
BLOCKED_STATUSES = frozenset({"barred", "suspended"})
# Pause before a lost subscription is renewed.
RESUBSCRIBE_S = 1.0


def due(kind: Kind, final_unit: bool) -> Action | None:
    """What a signal asks of one held session: re-authorize it after credit when its last
    answer carried a final-unit indication, abort it when its line is blocked."""
    if kind == "blocked":
        return "abort"
    return "reauth" if final_unit else None


async def publish(client: aioredis.Redis, kind: Kind, account: str) -> None:
    try:
        if isinstance(client, RedisCluster):
            await client.spublish(keys.account_signals(account), f"{kind} {account}")
        else:
            await client.publish(keys.SIGNALS, f"{kind} {account}")
        metrics.SIGNALS.labels(kind, "published").inc()
    except (redis_errors.RedisError, OSError, AttributeError) as exc:
        # AttributeError: redis-py's cluster client, meeting a connection a failover
        # closed under it, fails inside its own send. The change is stored either way and
        # signals are at most once: the caller's request must not fail for its signal.
        metrics.SIGNALS.labels(kind, "lost").inc()
        log.warning("signal not published", extra={"kind": kind, "error": str(exc)})


def parse(message: str) -> tuple[Kind, str] | None:
    kind, _, account = message.partition(" ")
    if kind == "credit" and account:
        return "credit", account
    if kind == "blocked" and account:
        return "blocked", account
    return None


class _Moved(Exception):
    """The sharded channels' primaries changed: subscribe again."""


class SignalHub:
    """This process's one subscription to the signal channel, handing every signal to
    each listener in turn (a listener's failure is logged, the others still hear it)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._listeners: list[Listener] = []
        self._channels: dict[str, Handler] = {}
        self._pubsub: aioredis.client.PubSub | None = None
        self._task: asyncio.Task[None] | None = None
        self._sharded_task: asyncio.Task[None] | None = None  # on a Redis Cluster

    def add(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def on(self, channel: str, handler: Handler) -> None:
        """Also hand every message of ``channel`` to ``handler``, on the same subscription
        (before ``start``): a door's own requests between processes (the Diameter relay)."""
        self._channels[channel] = handler

    async def send(self, channel: str, message: str) -> bool:
        """Publish on one of the ``on`` channels, best effort (at most once, like signals):
        False when it could not be published (logged)."""
        try:
            await self._client.publish(channel, message)
            return True
        except (redis_errors.RedisError, OSError, AttributeError) as exc:
            log.warning("relay not published", extra={"channel": channel, "error": str(exc)})
            return False

    async def claim(self, key: str, ttl_s: int) -> bool:
        """Whether this process is the first to claim ``key`` (SET NX, kept ``ttl_s``):
        of several processes about to do the same, one does. True when Redis cannot say
        (a duplicate is better than nothing)."""
        try:
            return bool(await self._client.set(key, "1", nx=True, ex=ttl_s))
        except (redis_errors.RedisError, OSError, AttributeError) as exc:
            log.warning("signal claim failed, acting anyway", extra={"error": str(exc)})
            return True

    async def start(self) -> None:
        # Subscribed before start returns: a signal published afterwards is heard.
        if isinstance(self._client, RedisCluster):
            sharded = await self._sharded_subscription(self._client)
            self._sharded_task = asyncio.create_task(self._listen_sharded(self._client, sharded))
            if not self._channels:
                return
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        plain = tuple(self._channels) if isinstance(self._client, RedisCluster) else (keys.SIGNALS, *self._channels)
        await self._pubsub.subscribe(*plain)
        self._task = asyncio.create_task(self._listen(self._pubsub))

    async def stop(self) -> None:
        for task in (self._task, self._sharded_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._sharded_task = None
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
            self._pubsub = None

    async def _sharded_subscription(self, cluster: RedisCluster) -> ClusterPubSub:
        pubsub = cluster.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.ssubscribe(*keys.SIGNAL_CHANNELS)
        except BaseException:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            raise
        return pubsub

    async def _listen_sharded(self, cluster: RedisCluster, pubsub: ClusterPubSub | None) -> None:
        """Act on the sharded signal channels until cancelled: a reader per primary the
        channels are on; subscribed again when a reader fails or the channels moved."""
        while True:
            try:
                if pubsub is None:
                    pubsub = await self._sharded_subscription(cluster)
                nodes = [
                    n for n in (cluster.get_node(node_name=m) for m in pubsub.node_pubsub_mapping) if n is not None
                ]
                async with asyncio.TaskGroup() as readers:
                    for node in nodes:
                        readers.create_task(self._read_shard(pubsub, node))
            except* Exception as group:  # a lost node, moved slots (_Moved), redis-py's AttributeError
                log.warning("signal subscription lost, renewing", extra={"error": str(group.exceptions[0])[:200]})
            finally:
                if pubsub is not None:
                    await asyncio.shield(pubsub.aclose())  # type: ignore[no-untyped-call]
                pubsub = None
            await asyncio.sleep(RESUBSCRIBE_S)

    async def _read_shard(self, pubsub: ClusterPubSub, node: ClusterNode) -> None:
        names = set(pubsub.node_pubsub_mapping)
        while True:
            message = await pubsub.get_sharded_message(ignore_subscribe_messages=True, timeout=1.0, target_node=node)
            if set(pubsub.node_pubsub_mapping) != names:
                raise _Moved("the signal channels moved to other primaries")
            if message is not None and message.get("type") == "smessage":
                signal = parse(str(message["data"]))
                if signal is not None:
                    await self.deliver(*signal)

    async def _listen(self, pubsub: aioredis.client.PubSub) -> None:
        """Act on account signals until cancelled; a broken subscription is renewed."""
        while True:
            try:
                message = await pubsub.get_message(timeout=None)
            except (redis_errors.RedisError, OSError, AttributeError) as exc:
                # AttributeError: redis-py's cluster client, meeting a connection a failover
                # closed under it, fails inside its own send. The change is stored either way and
                # signals are at most once: the caller's request must not fail for its signal.
                log.warning("signal subscription lost, renewing", extra={"error": str(exc)})
                await asyncio.sleep(RESUBSCRIBE_S)
                continue
            if message is None or message.get("type") != "message":
                continue
            handler = self._channels.get(str(message.get("channel")))
            if handler is not None:
                try:
                    await handler(str(message["data"]))
                except Exception:
                    log.exception("relay handler failed")
                continue
            signal = parse(str(message["data"]))
            if signal is not None:
                await self.deliver(*signal)

    async def deliver(self, kind: Kind, account: str) -> None:
        for listener in self._listeners:
            try:
                await listener(kind, account)
            except Exception:
                log.exception("signal listener failed", extra={"kind": kind})


class SignallingTopUps(TopUps):
    """Top-ups and bundle purchases that say ``credit`` once they are done (not for a
    replayed request: its first execution said it)."""

    def __init__(self, *args: object, signals: aioredis.Redis, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._signals = signals

    async def recharge(self, req: Recharge) -> RechargeResult:
        result = await super().recharge(req)
        if not result.replayed:
            await publish(self._signals, "credit", result.account_id)
        return result

    async def buy_bundle(self, req: BundlePurchase) -> PurchaseResult:
        result = await super().buy_bundle(req)
        if result.outcome == "OK" and not result.replayed:
            await publish(self._signals, "credit", result.account_id)
        return result


class SignallingDirectory(Directory):
    """The subscriber directory, saying ``blocked`` when a line stops being active."""

    async def set_status(self, identity: Identity, status: str) -> Account:
        account = await super().set_status(identity, status)
        if status in BLOCKED_STATUSES:
            await publish(self._client, "blocked", account.account_id)
        return account
