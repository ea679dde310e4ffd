"""`make bench` end to end, briefly: every service answers every scenario without an error."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from benchmarks import run as bench
from tests import helpers

pytestmark = pytest.mark.integration


def test_short_bench_runs_every_scenario_without_errors(artifacts_dir):
    helpers.require_binary("wrk")
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--seconds", "2", "--rounds", "1", "--inproc-seconds", "0.2",
         "--artifacts", str(artifacts_dir)],
        cwd=helpers.ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    written = re.search(r"written to (\S+)", out.stdout).group(1)
    result = json.loads((helpers.ROOT / written).read_text())
    assert set(result["http"]) == set(bench.TARGETS)
    for name, scenarios in result["http"].items():
        for scenario, *_ in bench.HTTP_SCENARIOS:
            assert scenarios[scenario]["errors"] == 0, (name, scenario)
            assert scenarios[scenario]["req_per_s"] > 0, (name, scenario)
            assert scenarios[scenario]["cpu_us_per_req"] > 0, (name, scenario)
            assert 0 <= scenarios[scenario]["worker_balance"] <= 1, (name, scenario)  # 0 at 1 conn: one worker
        assert scenarios["1 text, 64 conns"]["worker_balance"] > 0, name  # both workers served
        assert scenarios["peak_rss_mb"] > 0
    assert set(result["ratios"]) == set(bench.ratios(result))
    for size in (1, 100):
        cost = result["explain"][f"batch_{size}"]
        assert cost["plain_us"] > 0 and cost["explain_us"] > 0 and cost["ratio"] > 0
    assert "explain=true against a plain prediction" in out.stdout
    assert "Ratios (batching on):" in out.stdout
