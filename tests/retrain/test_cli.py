"""``retrain`` and ``promote --if-better`` on the command line, as the nightly CronJob runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from click.testing import CliRunner

from tagifai_api.cli import cli
from tagifai_api.store.jobs import Jobs
from tests.helpers import ROOT, cli_env


def _run(root, *args):
    env = {**cli_env(root), "TAGIFAI_RETRAIN_DATA": str(root / "small.csv")}
    return CliRunner().invoke(cli, ["--artifacts", str(root), *args], catch_exceptions=False, env=env)


def test_retrain_then_promote_if_better_as_the_cronjob_runs_them(loop, corrections, send):
    root, default, registry = loop
    nothing = _run(root, "promote", "--if-better")
    assert nothing.exit_code == 0 and json.loads(nothing.output)["decision"] == "none"
    send(registry.store, corrections)
    trained = _run(root, "retrain", "--shadow")
    assert trained.exit_code == 0, trained.output
    result = json.loads(trained.output)
    assert result["decision"] == "shadowed" and Jobs(registry.store).get(result["job"])["state"] == "succeeded"
    waiting = json.loads(_run(root, "promote", "--if-better").output)
    assert waiting["decision"] == "kept" and waiting["gate"]["failed"] == ["min_shadow_texts"]
    promoted = json.loads(_run(root, "promote", "--if-better", "--min-shadow-texts", "0").output)
    assert promoted["decision"] == "promoted" and registry.pointers() == (result["candidate"], None)
    assert [e["action"] for e in registry.store.audit(5)] == ["promoted", "kept", "shadowed", "trained", "set_default"]


def test_the_gate_can_be_set_on_the_command_line(loop, corrections, send):
    root, default, registry = loop
    send(registry.store, corrections)
    result = json.loads(_run(root, "retrain", "--margin", "0.5", "--holdout", "0.1").output)
    assert result["decision"] == "kept" and result["gate"]["failed"] == ["min_held_out", "margin"]
    assert result["lineage"]["feedback"]["held_out"] == 40


def test_promote_needs_if_better():
    out = CliRunner().invoke(cli, ["promote"])
    assert out.exit_code == 2 and "use set-default" in out.output


def test_a_second_retrain_while_one_runs_is_one_line_naming_it(loop):
    root, default, registry = loop
    running = Jobs(registry.store).start("retrain", {})
    proc = subprocess.run([sys.executable, "-m", "tagifai_api", "--artifacts", str(root), "retrain"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ, **cli_env(root)})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: a retrain is running already: job {running['id']} (queued, started ")


def test_a_retraining_that_fails_is_one_line_and_its_jobs_error(loop, tmp_path):
    root, default, registry = loop
    broken = tmp_path / "broken.csv"
    broken.write_text("id,title\n1,no tags here\n")
    failed = _run(root, "retrain", "--data", str(broken))
    assert failed.exit_code == 1 and failed.output.count("\n") == 1
    assert failed.output.startswith("Error: retraining failed (job ") and "missing columns" in failed.output
    (job,) = Jobs(registry.store).recent("retrain")
    assert job["state"] == "failed" and "missing columns ['description', 'tag']" in job["error"]
    gone = CliRunner().invoke(cli, ["--artifacts", str(root), "retrain"], env={
        **cli_env(root), "TAGIFAI_RETRAIN_DATA": str(tmp_path / "nope.csv")})
    assert gone.exit_code == 2 and "TAGIFAI_RETRAIN_DATA" in gone.output and "is not a file" in gone.output
