"""The coverage table (through the real LoadCoverage) and the billing settings (read from
their file) refuse what they should: exact types, no unknown field, every bad field
named, nesting bounded; never an internal error."""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import grpc
import pytest

from charging.v1 import crm_pb2, crm_pb2_grpc
from postpaid import config as billing_config
from tests.conftest import Stubs
from tests.test_catalog_strict import nested
from tests.test_coverage import GOOD


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (nested(100_000), ["json: nested deeper than 32 levels"]),
        ("[" * 50_000 + "]" * 50_000, ["json: nested deeper than 32 levels"]),
        (json.dumps({**GOOD, "home_country": json.loads(nested(40))}), ["json: nested deeper than 32 levels"]),
        (
            json.dumps({**GOOD, "areas": [{"country": {"DE": 1}, "postal_prefix": ["10"], "access": "PSTN"}]}),
            ["areas[0].country: must be a string", "areas[0].postal_prefix: must be a string", "areas[0].access"],
        ),
    ],
    ids=["100k-objects", "50k-lists", "deep-in-a-field", "objects-for-scalars"],
)
async def test_a_bad_coverage_table_is_invalid_argument_and_changes_nothing(
    stubs: Stubs, text: str, expected: list[str]
) -> None:
    crm = crm_pb2_grpc.CrmStub(stubs.channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await crm.LoadCoverage(crm_pb2.CoverageDocument(json=text))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    for field in expected:
        assert field in (err.value.details() or ""), (field, err.value.details())
    assert (await crm.GetCoverage(crm_pb2.CoverageRef())).version == 0


def billing_doc() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(resources.files("postpaid").joinpath("billing.json").read_text())
    return doc


def bad_billing_file(tmp_path: Path, edit: Callable[[dict[str, Any]], object]) -> str:
    doc = billing_doc()
    edit(doc)
    path = tmp_path / "billing.json"
    path.write_text(json.dumps(doc))
    return str(path)


@pytest.mark.parametrize(
    ("edit", "fields"),
    [
        (lambda d: d.update(reconection_fee_minor=1000), {"reconection_fee_minor"}),  # a typo: the fee was 0
        (lambda d: d["discounts"][0].update(plans="fixed-postpaid"), {"discounts[0].plans"}),
        (lambda d: d["discounts"][1].update(value_pb=500), {"discounts[1].value_pb"}),  # a typo: no discount
        (lambda d: d.update(taxes="abc"), {"taxes"}),  # crashed on today's main
        (lambda d: d["issuer"].update(name={"legal": "x"}, vat=1), {"issuer.name", "issuer.vat"}),
        (lambda d: d["tax_codes"].update(plan={"x": "standard"}), {"tax_codes.plan"}),
        (
            lambda d: d["tax_codes"]["plans"].update({"mobile-postpaid": ["standard"]}),
            {"tax_codes.plans.mobile-postpaid"},
        ),
        # The bank account customers pay to: a mistyped IBAN would send their money astray.
        (lambda d: d["issuer"]["bank"].update(iban="DE89370400440532013001"), {"issuer.bank.iban"}),
        (lambda d: d["issuer"]["bank"].update(iban="DE89 3704", bic="COBA"), {"issuer.bank.iban", "issuer.bank.bic"}),
        (lambda d: d["issuer"].update(bank={"bic": "COBADEFFXXX"}), {"issuer.bank.iban"}),
        (lambda d: d["issuer"].update(address=["Musterstrasse 1", 12]), {"issuer.address[1]"}),
        (lambda d: d["issuer"].update(name="N" * 71), {"issuer.name"}),  # the EPC QR code carries 70
        (lambda d: d["issuer"].update(number_prefix="INVOICE-NUMBERS"), {"issuer.number_prefix"}),
    ],
)
def test_billing_settings_name_every_bad_field(
    tmp_path: Path, edit: Callable[[dict[str, Any]], object], fields: set[str]
) -> None:
    with pytest.raises(billing_config.BillingConfigInvalid) as err:
        billing_config.load(bad_billing_file(tmp_path, edit))
    assert {f for f, _ in err.value.problems} == fields, err.value.problems


@pytest.mark.parametrize("text", [nested(100_000), json.dumps({**billing_doc(), "issuer": json.loads(nested(40))})])
def test_billing_settings_nested_too_deep_are_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "billing.json"
    path.write_text(text)
    with pytest.raises(billing_config.BillingConfigInvalid) as err:
        billing_config.load(str(path))
    assert "nested deeper than 32 levels" in str(err.value)


def test_billing_settings_issuer_address_bank_and_the_earlier_one_line_address(tmp_path: Path) -> None:
    config = billing_config.default()
    assert config.issuer.address == ("Musterstrasse 1", "10115 Berlin", "Germany")
    assert (config.issuer.iban, config.issuer.bic) == ("DE89370400440532013000", "COBADEFFXXX")
    earlier = billing_config.load(
        bad_billing_file(tmp_path, lambda d: d["issuer"].update(address="Musterstrasse 1, 10115 Berlin, Germany"))
    )
    assert earlier.issuer.address == config.issuer.address
