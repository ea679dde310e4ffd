"""`make loadtest` end to end, briefly: it starts Gunicorn itself, runs Locust headless and reports."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest

from tests import helpers

pytestmark = pytest.mark.integration


def test_short_loadtest_has_no_failures(artifacts_dir, tmp_path):
    reports = tmp_path / "locust"
    env = {**{k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
           **helpers.cli_env(artifacts_dir)}  # the folder's store, for the Gunicorn it starts
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.loadtest", "--run-time", "5", "--users", "5", "--spawn-rate", "5",
         "--workers", "1", "--artifacts", str(artifacts_dir), "--reports", str(reports)],
        cwd=helpers.ROOT, env=env, capture_output=True, text=True, timeout=90,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    with (reports / "loadtest_stats.csv").open(newline="") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    assert int(rows["Aggregated"]["Request Count"]) > 0
    assert int(rows["Aggregated"]["Failure Count"]) == 0
    # single texts most often, batches too (the read-only tasks are too rare to count on in 5 s)
    assert int(rows["/predict [1 text]"]["Request Count"]) > int(rows["/predict [10-100 texts]"]["Request Count"]) > 0
    assert (reports / "loadtest.html").stat().st_size > 10_000


def test_loadtest_fails_when_requests_fail(tmp_path):
    """Nothing listens on the port, so every request fails and the run must say so."""
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.loadtest", "--host", f"http://127.0.0.1:{helpers.free_port()}",
         "--run-time", "2", "--users", "2", "--spawn-rate", "2", "--reports", str(tmp_path)],
        cwd=helpers.ROOT, capture_output=True, text=True, timeout=60,
    )
    assert run.returncode != 0
    with (tmp_path / "loadtest_stats.csv").open(newline="") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    assert int(rows["Aggregated"]["Failure Count"]) > 0
