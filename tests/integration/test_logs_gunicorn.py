"""Logs under real Gunicorn: JSON on every line, one access line per request, no texts by default.

Log shippers parse each line as JSON, so a single plain line from Gunicorn (or a stray warning)
breaks them; inputs can be private, so they stay out of the logs unless explicitly asked for.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from tests.helpers import gunicorn

SECRET = "Confidential project zebra-7f3a: graph neural networks for fraud rings"
ACCESS_FIELDS = {"request_id", "method", "path", "status", "latency_ms", "worker_pid", "texts", "model_version",
                 "key_name"}


def run(artifacts_dir: Path, tmp_path: Path, env: dict) -> tuple[list[dict], str, str]:
    """Start Gunicorn, send one prediction, stop it; return its parsed log lines, raw log and model version."""
    log = tmp_path / "gunicorn.log"
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"), "TAGIFAI_LOG_LEVEL": "INFO",
           "TAGIFAI_LOG_TEXTS": "false", "GUNICORN_ACCESSLOG": "", **env}
    with gunicorn(artifacts_dir, workers=2, env=env, log_path=log) as server:
        r = requests.post(f"{server.url}/predict", json={"texts": [{"text": SECRET}]},
                          headers={"X-Request-ID": "log-test-1"}, timeout=10)
        assert r.status_code == 200
        assert r.headers["X-Request-ID"] == "log-test-1"
        version = r.json()["data"]["model_version"]
    raw = log.read_text()
    lines = []
    for line in raw.splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON log line: {line!r}")
    return lines, raw, version


@pytest.mark.integration
def test_every_line_is_json_and_one_access_line_without_texts(artifacts_dir, tmp_path):
    lines, raw, version = run(artifacts_dir, tmp_path, {})

    assert all({"timestamp", "level", "logger", "message", "pid"} <= set(entry) for entry in lines), raw[-3000:]
    assert any(entry["logger"] == "gunicorn.error" and "Listening at" in entry["message"] for entry in lines), raw[-3000:]
    assert any(entry["logger"] == "gunicorn.error" and "Shutting down" in entry["message"] for entry in lines), \
        raw[-3000:]

    mentions = [entry for entry in lines if "log-test-1" in json.dumps(entry)]
    assert len(mentions) == 1, f"expected exactly one line for the request, got {mentions}"
    access = mentions[0]
    assert access["logger"] == "tagifai_api.access"
    assert ACCESS_FIELDS <= set(access)
    assert access["request_id"] == "log-test-1"
    assert (access["method"], access["path"], access["status"]) == ("POST", "/predict", 200)
    assert access["texts"] == 1
    assert access["model_version"] == version
    assert isinstance(access["latency_ms"], float) and access["latency_ms"] > 0
    assert access["worker_pid"] == access["pid"] != lines[0]["pid"]  # a worker, not the master

    assert "zebra-7f3a" not in raw, "input texts must not be logged by default"


@pytest.mark.integration
def test_texts_are_logged_only_when_asked(artifacts_dir, tmp_path):
    lines, raw, _ = run(artifacts_dir, tmp_path, {"TAGIFAI_LOG_TEXTS": "true"})
    access = [entry for entry in lines if entry.get("request_id") == "log-test-1"]
    assert len(access) == 1
    assert SECRET in access[0]["body"]
