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


def run_bench(artifacts_dir, *args: str, timeout_s: float) -> tuple[str, dict]:
    """``python -m benchmarks.run --artifacts artifacts_dir`` with ``args`` (the folder's store says
    which version is the default): its stdout and the JSON report it wrote."""
    helpers.require_binary("wrk")
    env = {**{k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
           **helpers.cli_env(artifacts_dir)}
    args = (*args, "--artifacts", str(artifacts_dir))
    out = subprocess.run([sys.executable, "-m", "benchmarks.run", *args],
                         cwd=helpers.ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    written = re.search(r"written to (\S+)", out.stdout).group(1)
    return out.stdout, json.loads((helpers.ROOT / written).read_text())


def test_short_bench_runs_every_scenario_without_errors(artifacts_dir):
    stdout, result = run_bench(artifacts_dir, "--seconds", "2", "--rounds", "1", "--inproc-seconds", "0.2",
                               timeout_s=240)
    assert result["model_version"] == helpers.default_of(artifacts_dir)
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
    assert "explain=true against a plain prediction" in stdout
    assert "Ratios (batching on):" in stdout


def test_baseline_mode_alternates_this_tree_and_a_revision(artifacts_dir):
    """HEAD served from a temporary export against this tree, in two rounds of opposite order."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=helpers.ROOT, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    stdout, result = run_bench(artifacts_dir, "--baseline", "HEAD", "--seconds", "1", "--rounds", "2",
                               timeout_s=120)
    assert result["baseline"]["commit"] == head.stdout.strip()
    assert result["order"] == [["current", "baseline"], ["baseline", "current"]]
    scenario = "1 text, 64 conns"
    assert [s[0] for s in result["scenarios"]] == [scenario]
    for side in ("current", "baseline"):
        assert len(result["http_rounds"][side]) == 2
        assert result["http"][side][scenario]["errors"] == 0, side
        assert result["http"][side][scenario]["req_per_s"] > 0, side
    ratio = result["ratios"][scenario]["req_per_s_ratio"]
    assert ratio == pytest.approx(result["http"]["current"][scenario]["req_per_s"]
                                  / result["http"]["baseline"][scenario]["req_per_s"], rel=1e-2)
    assert f"req/s {ratio:.3f}x (target >= 0.97x: " in stdout


def test_the_prediction_log_cost_compares_both_ways_and_loses_no_row(artifacts_dir):
    """`make bench`'s second part, briefly: two servers, log off and on, paired and one at a time."""
    helpers.require_binary("wrk")
    env = {**{k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}, **helpers.cli_env(artifacts_dir)}
    out = subprocess.run([sys.executable, "-m", "benchmarks.predlog_cost", "--only", "http", "--rounds", "1",
                          "--seconds", "1", "--artifacts", str(artifacts_dir)],
                         cwd=helpers.ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads((helpers.ROOT / re.search(r"written to (\S+)", out.stdout).group(1)).read_text())["http"]
    assert result["texts_dropped_by_the_on_side"] == 0
    assert result["requests_logged_by_the_on_side"] > 0
    for size in (1, 100):
        paired, alternating = result[f"{size}_text"]["paired"], result[f"{size}_text"]["alternating"]
        assert paired["cpu_ms_per_request_off"] > 0 and paired["cpu_ms_per_request_on"] > 0
        assert alternating["rps_off"] > 0 and alternating["rps_on"] > 0
        assert f"{size:>3} text(s), 64 conns: throughput kept with the log on" in out.stdout
