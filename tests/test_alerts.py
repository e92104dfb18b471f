"""The alert rules (ops/prometheus/alerts.yml) are valid, each has a promtool unit test that
makes it fire, and a section of the runbook that says what to do."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

OPS = Path(__file__).resolve().parent.parent / "ops" / "prometheus"
RUNBOOK = Path(__file__).resolve().parent.parent / "docs" / "operations.md"


def promtool(*args: str) -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed (make test installs the Debian package prometheus)")
    done = subprocess.run([binary, *args], cwd=OPS, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def alert_names() -> list[str]:
    return re.findall(r"(?m)^\s+- alert: (\w+)$", (OPS / "alerts.yml").read_text())


def test_the_rules_and_the_scrape_configuration_are_valid() -> None:
    assert "SUCCESS" in promtool("check", "rules", "alerts.yml")
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml")


def test_the_unit_tests_of_the_alerts_pass() -> None:
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml")


def test_every_alert_has_a_unit_test_that_makes_it_fire() -> None:
    text = (OPS / "alerts_test.yml").read_text()
    firing = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n\s+- exp_labels", text))
    assert alert_names() and set(alert_names()) <= firing, set(alert_names()) - firing


def test_every_alert_points_at_its_section_of_the_runbook() -> None:
    rules = (OPS / "alerts.yml").read_text()
    headings = {
        re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"(?m)^#+ (.+)$", RUNBOOK.read_text())
    }
    anchors = set(re.findall(r"runbook: docs/operations\.md#([\w-]+)", rules))
    assert anchors and anchors <= headings, anchors - headings
    for name in alert_names():
        assert name in RUNBOOK.read_text(), f"the runbook does not name {name}"
