"""The catalog document: checking, rate lookup, destinations, bands, dated versions. No server."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charging.catalog import Catalog, Usage
from charging.catalog_doc import CatalogInvalid, catalog_from_doc
from charging.catalogs import read_catalog_file
from charging.zones import ZoneTable

PEAK_TIME = "2026-11-26T11:00:00+01:00"


def at(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp())


@pytest.fixture(scope="module")
def sample() -> dict[str, Any]:
    return dict(read_catalog_file(""))


@pytest.fixture(scope="module")
def catalog(sample: dict[str, Any]) -> Catalog:
    return catalog_from_doc(sample)


@pytest.mark.parametrize(
    ("number", "zone"),
    [
        ("491711234567", "national_mobile"),
        ("491701234567", "on_net"),
        ("4930123456", "national_fixed"),
        ("112", "emergency"),
        ("49800123", "toll_free"),
        ("49900123", "premium"),
        ("33123456789", "international_1"),
        ("15551234567", "international_2"),
        ("8613912345678", "international_3"),
    ],
)
def test_destinations_by_longest_prefix(catalog: Catalog, number: str, zone: str) -> None:
    assert catalog.zones.zone_of(number) == zone


def test_zone_table_without_a_default_knows_nothing_else() -> None:
    table = ZoneTable.build({"49": "national", "4917": "mobile"})
    assert table.zone_of("4917123") == "mobile"
    assert table.zone_of("4930") == "national"
    assert table.zone_of("33") is None


@pytest.mark.parametrize(
    ("plan", "number", "when", "network", "rate_name", "free"),
    [
        # Thursday 2026-11-26, 11:00 in Berlin: peak
        ("mobile-prepaid", "491711234567", "2026-11-26T11:00:00+01:00", "", "national peak", False),
        ("mobile-prepaid", "491711234567", "2026-11-26T21:00:00+01:00", "", "national off-peak", False),
        ("mobile-prepaid", "491711234567", "2026-11-28T11:00:00+01:00", "", "national off-peak", False),  # Saturday
        ("mobile-prepaid", "491711234567", "2026-12-25T11:00:00+01:00", "", "national off-peak", False),  # holiday
        ("mobile-prepaid", "112", "2026-11-26T11:00:00+01:00", "", "", True),
        ("mobile-prepaid", "49800123", "2026-11-26T11:00:00+01:00", "", "", True),
        ("mobile-prepaid", "33123456", "2026-11-26T11:00:00+01:00", "", "international zone 1", False),
        ("mobile-prepaid", "8613912345678", "2026-11-26T11:00:00+01:00", "", "rest of world", False),
        ("mobile-prepaid", "491711234567", "2026-11-26T11:00:00+01:00", "20801", "roaming calls", False),
        ("mobile-prepaid", "491711234567", "2026-11-26T11:00:00+01:00", "26201", "national peak", False),
        ("fixed-postpaid", "4930123456", "2026-11-26T11:00:00+01:00", "", "national peak", False),
    ],
)
def test_voice_rate_lookup(
    catalog: Catalog, plan: str, number: str, when: str, network: str, rate_name: str, free: bool
) -> None:
    rate = catalog.rate(catalog.plans[plan], 10, Usage(number, network), at(when))
    assert rate is not None
    assert (rate.name, rate.free) == (rate_name, free)


def test_every_customer_type_has_a_plan(catalog: Catalog) -> None:
    kinds = {p.customer_type.value for p in catalog.plans.values()}
    assert kinds == {"MOBILE_PREPAID", "MOBILE_POSTPAID", "FIXED_PREPAID", "FIXED_POSTPAID"}


def test_unknown_rating_group_and_missing_service_have_no_rate(catalog: Catalog) -> None:
    assert catalog.rate(catalog.plans["mobile-prepaid"], 99, Usage(), at("2026-11-26T11:00:00+01:00")) is None
    # fixed lines sell no SMS
    assert catalog.rate(catalog.plans["fixed-prepaid"], 20, Usage("4930"), at("2026-11-26T11:00:00+01:00")) is None


def test_future_dated_version_takes_effect_at_its_time(catalog: Catalog) -> None:
    plan = catalog.plans["mobile-prepaid"]
    before = catalog.rate(plan, 20, Usage("4917"), at("2026-12-31T23:59:59+01:00"))
    after = catalog.rate(plan, 20, Usage("4917"), at("2027-01-01T00:00:00+01:00"))
    assert before is not None and after is not None
    assert (before.price_micros, after.price_micros) == (90_000, 99_000)
    assert plan.next_change(at("2026-12-31T23:00:00+01:00"), 7200) == at("2027-01-01T00:00:00+01:00")


def test_band_change_is_the_next_tariff_change(catalog: Catalog) -> None:
    plan = catalog.plans["mobile-prepaid"]
    assert plan.next_change(at("2026-11-26T19:55:00+01:00"), 900) == at("2026-11-26T20:00:00+01:00")
    assert plan.next_change(at("2026-11-26T12:00:00+01:00"), 900) is None


def broken(sample: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(sample)
    doc["version"] = "bad version!"
    doc["services"][0]["unit"] = "MINUTES"
    doc["services"][1]["rating_groups"] = [10]
    doc["zones"][0]["prefix"] = "+33"
    doc["plans"][1]["currency"] = "euro"
    doc["plans"][1]["time_bands"]["rules"][0]["start"] = "25:00"
    doc["plans"][1]["versions"][1]["active_from"] = "2025-01-01T00:00:00Z"
    doc["plans"][2]["versions"][0]["rates"][4]["zones"] = ["atlantis"]
    doc["plans"][2]["versions"][0]["rates"][5]["increment"] = 0
    doc["plans"][3]["versions"][0]["rates"][0]["service"] = "telepathy"
    return doc


def test_a_bad_catalog_names_every_bad_field(sample: dict[str, Any]) -> None:
    with pytest.raises(CatalogInvalid) as err:
        catalog_from_doc(broken(sample))
    fields = [f for f, _ in err.value.problems]
    for expected in (
        "version",
        "services[0].unit",
        "services[1].rating_groups[0]",
        "zones[0].prefix",
        "plans[1].currency",
        "plans[1].time_bands.rules[0].start",
        "plans[1].versions[1].active_from",
        "plans[2].versions[0].rates[4].zones[0]",
        "plans[2].versions[0].rates[5].increment",
        "plans[3].versions[0].rates[0].service",
    ):
        assert any(f.startswith(expected) for f in fields), (expected, fields)


@pytest.mark.parametrize("doc", [[], "x", {}, {"version": "v"}])
def test_not_a_catalog_at_all(doc: Any) -> None:
    with pytest.raises(CatalogInvalid):
        catalog_from_doc(doc)


def test_rate_lookup_is_cached_per_context(catalog: Catalog) -> None:
    plan = catalog.plans["mobile-prepaid"]
    when = at("2026-11-26T11:00:00+01:00")
    first = catalog.rate(plan, 10, Usage("491711234567"), when)
    assert catalog.rate(plan, 10, Usage("491719999999"), when + 60) is first


def test_sample_times_are_utc_aware() -> None:
    assert at("2026-01-01T00:00:00+00:00") == int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())


@settings(max_examples=300, deadline=None)
@given(
    t=st.integers(min_value=1_767_225_600, max_value=1_830_297_600), steps=st.lists(st.integers(0, 40_000), max_size=6)
)
def test_band_memo_agrees_with_the_calendar(t: int, steps: list[int]) -> None:
    plan = catalog_from_doc(read_catalog_file("")).plans["mobile-prepaid"]
    assert plan.bands is not None
    for moment in [t, *(t + s for s in steps), t - 1]:
        band, change = plan.timeline.at(moment) if plan.timeline else ("", None)
        assert band == plan.bands.band_at(moment)
        assert change == plan.bands.next_change(moment, 8 * 86_400)


def test_the_sample_catalog_follows_the_published_schema(sample: dict[str, Any]) -> None:
    import json
    from importlib import resources

    import jsonschema

    schema = json.loads(resources.files("charging").joinpath("catalog.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(sample)
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors({"version": "x"}))
    assert errors


def test_a_service_identifier_names_the_service_when_the_rating_group_does_not(catalog: Catalog) -> None:
    plan = catalog.plans["mobile-prepaid"]
    when = at(PEAK_TIME)
    by_group = catalog.rate(plan, 20, Usage("491711234567"), when)
    by_id = catalog.rate(
        plan, 777, Usage("491711234567"), when, catalog.where(plan, 777, Usage("491711234567"), when, 2000)
    )
    assert by_group is not None and by_id is not None
    assert (by_id.name, by_id.price_micros, by_id.rating_group) == (by_group.name, by_group.price_micros, 777)
