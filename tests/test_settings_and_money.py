"""Settings from the environment, and money parsing and display."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from charging.errors import InvalidRequest
from charging.money import exact_minor, format_micros, parse_amount, share_floor
from charging.settings import Settings


def test_settings_from_env() -> None:
    s = Settings.from_env(
        {
            "CHARGING_GRPC_ADDRESS": "0.0.0.0:6000",
            "CHARGING_REDIS_URL": "redis://:hunter2@db:6379/0",
            "CHARGING_ANSWER_TTL_S": "600",
            "CHARGING_SWEEP_INTERVAL_S": "0.5",
            "CHARGING_REDIS_DIR": "/data/redis",
            "OTHER": "ignored",
        }
    )
    assert (s.grpc_address, s.answer_ttl_s, s.sweep_interval_s, s.redis_dir) == (
        "0.0.0.0:6000",
        600,
        0.5,
        Path("/data/redis"),
    )
    assert "hunter2" not in repr(s)
    assert "redis://:***@db:6379/0" in repr(s)


@pytest.mark.parametrize(
    "url",
    ["postgresql://charging:hunter2@db:5432/charging", "postgresql://db/charging?user=charging&password=hunter2"],
)
def test_database_settings_from_env_hide_the_password(url: str) -> None:
    s = Settings.from_env(
        {
            "CHARGING_DATABASE_URL": url,
            "CHARGING_DATABASE_DIR": "/data/postgres",
            "CHARGING_DATABASE_POOL_SIZE": "4",
            "CHARGING_DATABASE_MIGRATE": "true",
            "CHARGING_USAGE_RETENTION_MONTHS": "6",
        }
    )
    assert (s.database_dir, s.database_pool_size, s.database_migrate, s.usage_retention_months) == (
        Path("/data/postgres"),
        4,
        True,
        6,
    )
    assert "hunter2" not in repr(s) and "***" in repr(s)


# Set by the supervisor for its workers, not by an operator.
INTERNAL_SETTINGS = {"CHARGING_WORKER_OF", "CHARGING_READY_FD", "CHARGING_BEHIND_DOOR"}


def test_every_setting_is_in_a_readme_table_by_its_full_name() -> None:
    """An operator greps the README for the variable a log or an error names."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    tables = "\n".join(line for line in readme.splitlines() if line.startswith("| `CHARGING_"))
    names = {"CHARGING_" + f.name.upper() for f in dataclasses.fields(Settings)} - INTERNAL_SETTINGS
    missing = sorted(n for n in names if f"`{n}`" not in tables)
    assert missing == []


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"CHARGING_ANSWER_TTL_S": "soon"}, "CHARGING_ANSWER_TTL_S"),
        ({"CHARGING_ANSWER_TTL_S": "5"}, "CHARGING_ANSWER_TTL_S"),
        ({"CHARGING_IDEMPOTENCY_TTL_S": "0"}, "CHARGING_IDEMPOTENCY_TTL_S"),
        ({"CHARGING_REDIS_APPENDFSYNC": "sometimes"}, "CHARGING_REDIS_APPENDFSYNC"),
        ({"CHARGING_GRPC_ADDRESS": "50051"}, "CHARGING_GRPC_ADDRESS"),
        ({"CHARGING_GRPC_DOOR": "/nonexistent/charging-grpc-door"}, "CHARGING_GRPC_DOOR"),
        ({"CHARGING_BEHIND_DOOR": "open"}, "CHARGING_BEHIND_DOOR"),
        ({"CHARGING_DATABASE_POOL_SIZE": "0"}, "CHARGING_DATABASE_POOL_SIZE"),
        ({"CHARGING_AUDIT_RETENTION_MONTHS": "-1"}, "CHARGING_AUDIT_RETENTION_MONTHS"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        Settings.from_env(env)
    assert err.value.field == name


@pytest.mark.parametrize(
    ("text", "micros"), [("10", 10_000_000), ("2.50", 2_500_000), ("0.000001", 1), ("-1.5", -1_500_000)]
)
def test_parse_amount(text: str, micros: int) -> None:
    assert parse_amount(text) == micros


@pytest.mark.parametrize("text", ["0.0000001", "ten", "1e"])
def test_parse_amount_refuses_what_it_cannot_hold_exactly(text: str) -> None:
    with pytest.raises(ValueError):
        parse_amount(text)


@pytest.mark.parametrize(
    ("micros", "text"),
    [(0, "0.00"), (2_500_000, "2.50"), (1, "0.000001"), (-1_230_000, "-1.23"), (10**15, "1000000000.00")],
)
def test_format_micros(micros: int, text: str) -> None:
    assert format_micros(micros) == text
    assert format_micros(micros, "EUR") == text + " EUR"


def test_exact_minor_refuses_a_fraction_of_a_cent() -> None:
    assert exact_minor(12_340_000) == 1234
    assert exact_minor(-10_000) == -1
    with pytest.raises(ValueError):
        exact_minor(12_345)


def test_share_floor_never_exceeds_the_exact_share() -> None:
    assert share_floor(999, 40, 100) == 399  # 399.6
    assert share_floor(1000, 40, 100) == 400
