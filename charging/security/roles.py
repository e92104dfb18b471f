"""The one table of who may call what: every gRPC method and the roles allowed on it.

Deny by default: a method missing here is refused to everyone (and
``tests/test_security_roles.py`` walks every method of every service in the protos, so a
new RPC without an entry fails the build). Health is open to every caller, even one
without an identity, so load balancers and the Docker health check need no credentials
beyond the TLS handshake.

``monitor`` gets the read-only methods that return no personal data (catalogs, balances,
counts, states); reads of customers, orders and invoices stay with ``crm``, ``billing``
and ``operator``.
"""

from __future__ import annotations

from collections.abc import Mapping

NETWORK, CHANNEL, CRM, BILLING, OPERATOR, MONITOR = "network", "channel", "crm", "billing", "operator", "monitor"
ROLES = (NETWORK, CHANNEL, CRM, BILLING, OPERATOR, MONITOR)

HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_METHODS = (
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
)


def _service(name: str, table: Mapping[str, tuple[str, ...]]) -> dict[str, frozenset[str]]:
    return {f"/charging.v1.{name}/{method}": frozenset(roles) for method, roles in table.items()}


METHOD_ROLES: dict[str, frozenset[str]] = {
    **_service(
        "Charging",
        {
            "ChargeSession": (NETWORK,),
            "ChargeEvent": (NETWORK,),
            "WatchSessions": (NETWORK,),
            # Gateways multiplexing sessions and events (both network requests) on one stream.
            "ChargeStream": (NETWORK,),
            "ChargeBatches": (NETWORK,),
        },
    ),
    **_service(
        "TopUp",
        {
            # The request's channel must also be one of the caller's (guard.py).
            "Recharge": (CHANNEL, OPERATOR),
            "BuyBundle": (CHANNEL, OPERATOR),
            "GetBalance": (CHANNEL, CRM, OPERATOR, MONITOR),
        },
    ),
    **_service(
        "Crm",
        {
            "SubmitApplication": (CRM,),
            "SubmitOrder": (CRM,),
            "GetOrder": (CRM, OPERATOR),
            "GetLine": (CRM, OPERATOR, MONITOR),
            "GetCustomerBase": (CRM, OPERATOR, MONITOR),
            "AddInteraction": (CRM,),
            "OpenTicket": (CRM,),
            "MoveTicket": (CRM,),
            "OpenDispute": (CRM,),
            "GetCustomerRecords": (CRM, OPERATOR),
            "AddOrgUnit": (CRM,),
            "GetCustomer": (CRM, OPERATOR),
            "LoadCoverage": (OPERATOR,),
            "GetCoverage": (CRM, OPERATOR, MONITOR),
            # Finds customers by identity document: crm and operator only.
            "ListCustomers": (CRM, OPERATOR),
            "ListCustomerLines": (CRM, OPERATOR),
            "ListCustomerOrders": (CRM, OPERATOR),
            "ListOrders": (CRM, OPERATOR),
            "ListLineHistory": (CRM, OPERATOR),
            "ChangeCreditClass": (CRM,),
        },
    ),
    **_service(
        "Billing",
        {
            "GetBillingAccount": (BILLING, CRM, OPERATOR, MONITOR),
            "ListInvoices": (BILLING, CRM, OPERATOR),
            "GetInvoice": (BILLING, CRM, OPERATOR),
            "RenderInvoice": (BILLING, CRM, OPERATOR),
            "ResendInvoice": (BILLING, OPERATOR),
            "RecordPayment": (BILLING,),
            "RefundCredit": (BILLING,),
            "IssueCreditNote": (OPERATOR,),
            "OpenDispute": (BILLING,),
            "ResolveDispute": (BILLING, OPERATOR),
            "AddAdjustment": (BILLING, OPERATOR),
            "PromiseToPay": (BILLING,),
            "RunBilling": (OPERATOR,),
            "RunDunning": (OPERATOR,),
            "GetDunningStatus": (BILLING, CRM, OPERATOR, MONITOR),
            "GetDispute": (BILLING, CRM, OPERATOR),
            "ListMoneyRecords": (BILLING, OPERATOR),
            "ListBillRuns": (BILLING, OPERATOR, MONITOR),
            "ListUsageRecords": (BILLING, CRM, OPERATOR),
        },
    ),
    **_service(
        "Admin",
        {
            "CreateSubscriber": (OPERATOR,),
            "GetSubscriber": (OPERATOR, MONITOR),
            "SetSubscriberStatus": (OPERATOR,),
            "LoadCatalog": (OPERATOR,),
            "GetCatalog": (OPERATOR, MONITOR),
            "ListCatalogVersions": (OPERATOR, MONITOR),
            "ListAuditEntries": (OPERATOR,),
        },
    ),
    **{method: frozenset((OPERATOR,)) for method in REFLECTION_METHODS},
}

# TopUp methods whose request names a channel the caller must own.
CHANNEL_METHODS = frozenset(("/charging.v1.TopUp/Recharge", "/charging.v1.TopUp/BuyBundle"))


def roles_for(method: str) -> frozenset[str]:
    """The roles allowed on ``method``; empty (nobody) when it has no entry."""
    return METHOD_ROLES.get(method, frozenset())
