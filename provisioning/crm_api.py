"""The CRM's gRPC service: protobuf in, application documents through, protobuf out."""

from __future__ import annotations

from datetime import date
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from charging.errors import InvalidRequest, NotFound
from charging.status import rpc
from charging.v1 import crm_pb2, crm_pb2_grpc
from provisioning.acquisition import Acquisition
from provisioning.base import EPOCH

STATUSES = {
    "SUBMITTED": crm_pb2.ORDER_STATUS_SUBMITTED,
    "IN_PROGRESS": crm_pb2.ORDER_STATUS_IN_PROGRESS,
    "COMPLETED": crm_pb2.ORDER_STATUS_COMPLETED,
    "REJECTED": crm_pb2.ORDER_STATUS_REJECTED,
}


def application_doc(app: crm_pb2.Application) -> dict[str, Any]:
    doc = MessageToDict(app, preserving_proto_field_name=True)
    if app.contract != "POSTPAID":
        doc.pop("credit_history", None)
    if "credit_history" in doc:
        doc["credit_history"] = {k: int(v) for k, v in doc["credit_history"].items()}
    return doc


def order_pb(order: dict[str, Any]) -> crm_pb2.Order:
    out = crm_pb2.Order(
        crm_order_id=order["crm_order_id"],
        status=STATUSES[order["status"]],
        customer_id=order.get("customer_id", ""),
        account_id=order.get("account_id", ""),
        msisdn=order.get("msisdn", ""),
        credit_class=order.get("credit_class", ""),
        credit_limit_micros=order.get("credit_limit_micros", 0),
        deposit_micros=order.get("deposit_micros", 0),
    )
    for field, message in order.get("problems", []):
        out.problems.add(field=field, message=message)
    for s in order.get("steps", []):
        out.steps.add(step=s["step"], outcome=s["outcome"], reasons=s["reasons"], at=s["at"])
    return out


class CrmServicer(crm_pb2_grpc.CrmServicer):
    def __init__(self, acquisition: Acquisition) -> None:
        self.acquisition = acquisition

    @rpc("SubmitApplication")
    async def SubmitApplication(self, request: crm_pb2.Application, context: grpc.aio.ServicerContext) -> crm_pb2.Order:
        if not request.crm_order_id or len(request.crm_order_id) > 128:
            raise InvalidRequest("crm_order_id", "is required (1-128 characters)")
        order = await self.acquisition.submit(request.crm_order_id, application_doc(request))
        return order_pb(order)

    @rpc("SubmitOrder")
    async def SubmitOrder(self, request: crm_pb2.LineOrder, context: grpc.aio.ServicerContext) -> crm_pb2.Order:
        if not request.crm_order_id or len(request.crm_order_id) > 128:
            raise InvalidRequest("crm_order_id", "is required (1-128 characters)")
        order = await self.acquisition.order(
            request.crm_order_id, request.msisdn, request.kind, request.plan_id, request.termination_reason
        )
        return order_pb(order)

    @rpc("GetOrder")
    async def GetOrder(self, request: crm_pb2.OrderRef, context: grpc.aio.ServicerContext) -> crm_pb2.Order:
        order = await self.acquisition.get_order(request.crm_order_id)
        if order is None:
            raise NotFound("no such order")
        return order_pb(order)

    @rpc("GetCustomerBase")
    async def GetCustomerBase(
        self, request: crm_pb2.BaseRequest, context: grpc.aio.ServicerContext
    ) -> crm_pb2.CustomerBaseReport:
        try:
            first = date.fromisoformat(request.first_date)
        except ValueError:
            raise InvalidRequest("first_date", "must be YYYY-MM-DD") from None
        try:
            last = date.fromisoformat(request.last_date)
        except ValueError:
            raise InvalidRequest("last_date", "must be YYYY-MM-DD") from None
        if not EPOCH <= first <= last:
            raise InvalidRequest("last_date", f"must not be before first_date, both from {EPOCH}")
        assert self.acquisition.base is not None
        report = crm_pb2.CustomerBaseReport()
        for f in await self.acquisition.base.figures(first, last):
            report.figures.add(
                customer_type=f.customer_type,
                active_at_start=f.active_at_start,
                active_at_end=f.active_at_end,
                gross_additions=f.gross_additions,
                disconnections=f.disconnections,
                churn_basis_points=f.churn_bp,
            )
        return report

    @rpc("GetLine")
    async def GetLine(self, request: crm_pb2.LineRef, context: grpc.aio.ServicerContext) -> crm_pb2.Line:
        line = await self.acquisition.get_line(request.msisdn)
        if line is None:
            raise NotFound("no such line")
        return crm_pb2.Line(
            msisdn=request.msisdn,
            customer_id=line["customer_id"],
            account_id=line["account_id"],
            plan_id=line["plan_id"],
            state=line["state"],
        )
