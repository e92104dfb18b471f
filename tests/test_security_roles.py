"""The role table against the protos: every method of every service has an entry, so a
new RPC without one fails here; and the table keeps the roles' stated limits."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from charging.security.roles import CHANNEL_METHODS, METHOD_ROLES, REFLECTION_METHODS, ROLES, roles_for
from charging.v1 import admin_pb2, billing_pb2, charging_pb2, crm_pb2, topup_pb2

MODULES = (charging_pb2, topup_pb2, crm_pb2, billing_pb2, admin_pb2)


def proto_methods() -> Iterator[str]:
    for module in MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                yield f"/{service.full_name}/{method.name}"


METHODS = sorted(proto_methods())


def test_every_method_of_every_service_has_roles() -> None:
    missing = [m for m in METHODS if not roles_for(m)]
    assert missing == [], f"methods without an entry in charging/security/roles.py: {missing}"


def test_the_table_names_no_method_that_does_not_exist() -> None:
    assert sorted(set(METHOD_ROLES) - set(METHODS) - set(REFLECTION_METHODS)) == []


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("role", ROLES)
def test_each_role_stays_within_its_services(method: str, role: str) -> None:
    service, name = method.rsplit("/", 1)
    allowed = role in roles_for(method)
    if service == "/charging.v1.Charging":
        assert allowed == (role == "network")
    if role == "network":
        assert not allowed or service == "/charging.v1.Charging"
    if role == "channel":
        assert not allowed or service == "/charging.v1.TopUp"
    if role == "monitor":
        assert not allowed or name.startswith(("Get", "List")), "monitor is read-only"
    if role == "crm" and service == "/charging.v1.Crm" and name not in ("LoadCoverage",):
        assert allowed
    if name in ("LoadCatalog", "LoadCoverage", "RunBilling", "RunDunning", "IssueCreditNote"):
        assert allowed == (role == "operator")
    if service == "/charging.v1.Admin":
        assert not allowed or role in ("operator", "monitor")


def test_reflection_is_for_operators_and_channels_are_checked_on_sales() -> None:
    assert all(roles_for(m) == {"operator"} for m in REFLECTION_METHODS)
    assert CHANNEL_METHODS == {"/charging.v1.TopUp/Recharge", "/charging.v1.TopUp/BuyBundle"}
    assert roles_for("/charging.v1.Nothing/Here") == frozenset()
