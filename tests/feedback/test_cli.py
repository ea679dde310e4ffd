"""``log export`` and ``feedback export``: every logged text or labelled text, filtered, as CSV or JSON Lines."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time

import pytest

from tagifai_api.store.database import LOG_COLUMNS, Store
from tests.helpers import ROOT


def _run(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tagifai_api", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={"PATH": "/usr/bin:/bin", "TAGIFAI_DATABASE_URL": url,
                                         "TAGIFAI_API_KEYS_FILE": "/nonexistent/keys.json"})


@pytest.fixture
def logged(tmp_path):
    url = f"sqlite:///{tmp_path / 'state.db'}"
    store = Store(url)
    store.upgrade()
    item = ("mlops", 0.75, False, None, 12, 2, 1, "a" * 64, "a text here")
    day = 86400
    store.log_requests([(time.time() - 3 * day, "old", "v1", None, [item]),
                        (time.time() - day / 2, "new", "v1", None, [item, item]),
                        (time.time() - day / 2, "other", "v2", None, [item])])
    store.record_feedback([{"subject": "t:x", "at": time.time(), "source": "text", "request_id": None,
                            "position": None, "model_version": None, "predicted": None, "tag": "mlops",
                            "text_hash": "b" * 32, "text": "hand tagged", "key_name": "k"}])
    store.close()
    return url, tmp_path


def test_log_export_writes_every_text_and_filters(logged):
    url, tmp = logged
    out = _run(url, "log", "export", "--output", str(tmp / "all.csv"))
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader((tmp / "all.csv").read_text().splitlines()))
    assert [(r["request_id"], r["position"]) for r in rows] == [("old", "0"), ("new", "0"), ("new", "1"),
                                                                ("other", "0")]
    assert set(rows[0]) == set(LOG_COLUMNS) and rows[0]["text"] == "a text here"
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 86400))
    out = _run(url, "log", "export", "--since", since, "--version", "v1", "--output", str(tmp / "some.jsonl"))
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in (tmp / "some.jsonl").read_text().splitlines()]
    assert [(e["request_id"], e["position"]) for e in lines] == [("new", 0), ("new", 1)]
    assert lines[0]["at"].endswith("+00:00") and lines[0]["confidence"] == 0.75


def test_feedback_export_and_bad_options_are_one_line(logged):
    url, tmp = logged
    assert _run(url, "feedback", "export", "--output", str(tmp / "fb.csv")).returncode == 0
    assert list(csv.DictReader((tmp / "fb.csv").read_text().splitlines()))[0]["text"] == "hand tagged"
    bad = _run(url, "log", "export", "--output", str(tmp / "x.txt"))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and ".csv, .jsonl or .ndjson" in bad.stderr
    bad = _run(url, "log", "export", "--since", "yesterday", "--output", str(tmp / "x.csv"))
    assert bad.returncode == 2 and "ISO 8601" in bad.stderr
