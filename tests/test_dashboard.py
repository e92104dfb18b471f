"""The Grafana dashboard (ops/grafana/charging.json): every query parses as PromQL (asked of a
real Prometheus, /api/v1/format_query) and names only series the server exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

import charging.server  # noqa: F401 (declares every metric of every package)
from tests.conftest import free_port
from tests.prometheus_server import OPS, running

DASHBOARD = OPS / "grafana" / "charging.json"
# Grafana's variables, as a query sent to Prometheus has them.
VARIABLES = {"$__rate_interval": "5m", "$instance": ".*"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or", "unless"}
KEYWORDS |= {"inf", "nan", "Inf", "NaN"}
SECTIONS = ("Traffic", "Sessions", "Top-ups", "Customer base", "Billing", "Background jobs", "Redis")


def dashboard_queries() -> list[str]:
    """Every PromQL query of the dashboard, Grafana's variables filled in."""
    doc = json.loads(DASHBOARD.read_text())
    out = []
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            expr = str(target["expr"])
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, f"an unknown variable in {expr}"
            out.append(expr)
    return out


def variable_metrics() -> list[str]:
    """The metrics the dashboard's variables list labels of (``label_values(metric, label)``)."""
    doc = json.loads(DASHBOARD.read_text())
    found = []
    for variable in doc["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((\w+), *(\w+)\)", variable["definition"])
            assert match, variable["definition"]
            found.append(match.group(1))
    return found


def metric_names(promql: str) -> set[str]:
    """The series names a (formatted) query reads: identifiers outside label matchers,
    ranges and grouping clauses that are not functions, keywords or numbers."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', promql)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        if match.group(2) is None and match.group(1) not in KEYWORDS:
            names.add(match.group(1))
    return names


def exported_names() -> set[str]:
    """The series names the server's registry exposes, by each family's type."""
    names = set()
    for family in REGISTRY.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "summary": ("_count", "_sum")}
        for suffix in suffixes.get(family.type, ("",)):
            names.add(family.name + suffix)
        names |= {s.name for s in family.samples}
    return names


def test_metric_names_are_found_where_a_query_reads_series() -> None:
    assert metric_names(
        'sum by (method, le) (rate(a_bucket{le="0.05",x=~"a|b"}[5m])) / on (method) group_left () b offset 1d'
    ) == {"a_bucket", "b"}
    assert metric_names("histogram_quantile(0.99, x) - time() > 1e3 and y") == {"x", "y"}


def test_every_query_parses_and_names_only_series_the_server_exports(tmp_path: Path) -> None:
    doc = json.loads(DASHBOARD.read_text())
    titles = " | ".join(p["title"] for p in doc["panels"] if p["type"] == "row")
    assert all(section in titles for section in SECTIONS), titles
    queries = dashboard_queries()
    assert len(queries) >= 30
    exported = exported_names()
    assert "charging_requests_total" in exported and "charging_request_duration_seconds_bucket" in exported
    read = set(variable_metrics())
    with running(tmp_path / "prometheus", free_port()) as prom:
        for promql in queries:
            formatted = str(prom.get("/api/v1/format_query", query=promql))
            names = metric_names(formatted)
            assert names, f"no series in {formatted}"
            assert names <= exported, (formatted, names - exported)
            read |= names
    assert read <= exported, read - exported
    # What each section is about is there.
    for name in (
        "charging_request_duration_seconds_bucket",
        "charging_reserved_micros",
        "charging_topup_micros_total",
        "crm_active_lines",
        "crm_disconnections_total",
        "billing_invoices_issued_total",
        "billing_dunning_actions_total",
        "charging_job_seconds_since_success",
        "charging_redis_errors_total",
    ):
        assert name in read, name
