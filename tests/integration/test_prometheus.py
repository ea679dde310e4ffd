"""A real Prometheus scrapes real Gunicorn: the exposition parses, the counts arrive intact, the
recording rules give each version's live accuracy from the corrections users send, and the drift
alert fires on shifted traffic only."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tagifai_api.auth.keys import KeyStore
from tagifai_api.store.database import Store
from tests.helpers import (
    drift_traffic,
    free_port,
    gunicorn,
    held_out,
    one_session_per_worker,
    require_binary,
    state_url,
    stop,
    wait_http,
)

TEXTS = ["Transfer learning with transformers for text classification.", "GANs that generate faces.",
         "Serving models with Kubernetes and monitoring drift."]
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES_YML = DEPLOY / "prometheus" / "rules.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "tagifai-api.json"


def query_all(base: str, promql: str) -> list[tuple[dict, float]]:
    """Every sample of an instant query: its labels and value."""
    r = requests.get(f"{base}/api/v1/query", params={"query": promql}, timeout=5)
    r.raise_for_status()
    return [(s["metric"], float(s["value"][1])) for s in r.json()["data"]["result"]]


def query(base: str, promql: str) -> float | None:
    """The single value of an instant query, or None while there is no sample yet."""
    result = query_all(base, promql)
    return result[0][1] if result else None


def eventually(read, expected, timeout_s: float = 30.0, log: Path | None = None):
    """Poll ``read()`` until it returns ``expected`` (a value, or a predicate on it); the last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if (expected(value) if callable(expected) else value == expected) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert expected(value) if callable(expected) else value == expected, (value, log and log.read_text()[-2000:])
    return value


@contextmanager
def prometheus(tmp_path: Path, target_port: int, rule_files: tuple[Path, ...] = ()) -> Iterator[str]:
    """A Prometheus scraping 127.0.0.1:``target_port`` and evaluating ``rule_files`` every second; its URL."""
    binary = require_binary("prometheus")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    rules = "rule_files:\n" + "".join(f"  - '{path}'\n" for path in rule_files) if rule_files else ""
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n" + rules
        + "scrape_configs:\n  - job_name: tagifai\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
    )
    log = open(tmp_path / "prometheus.log", "wb")
    prom = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/-/ready", timeout_s=20, proc=prom)
        yield base
    finally:
        stop(prom)
        log.close()


@pytest.mark.integration
def test_prometheus_scrapes_the_predictions(artifacts_dir, tmp_path):
    with gunicorn(artifacts_dir, workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}) as server:
        n = 10
        for _ in range(n):
            r = requests.post(f"{server.url}/predict", json={"texts": [{"text": t} for t in TEXTS]},
                              headers={"Connection": "close"}, timeout=10)
            assert r.status_code == 200

        with prometheus(tmp_path, server.port) as base:
            eventually(lambda: query(base, "sum(tagifai_predictions_total)"), n * len(TEXTS),
                       log=tmp_path / "prometheus.log")
            assert query(base, 'up{job="tagifai"}') == 1
            count = query(base, 'sum(tagifai_http_request_duration_seconds_count{endpoint="predict.predict"})')
            assert count == n


def correct(url: str, key: str, item: dict) -> dict:
    """Send one correction, again while its prediction is not in the log yet (written every 0.5 s)."""
    deadline = time.monotonic() + 10
    while True:
        r = requests.post(f"{url}/feedback", json={"feedback": [item]}, headers={"X-API-Key": key}, timeout=10)
        assert r.status_code == 200, r.text
        report = r.json()["data"]["items"][0]
        if report["status"] != "unknown_request" or time.monotonic() > deadline:
            return report
        time.sleep(0.2)


@pytest.mark.integration
def test_recording_rule_gives_live_accuracy_per_version(artifacts_dir, tmp_path):
    """Two Gunicorn workers answer and take corrections (2 right, 1 wrong, and one of a text that names
    no version); Prometheus, scraping them and evaluating deploy/prometheus/rules.yml, gives the version
    an accuracy of 2/3, and the dashboard's confusion matrix matches GET /models/<version>/quality."""
    root = tmp_path / "artifacts"
    shutil.copytree(artifacts_dir, root)  # the corrections stay in this test's store
    store = Store(state_url(root))
    key = KeyStore(store).create("rater", "predict")
    store.close()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    with gunicorn(root, workers=2, env=env) as server:
        answers = []
        for text in TEXTS:
            r = requests.post(f"{server.url}/predict", json={"texts": [{"text": text}]},
                              headers={"Connection": "close"}, timeout=10)
            assert r.status_code == 200
            answers.append((r.headers["X-Request-ID"], r.json()["data"]["predictions"][0]))
        version = r.json()["data"]["model_version"]
        classes = list(answers[0][1]["probabilities"])
        of_version = f'model_version="{version}"'

        with prometheus(tmp_path, server.port, (RULES_YML,)) as base:
            # every series of the version is scraped at 0 before the first correction, so it counts
            eventually(lambda: query(base, f"count(tagifai_feedback_total{{{of_version}}} == 0)"), len(classes) ** 2)
            eventually(lambda: query(base, f"count(tagifai_feedback_outcomes_total{{{of_version}}} == 0)"), 2)
            assert query(base, f"model_version:tagifai_feedback_accuracy:ratio1h{{{of_version}}}") is None

            wrong = next(c for c in classes if c != answers[2][1]["predicted_tag"])
            items = [{"request_id": answers[0][0], "tag": answers[0][1]["predicted_tag"]},
                     {"request_id": answers[1][0], "tag": answers[1][1]["predicted_tag"]},
                     {"request_id": answers[2][0], "tag": wrong},
                     {"text": "A hand-tagged text.", "tag": wrong}]
            assert [correct(server.url, key, item)["status"] for item in items] == ["created"] * 4

            log = tmp_path / "prometheus.log"
            eventually(lambda: query(base, f"sum(tagifai_feedback_outcomes_total{{{of_version}}})"), 3, log=log)
            for window in ("1h", "1d"):
                ratio = f"model_version:tagifai_feedback_accuracy:ratio{window}{{{of_version}}}"
                accuracy = eventually(lambda q=ratio: query(base, q), lambda value: value is not None, log=log)
                assert accuracy == pytest.approx(2 / 3, abs=1e-9), window
                # increase() extrapolates to the window's end by up to a scrape interval: less as samples gather
                count = f"model_version:tagifai_feedback:increase{window}{{{of_version}}}"
                eventually(lambda q=count: round(query(base, q)), 3, log=log)

            quality = requests.get(f"{server.url}/models/{version}/quality", timeout=5).json()["data"]["all"]
            assert (quality["count"], quality["correct"]) == (3, 2)
            # the dashboard's confusion matrix, as Grafana asks for it, is the service's own
            (table,) = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] == "table"
                        for t in p["targets"]]
            promql = table.replace("$version", version).replace("$__range", "1h")
            expected = {(actual, predicted): float(n) for actual, row in quality["confusion"].items()
                        for predicted, n in row.items()}
            eventually(lambda: {(m["actual"], m["predicted"]): v for m, v in query_all(base, promql)}, expected,
                       log=log)


def _rule_state(base: str, name: str) -> str | None:
    """The state of alerting rule ``name`` as Prometheus evaluates it: inactive, pending or firing."""
    groups = requests.get(f"{base}/api/v1/rules", params={"type": "alert"}, timeout=5).json()["data"]["groups"]
    return next((r["state"] for g in groups for r in g["rules"] if r["name"] == name), None)


def _send(url: str, texts: list[str]) -> str:
    for start in range(0, len(texts), 100):
        r = requests.post(f"{url}/predict", json={"texts": [{"text": t} for t in texts[start:start + 100]]},
                          headers={"Connection": "close"}, timeout=30)
        assert r.status_code == 200, r.text
    return r.json()["data"]["model_version"]


@pytest.mark.integration
def test_the_drift_alert_fires_on_shifted_traffic_and_not_on_in_distribution_traffic(artifacts_dir, train_args,
                                                                                     tmp_path):
    """Two Gunicorn workers, a Prometheus evaluating deploy/prometheus/rules.yml (the drift alert's
    10 minutes made 3 seconds in its copy): 1,000 held-out projects leave the alert inactive; 1,000
    German texts make it pending, then firing. Both workers give the same gauges, those of the route."""
    root = tmp_path / "artifacts"
    shutil.copytree(artifacts_dir, root)  # the logged predictions stay this test's
    rules = tmp_path / "rules.yml"
    text = RULES_YML.read_text()
    assert text.count("for: 10m") == 1
    rules.write_text(text.replace("for: 10m", "for: 3s"))
    projects = held_out(train_args)
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"), "TAGIFAI_DRIFT_CACHE_S": "0.5"}
    with gunicorn(root, workers=2, env=env) as server, prometheus(tmp_path, server.port, (rules,)) as base:
        log = tmp_path / "prometheus.log"
        version = _send(server.url, drift_traffic("in_distribution", 1000, 0, projects))
        status = f'max(tagifai_drift_status{{model_version="{version}"}})'
        eventually(lambda: query(base, f'max(tagifai_drift_window_texts{{model_version="{version}"}})'), 1000, log=log)
        assert query(base, status) == 0
        started = time.monotonic()
        while time.monotonic() - started < 6:  # twice the alert's 3 s, evaluated every second
            assert _rule_state(base, "TagifaiDrift") == "inactive"
            assert query(base, status) == 0
            time.sleep(0.5)

        _send(server.url, drift_traffic("german", 1000, 0, projects))
        eventually(lambda: query(base, status), 2, log=log)
        seen = {eventually(lambda: _rule_state(base, "TagifaiDrift"), lambda s: s in ("pending", "firing"), log=log)}
        seen.add(eventually(lambda: _rule_state(base, "TagifaiDrift"), "firing", timeout_s=30, log=log))
        assert seen == {"pending", "firing"}  # pending for its 3 s first, polled every 0.25 s
        alerts = query_all(base, 'ALERTS{alertname="TagifaiDrift", alertstate="firing"}')
        assert [labels["model_version"] for labels, _ in alerts] == [version]

        # every worker gives the same gauges, the route's values; no worker counts them itself
        report = requests.get(f"{server.url}/models/{version}/drift", timeout=10).json()["data"]
        assert report["status"] == "drift" and report["statistics"]["oov_increase"]["status"] == "drift"
        expected = {name: s["value"] for name, s in report["statistics"].items()}
        for session in one_session_per_worker(server.url):
            body = session.get(f"{server.url}/metrics", timeout=10).text
            gauges = {s.labels["statistic"]: s.value for f in text_string_to_metric_families(body) for s in f.samples
                      if s.name == "tagifai_drift" and s.labels["model_version"] == version}
            assert gauges == pytest.approx(expected, rel=1e-9)
