"""The minimal Admin gRPC service: subscribers outside the CRM flow, and the catalog."""

from __future__ import annotations

import json
from datetime import datetime

import grpc

from charging import keys
from charging.api import DEFAULT_PLAN_ID, identity_or_invalid
from charging.audit_trail import AuditPage, AuditQuery, AuditTrail, Position
from charging.catalogs import CatalogBook
from charging.clock import Clock
from charging.documents import Author
from charging.errors import InvalidRequest, NotFound
from charging.history_store import HistoryStore
from charging.renewals import Renewer
from charging.schemas import parse_json
from charging.security.identity import caller_name
from charging.status import rpc
from charging.subscribers import Account, Directory, parse_identity
from charging.v1 import admin_pb2, admin_pb2_grpc, common_pb2

STATUS_NAMES = {
    admin_pb2.SUBSCRIBER_STATUS_ACTIVE: "active",
    admin_pb2.SUBSCRIBER_STATUS_BARRED_OUTGOING: "barred_outgoing",
    admin_pb2.SUBSCRIBER_STATUS_SUSPENDED: "suspended",
    admin_pb2.SUBSCRIBER_STATUS_BARRED: "barred",
}
STATUS_VALUES = {name: value for value, name in STATUS_NAMES.items()}


def subscriber_pb(a: Account) -> admin_pb2.Subscriber:
    return admin_pb2.Subscriber(
        account_id=a.account_id,
        msisdn=a.msisdn,
        imsi=a.imsi,
        plan_id=a.plan_id,
        status=STATUS_VALUES[a.status],
        currency=a.currency,
        balance_micros=a.balance,
        reserved_micros=a.reserved,
        available_micros=a.available,
        pool_account_id=keys.pool_of(a.account_id) or "",
    )


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(
        self,
        directory: Directory,
        catalogs: CatalogBook,
        renewer: Renewer,
        clock: Clock,
        trail: AuditTrail,
        history: HistoryStore | None = None,
    ) -> None:
        self.directory = directory
        self.catalogs = catalogs
        self.renewer = renewer
        self.clock = clock
        self.trail = trail
        self.history = history  # every catalog version applied (PostgreSQL)

    @rpc("CreateSubscriber")
    async def CreateSubscriber(
        self, request: admin_pb2.CreateSubscriberRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.Subscriber:
        msisdn = parse_identity("msisdn", request.msisdn, "msisdn")
        imsi = parse_identity("imsi", request.imsi, "imsi") if request.imsi else None
        plan_id = request.plan_id or DEFAULT_PLAN_ID
        plan = self.catalogs.current.plans.get(plan_id)
        if plan is None:
            raise InvalidRequest("plan_id", f"no plan {plan_id!r} in catalog {self.catalogs.current.version}")
        account = await self.directory.create(
            msisdn, imsi, plan, request.initial_balance_micros, pool=request.pool_account_id
        )
        now = self.clock.now_ms()
        version = plan.version_at(now // 1000)
        if version is not None and version.recurring is not None:
            # The first period starts now; the renewer buys it on its next pass.
            await self.renewer.schedule(account.account_id, now)
        return subscriber_pb(account)

    @rpc("GetSubscriber")
    async def GetSubscriber(
        self, request: common_pb2.SubscriberId, context: grpc.aio.ServicerContext
    ) -> admin_pb2.Subscriber:
        return subscriber_pb(await self.directory.get(identity_or_invalid(request)))

    @rpc("SetSubscriberStatus")
    async def SetSubscriberStatus(
        self, request: admin_pb2.SetStatusRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.Subscriber:
        status = STATUS_NAMES.get(request.status)
        if status is None:
            raise InvalidRequest("status", "must be ACTIVE, BARRED_OUTGOING, SUSPENDED or BARRED")
        # Audited with the change (Directory.set_status), through the record outbox.
        return subscriber_pb(await self.directory.set_status(identity_or_invalid(request.subscriber), status))

    @rpc("LoadCatalog")
    async def LoadCatalog(
        self, request: admin_pb2.CatalogDocument, context: grpc.aio.ServicerContext
    ) -> admin_pb2.CatalogInfo:
        # Audited in the same step as the switch (documents.py), as the caller.
        catalog = await self.catalogs.load(parse_json(request.json), Author(caller_name(), self.clock.now_ms()))
        return admin_pb2.CatalogInfo(version=catalog.version, plan_ids=sorted(catalog.plans))

    @rpc("GetCatalog")
    async def GetCatalog(
        self, request: admin_pb2.GetCatalogRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.CatalogDocument:
        text = await self.catalogs.document(request.version)
        if text is None and request.version and self.history is not None:
            row = await self.history.version("catalog", request.version)  # no longer in Redis
            text = None if row is None else row.content
        if text is None:
            raise NotFound(f"no catalog version {request.version!r}")
        return admin_pb2.CatalogDocument(json=text)

    @rpc("ListCatalogVersions")
    async def ListCatalogVersions(
        self, request: admin_pb2.CatalogVersionsQuery, context: grpc.aio.ServicerContext
    ) -> admin_pb2.CatalogVersions:
        if not 0 <= request.limit <= 1000:
            raise InvalidRequest("limit", "must be from 1 to 1000 (0: 100)")
        if self.history is None:
            raise NotFound("no catalog history on this server")
        rows = await self.history.versions("catalog", request.limit or 100)
        return admin_pb2.CatalogVersions(
            versions=[admin_pb2.CatalogVersion(**row.summary()) for row in rows],
        )

    @rpc("ListAuditEntries")
    async def ListAuditEntries(
        self, request: admin_pb2.AuditQuery, context: grpc.aio.ServicerContext
    ) -> admin_pb2.AuditPage:
        query = AuditQuery(
            subject=request.subject,
            actor=request.actor,
            start=_instant("from", getattr(request, "from")),
            end=_instant("to", request.to),
            page_size=request.page_size or 100,
            after=Position.from_token(request.page_token) if request.page_token else None,
        )
        return audit_page_pb(await self.trail.query(query))


def _instant(name: str, text: str) -> datetime | None:
    if not text:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(name, "must be an RFC 3339 instant such as 2026-11-01T00:00:00+00:00") from None
    if at.tzinfo is None:
        raise InvalidRequest(name, "needs an offset (+00:00 or Z)")
    return at


def audit_page_pb(page: AuditPage) -> admin_pb2.AuditPage:
    return admin_pb2.AuditPage(
        entries=[
            admin_pb2.AuditEntry(
                entry_id=e.entry_id,
                occurred_at=e.occurred_at.isoformat(),
                actor=e.actor,
                action=e.action,
                subject=e.subject,
                reason=e.reason,
                details_json=json.dumps(e.details, sort_keys=True),
            )
            for e in page.entries
        ],
        next_page_token=page.next_token,
    )
