"""The monitoring files agree with the service: every dashboard query names a metric it exposes or
a series the recording rules record, and the rules compute what they say.

A renamed metric, a typo in PromQL or a datasource uid out of step with the provisioning turns
a panel into "No data" silently; these checks make that a failing test instead.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests import helpers

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
RULES_YML = DEPLOY / "prometheus" / "rules.yml"
DATASOURCES_YML = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS_YML = DEPLOY / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"

#: metric names inside PromQL (label names and functions never start with the service's prefix), and
#: recorded ones (``level:tagifai_...:operations``)
METRIC = re.compile(r"\b(?:[a-z_]+:)?tagifai_[a-zA-Z0-9_:]*")
#: Grafana's interval macros, which Prometheus itself does not know
MACROS = re.compile(r"\$__(rate_interval|interval|range)\b")
#: the dashboard's own variables
VARIABLES = re.compile(r"\$(\w+)\b|\$\{(\w+)\}")

#: the names a family of each type exposes samples under
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "summary": ("_sum", "_count", "_created"), "gauge": ("",), "info": ("_info",)}


def dashboards() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def panels(dashboard: dict) -> list[dict]:
    """Every panel, rows' nested panels included."""
    found = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def expressions() -> list[str]:
    exprs = [t["expr"] for path in dashboards() for p in panels(json.loads(path.read_text()))
             for t in p.get("targets", []) if t.get("expr")]
    assert exprs, "the dashboards query nothing"
    return exprs


def as_promql(expr: str) -> str:
    """A dashboard query as Prometheus would get it: macros and variables replaced by sample values."""
    return VARIABLES.sub("v1", MACROS.sub("5m", expr))


def recorded() -> set[str]:
    """The series the recording rules record."""
    return {rule["record"] for group in yaml.safe_load(RULES_YML.read_text())["groups"]
            for rule in group["rules"] if "record" in rule}


@pytest.fixture
def exposed(client) -> set[str]:
    """Every sample name /metrics can expose, after one prediction and one 404."""
    r = client.post("/predict", json={"texts": [{"text": "Transfer learning with transformers."}]})
    assert r.status_code == 200
    assert client.get("/no-such-route").status_code == 404
    body = client.get("/metrics").get_data(as_text=True)
    names = set()
    for family in text_string_to_metric_families(body):
        names.update(sample.name for sample in family.samples)
        # a family with no samples yet (a labelled counter nobody has incremented) still counts
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


def test_every_dashboard_metric_is_exposed(exposed):
    used = {name for expr in expressions() for name in METRIC.findall(expr)}
    missing = sorted(used - exposed - recorded())
    assert not missing, f"the dashboard queries metrics the service does not expose and no rule records: {missing}"
    rules = [rule["expr"] for group in yaml.safe_load(RULES_YML.read_text())["groups"] for rule in group["rules"]]
    missing = sorted({name for expr in rules for name in METRIC.findall(expr)} - exposed - recorded())
    assert not missing, f"the recording rules read metrics the service does not expose: {missing}"


def test_feedback_series_start_at_zero(client):
    """Once a version has answered, its feedback counters exist at 0 for every pair of its classes and
    both outcomes, so rate() and increase() count a window's first correction."""
    r = client.post("/predict", json={"texts": [{"text": "Transfer learning with transformers."}]})
    prediction = r.get_json()["data"]["predictions"][0]
    version, classes = r.get_json()["data"]["model_version"], list(prediction["probabilities"])
    body = client.get("/metrics").get_data(as_text=True)
    samples = [s for family in text_string_to_metric_families(body) for s in family.samples]
    confusion = {(s.labels["predicted"], s.labels["actual"]): s.value for s in samples
                 if s.name == "tagifai_feedback_total" and s.labels["model_version"] == version}
    assert confusion == {(p, a): 0 for p in classes for a in classes}
    outcomes = {s.labels["outcome"]: s.value for s in samples
                if s.name == "tagifai_feedback_outcomes_total" and s.labels["model_version"] == version}
    assert outcomes == {"right": 0, "wrong": 0}


def test_dashboard_covers_the_service_signals():
    """Rates, errors, latency quantiles and the model's own signals all have a panel."""
    text = "\n".join(expressions())
    for needle in (
        "tagifai_http_request_duration_seconds_count",
        'status=~"5.."',
        "histogram_quantile(0.99, sum by (le) (rate(tagifai_http_request_duration_seconds_bucket",
        "tagifai_predictions_total",
        "tagifai_low_confidence_predictions_total",
        "tagifai_batch_texts_bucket",
        "tagifai_batch_queue_wait_seconds_bucket",
        "tagifai_inference_seconds_bucket",
    ):
        assert needle in text, needle


def test_dashboard_json_is_well_formed():
    datasource_uid = yaml.safe_load(DATASOURCES_YML.read_text())["datasources"][0]["uid"]
    for path in dashboards():
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] and dashboard["title"]
        ids = [p["id"] for p in panels(dashboard)]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in panels(dashboard):
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == datasource_uid, panel["title"]
            assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
            assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        for variable in variables.values():
            if variable["type"] == "query":
                assert variable["datasource"]["uid"] == datasource_uid, variable["name"]
        for panel in panels(dashboard):
            used = {a or b for t in panel.get("targets", []) for a, b in VARIABLES.findall(t.get("expr", ""))}
            used |= {a or b for a, b in VARIABLES.findall(panel["title"])}
            assert used - {"__rate_interval", "__interval", "__range"} <= set(variables), panel["title"]


def test_provisioning_points_at_compose_services():
    datasource = yaml.safe_load(DATASOURCES_YML.read_text())["datasources"][0]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    provider = yaml.safe_load(PROVIDERS_YML.read_text())["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"]


def test_dashboard_has_live_accuracy_per_version_and_a_confusion_matrix():
    (dashboard,) = [json.loads(path.read_text()) for path in dashboards()]
    by_title = {p["title"]: p for p in panels(dashboard)}
    accuracy = by_title["Live accuracy by version"]
    assert [t["expr"] for t in accuracy["targets"]] == ["model_version:tagifai_feedback_accuracy:ratio1h",
                                                        "model_version:tagifai_feedback_accuracy:ratio1d"]
    assert all("{{model_version}}" in t["legendFormat"] for t in accuracy["targets"])
    matrix = by_title["Confusion matrix of $version (dashboard range)"]
    assert matrix["type"] == "table"
    (target,) = matrix["targets"]
    assert "sum by (actual, predicted)" in target["expr"] and 'tagifai_feedback_total{model_version="$version"}' \
        in target["expr"] and target["instant"] and target["format"] == "table"
    grouping = matrix["transformations"][0]
    assert grouping["id"] == "groupingToMatrix"
    assert (grouping["options"]["rowField"], grouping["options"]["columnField"]) == ("actual", "predicted")
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "version"]
    assert variable["query"]["query"] == "label_values(tagifai_feedback_outcomes_total, model_version)"


def promtool_test_rules(promtool: str, tmp_path: Path, tests: dict) -> None:
    """Run ``promtool test rules`` on ``tests`` (its unit-test file format); fail with its output."""
    tests_file = tmp_path / "rules_test.yml"
    tests_file.write_text(yaml.safe_dump(tests))
    result = subprocess.run([promtool, "test", "rules", str(tests_file)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_config_scrapes_the_service():
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    # every replica of the compose service `tagifai`, each scraped on its own
    (sd,) = jobs["tagifai"]["dns_sd_configs"]
    assert (sd["names"], sd["type"], sd["port"]) == (["tagifai"], "A", 8000)
    assert jobs["tagifai"].get("metrics_path", "/metrics") == "/metrics"


def test_promtool_accepts_the_config_and_the_queries(tmp_path):
    """``promtool check config``, and every dashboard query parsed as PromQL (through a rules file)."""
    promtool = helpers.require_binary("promtool")  # Debian's prometheus package ships it
    result = subprocess.run([promtool, "check", "config", str(PROMETHEUS_YML)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout and "6 rules found" in result.stdout  # rules.yml, loaded

    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": as_promql(expr)} for i, expr in enumerate(expressions())
    ]}]}
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_recording_rules_give_accuracy_per_version(tmp_path):
    """``promtool test rules``: two versions' corrections over an hour; the rules give each one's
    accuracy and count, and nothing for a version with no correction."""
    promtool = helpers.require_binary("promtool")
    outcomes = "tagifai_feedback_outcomes_total{{model_version=\"{}\", outcome=\"{}\", instance=\"{}\"}}"
    tests = {"rule_files": [str(RULES_YML)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [
            # v1 on two replicas: 3 right and 1 wrong a minute on one, 3 right on the other
            {"series": outcomes.format("v1", "right", "a"), "values": "0+3x70"},
            {"series": outcomes.format("v1", "wrong", "a"), "values": "0+1x70"},
            {"series": outcomes.format("v1", "right", "b"), "values": "0+3x70"},
            {"series": outcomes.format("v1", "wrong", "b"), "values": "0+0x70"},
            # v2: all wrong; v3: loaded, never corrected
            {"series": outcomes.format("v2", "right", "a"), "values": "0+0x70"},
            {"series": outcomes.format("v2", "wrong", "a"), "values": "0+2x70"},
            {"series": outcomes.format("v3", "right", "a"), "values": "0+0x70"},
            {"series": outcomes.format("v3", "wrong", "a"), "values": "0+0x70"},
        ],
        "promql_expr_test": [
            {"expr": "model_version:tagifai_feedback_accuracy:ratio1h", "eval_time": "70m", "exp_samples": [
                {"labels": 'model_version:tagifai_feedback_accuracy:ratio1h{model_version="v1"}', "value": 6 / 7},
                {"labels": 'model_version:tagifai_feedback_accuracy:ratio1h{model_version="v2"}', "value": 0},
            ]},
            {"expr": "model_version:tagifai_feedback:increase1h", "eval_time": "70m", "exp_samples": [
                {"labels": 'model_version:tagifai_feedback:increase1h{model_version="v1"}', "value": 420},
                {"labels": 'model_version:tagifai_feedback:increase1h{model_version="v2"}', "value": 120},
                {"labels": 'model_version:tagifai_feedback:increase1h{model_version="v3"}', "value": 0},
            ]},
        ],
    }]}
    promtool_test_rules(promtool, tmp_path, tests)


def test_the_fallback_alert_fires_while_a_worker_falls_back_and_stops_after(tmp_path):
    """``promtool test rules``: the gauge at 1 for two minutes fires the alert (after its minute);
    back at 0, it stops."""
    promtool = helpers.require_binary("promtool")
    gauge = 'tagifai_model_fallback{wanted="v2", serving="v1", instance="a"}'
    tests = {"rule_files": [str(RULES_YML)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": gauge, "values": "0 0 1 1 1 1 0 0"}],
        "alert_rule_test": [
            {"eval_time": "2m", "alertname": "TagifaiModelFallback", "exp_alerts": []},
            {"eval_time": "4m", "alertname": "TagifaiModelFallback", "exp_alerts": [{
                "exp_labels": {"severity": "warning", "wanted": "v2", "serving": "v1"},
                "exp_annotations": {
                    "summary": "Workers serve v1: the default v2 cannot be loaded",
                    "description": "GET /health/ready on any worker gives the reason (data.fallback). Fix or "
                                   "restore the version's files, or switch or roll back the default; the "
                                   "fallback ends by itself then."}}]},
            {"eval_time": "7m", "alertname": "TagifaiModelFallback", "exp_alerts": []},
        ],
    }]}
    promtool_test_rules(promtool, tmp_path, tests)


def test_dashboard_has_a_drift_row():
    (dashboard,) = [json.loads(path.read_text()) for path in dashboards()]
    by_title = {p["title"]: p for p in panels(dashboard)}
    status = by_title["Drift status by version"]
    assert [t["expr"] for t in status["targets"]] == ["max by (model_version) (tagifai_drift_status)"]
    (mapping,) = status["fieldConfig"]["defaults"]["mappings"]
    assert {k: v["text"] for k, v in mapping["options"].items()} == {"-1": "unknown", "0": "ok", "1": "warn",
                                                                     "2": "drift"}
    statistics = by_title["Drift statistics by version"]
    assert [t["expr"] for t in statistics["targets"]] == ["max by (model_version, statistic) (tagifai_drift)"]


def test_the_drift_alert_fires_after_ten_minutes_of_drift_and_stops_after(tmp_path):
    """``promtool test rules``: two replicas report status 2 for a version for 15 minutes; the alert
    is pending, then fires after its 10 minutes, and ends when the status is back to 0 (ok). A warn
    (1) and an unknown (-1) version never alert."""
    promtool = helpers.require_binary("promtool")
    status = 'tagifai_drift_status{{model_version="{}", instance="{}"}}'
    tests = {"rule_files": [str(RULES_YML)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [
            {"series": status.format("v1", "a"), "values": "0 0 2x15 0 0"},
            {"series": status.format("v1", "b"), "values": "0 0 2x15 0 0"},
            {"series": status.format("v2", "a"), "values": "1x20"},
            {"series": status.format("v3", "a"), "values": "-1x20"},
        ],
        "alert_rule_test": [
            {"eval_time": "5m", "alertname": "TagifaiDrift", "exp_alerts": []},
            {"eval_time": "13m", "alertname": "TagifaiDrift", "exp_alerts": [{
                "exp_labels": {"severity": "warning", "model_version": "v1"},
                "exp_annotations": {
                    "summary": "The inputs of v1 drifted from its training texts",
                    "description": "GET /models/v1/drift lists each statistic with its value and threshold. New "
                                   "topics, another language or much shorter or longer texts: check what clients "
                                   "send, label some of it (POST /feedback) and retrain."}}]},
            {"eval_time": "19m", "alertname": "TagifaiDrift", "exp_alerts": []},
        ],
    }]}
    promtool_test_rules(promtool, tmp_path, tests)
