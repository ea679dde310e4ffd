"""`python -m benchmarks.learning_curve` on a small slice of the data: it replays traffic and feedback
through the app, retrains on schedule, and reports every step beside the floor and the ceiling."""

from __future__ import annotations

import pytest

from benchmarks import learning_curve


def test_the_learning_curve_replays_retrains_and_reports(by_time, tmp_path):
    data = tmp_path / "data.csv"
    by_time.iloc[:400].to_csv(data, index=False)
    args = learning_curve.arguments(["--data", str(data), "--every", "40", "--min-held-out", "5"])
    report = learning_curve.run(args)
    assert (report["first_model_projects"], report["traffic"], report["evaluation_projects"]) == (200, 120, 80)
    steps = report["steps"]
    assert steps[0]["feedback"] == 0 and steps[0]["served"] == report["floor"]
    assert [s["feedback"] for s in steps[1:3]] == [40, 80] and len(steps) in (3, 4)
    for step in steps[1:]:
        assert 0 < step["candidate"] <= 1 and step["decision"] in ("promoted", "kept")
    assert 0 < report["floor"] <= 1 and 0 < report["ceiling"] <= 1
    table = learning_curve.table(report)
    assert table.count("\n") == len(steps) + 3 and "| | floor (first model) |" in table
    pytest.importorskip("matplotlib", reason="matplotlib is in requirements-dev.txt (make test installs it)")
    learning_curve.plot(report, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
