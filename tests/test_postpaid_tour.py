"""The README's postpaid tour, run as it stands: the shell block after the
``<!-- postpaid-tour -->`` marker, with bash, against ``charging serve`` as an operator
starts it (its own Redis, the network simulator, the provisioning worker and the billing
jobs running every second as in production, on the real clock: the tour's days are
relative to today)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.server_process import serve, stop, wait_serving

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- postpaid-tour -->"


def tour_block() -> str:
    """The shell block that follows the marker in the README."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    after = text[text.index(MARKER) + len(MARKER) :]
    found = re.match(r"\s*```sh\n(.*?)\n```", after, re.DOTALL)
    assert found, "the README's postpaid tour is not a sh block right after its marker"
    return found.group(1)


def test_the_readme_postpaid_tour_runs_as_written(tmp_path: Path, app_database_url: str) -> None:
    work = tmp_path / "checkout"
    work.mkdir()
    # The tour runs from a checkout: its client and its sample files, relative paths.
    (work / ".venv").symlink_to(ROOT / ".venv")
    (work / "samples").symlink_to(ROOT / "samples")
    proc, port = serve(tmp_path / "redis", app_database_url, CHARGING_BILLING_INTERVAL_S="1")
    try:
        wait_serving(proc, port)
        run = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", tour_block()],
            cwd=work,
            env={**os.environ, "CHARGING_TARGET": f"127.0.0.1:{port}"},
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        log = stop(proc)
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}\nserver:\n{log[-3000:]}"
    out = run.stdout
    assert "order tour-anna-1: IN_PROGRESS  customer 1" in out
    assert "order tour-anna-1: COMPLETED" in out
    assert re.search(r"bill run as of \S+: 0 accounts due", out)
    assert re.search(r"bill run as of \S+: 1 account due, 1 invoiced", out) and "  issued INV-00000001" in out
    assert (work / "INV-00000001.pdf").read_bytes().startswith(b"%PDF")
    assert re.search(r"C1  ACTIVE  overdue \S+  reminder: EMAIL for INV-00000001", out)
    assert re.search(r"C1  BARRED_OUTGOING  overdue \S+  barring: SMS for INV-00000001; state BARRED_OUTGOING", out)
    assert "line 491701234567: barred_outgoing" in out
    assert "refused (4010)" in out and "error: result code 4010" in run.stderr
    assert re.search(r"C1  BARRED_OUTGOING  overdue \S+ \(as of \S+\)  nothing new", out)
    assert out.count("line 491701234567: active") == 2
    assert "dunning-C1-" in out.split("order tour-anna-1: COMPLETED")[-1]
