"""Loading a catalog refuses what it should: through the real LoadCatalog on a real Redis,
a refused catalog is INVALID_ARGUMENT naming each bad field and the running one stays."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charging.catalog_doc import CatalogInvalid, catalog_from_doc
from charging.catalogs import read_catalog_file
from charging.v1 import admin_pb2
from tests.conftest import Stubs
from tests.test_events import DEBIT, event

SMS = 50_000  # the default plan's SMS price


def sms_rate(doc: dict[str, Any]) -> dict[str, Any]:
    rate: dict[str, Any] = doc["plans"][0]["versions"][0]["rates"][3]
    assert (doc["plans"][0]["id"], rate["service"]) == ("default", "sms")
    return rate


async def refused(stubs: Stubs, text: str) -> str:
    """Load ``text``; assert INVALID_ARGUMENT and that the running catalog did not change."""
    running = (await stubs.admin.GetCatalog(admin_pb2.GetCatalogRequest())).json
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.admin.LoadCatalog(admin_pb2.CatalogDocument(json=text))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert (await stubs.admin.GetCatalog(admin_pb2.GetCatalogRequest())).json == running
    return err.value.details() or ""


def changed(edit: Callable[[dict[str, Any]], object]) -> str:
    doc = read_catalog_file("")
    doc["version"] = "strict-1"
    edit(doc)
    return json.dumps(doc)


def set_in(path: str, value: object) -> Callable[[dict[str, Any]], object]:
    def edit(doc: dict[str, Any]) -> None:
        sms_rate(doc)[path] = value

    return edit


def rename(old: str, new: str) -> Callable[[dict[str, Any]], object]:
    def edit(doc: dict[str, Any]) -> None:
        rate = sms_rate(doc)
        rate[new] = rate.pop(old)

    return edit


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (set_in("free", "false"), "free"),  # a string made SMS free (4011)
        (rename("price_micros", "pricee_micros"), "pricee_micros"),  # no price: SMS cost 0
        (set_in("name", {"text": "SMS"}), "name"),
        (set_in("redirect_address", {"host": "portal"}), "redirect_address"),
        (set_in("restriction_filter_rules", "abc"), "restriction_filter_rules"),
        (set_in("restriction_filter_rules", [["ip", "any"]]), "restriction_filter_rules[0]"),
    ],
)
async def test_a_wrongly_typed_or_unknown_rate_field_is_refused(
    stubs: Stubs, edit: Callable[[dict[str, Any]], object], field: str
) -> None:
    await stubs.subscriber(balance=1_000_000)
    details = await refused(stubs, changed(edit))
    assert f"plans[0].versions[0].rates[3].{field}" in details
    answer = await stubs.charging.ChargeEvent(event("sms-1", DEBIT))
    assert (answer.result_code, answer.cost_micros) == (2001, SMS)


async def test_every_bad_field_is_named_at_once(stubs: Stubs) -> None:
    def edit(doc: dict[str, Any]) -> None:
        doc["comment"] = "unknown at the top"
        doc["services"][0]["rating_groups"] = ["10"]
        doc["zones"][1]["zone"] = {"name": "x"}
        doc["plans"][1]["versions"][0]["rates"][0]["zones"] = ["atlantis"]  # a reference, not a shape
        doc["bundles"][0]["buckets"][0]["amount"] = "100"
        sms_rate(doc)["free"] = "false"

    details = await refused(stubs, changed(edit))
    for field in (
        "comment: unknown field",
        "services[0].rating_groups[0]: must be an integer",
        "zones[1].zone: must be a string",
        "plans[1].versions[0].rates[0].zones[0]: unknown: atlantis",
        "bundles[0].buckets[0].amount: must be an integer",
        "plans[0].versions[0].rates[3].free: must be true or false",
    ):
        assert field in details, (field, details)


def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


@pytest.mark.parametrize(
    "text",
    [
        nested(33),
        nested(100_000),  # json.loads alone would raise RecursionError
        "[" * 100_000 + "]" * 100_000,
        changed(lambda doc: sms_rate(doc).update(name=json.loads(nested(40)))),
    ],
    ids=["33-levels", "100k-objects", "100k-lists", "deep-inside-a-rate"],
)
async def test_nesting_beyond_32_levels_is_invalid_argument(stubs: Stubs, text: str) -> None:
    assert "nested deeper than 32 levels" in await refused(stubs, text)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda doc: doc.update(version={"v": 1}), "version: must be a string"),
        (lambda doc: doc.update(plans={"default": {}}), "plans: must be a list"),
        (lambda doc: doc["services"][0].update(unit=["TIME"]), "services[0].unit: must be one of"),
    ],
)
async def test_objects_or_lists_where_scalars_belong_are_invalid_argument(
    stubs: Stubs, edit: Callable[[dict[str, Any]], object], field: str
) -> None:
    assert field in await refused(stubs, changed(edit))


SAMPLE = read_catalog_file("")


def _paths(value: Any, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    found = [path] if path else []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found += _paths(item, (*path, key))
    return found


PATHS = _paths(SAMPLE)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=150, deadline=None)
@given(edits=st.lists(st.tuples(st.sampled_from(PATHS), JSON), min_size=1, max_size=4))
def test_any_value_anywhere_is_a_named_problem_never_a_crash(edits: list[tuple[tuple[str | int, ...], Any]]) -> None:
    doc = copy.deepcopy(SAMPLE)
    for path, value in edits:
        node: Any = doc
        for key in path[:-1]:
            node = node[key] if isinstance(node, dict | list) and _has(node, key) else None  # type: ignore[index]
        if isinstance(node, dict | list) and _has(node, path[-1]):
            node[path[-1]] = value  # type: ignore[index]
    try:
        catalog_from_doc(doc)
    except CatalogInvalid as exc:
        assert exc.problems and all(field and message for field, message in exc.problems)


def _has(node: dict[str, Any] | list[Any], key: str | int) -> bool:
    return key in node if isinstance(node, dict) else isinstance(key, int) and key < len(node)


def test_a_catalog_file_nested_too_deep_is_a_named_problem(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(nested(100_000))  # what CHARGING_CATALOG_FILE is read with at start
    with pytest.raises(CatalogInvalid, match="nested deeper than 32 levels"):
        read_catalog_file(str(path))
